"""Ranking and every other metric on logits whose float32 softmax probabilities underflow to 0: an epoch's
metrics rank float64 log-softmax scores, so classes far below the best do not tie."""

import warnings

import numpy as np
import pytest
import torch

import trainer.evaluation.metrics as metrics_module
from metric_references import hand_average_precision, hand_binary_auc, np_log_softmax, reference, softmax
from trainer.evaluation.metrics import METRICS, MetricWarning, epoch_metrics, labels_and_probabilities, labels_and_scores


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(metrics_module, "_already_warned", set())


def test_labels_and_scores_are_float64_log_probabilities():
    logits = torch.tensor([[0.0, -110.0, -120.0], [3.0, 1.0, 2.0]], requires_grad=True)
    y, scores = labels_and_scores(logits, torch.tensor([1, 0]))
    np.testing.assert_array_equal(y, [1, 0])
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, np_log_softmax(logits.detach().numpy()), rtol=1e-12)
    # what float32 probabilities lose: classes 1 and 2 both underflow to exactly 0
    assert torch.softmax(logits.detach(), dim=1)[0, 1] == torch.softmax(logits.detach(), dim=1)[0, 2] == 0
    assert scores[0, 1] > scores[0, 2]
    _, prob = labels_and_probabilities(logits, torch.tensor([1, 0]))  # the reports' argmax is the metrics'
    np.testing.assert_array_equal(prob.argmax(axis=1), scores.argmax(axis=1))


def test_a_true_class_whose_probability_underflows_ranks_second():
    logits = torch.tensor([[0.0, -110.0, -120.0]])
    result = epoch_metrics(["mrr", "ndcg", "top3"], logits, torch.tensor([1]), torch.nn.CrossEntropyLoss())
    assert result["val/mrr"] == pytest.approx(0.5)  # not 1/3: class 2 does not tie with it
    assert result["val/ndcg"] == pytest.approx(1 / np.log2(3))
    assert result["val/top3"] == 1.0


def underflowing_case(n=80, c=8, seed=0):
    """Logits spread over hundreds, so that most float32 probabilities are exactly 0; the true class
    is often not the best, and often far below it."""
    rng = np.random.default_rng(seed)
    logits = -rng.uniform(0, 400, size=(n, c))
    logits[np.arange(n), rng.integers(0, c, size=n)] = 0.0
    y = rng.integers(0, c, size=n)
    logits[np.arange(n), y] = np.maximum(logits[np.arange(n), y], -rng.uniform(100, 200, size=n))
    return y, logits


RANKED = ["top3", "top5", "mrr", "ndcg", "map", "roc_auc"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_is_right_when_probabilities_underflow(seed):
    y, logits = underflowing_case(seed=seed)
    names = METRICS.names()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        result = epoch_metrics(names, torch.tensor(logits, dtype=torch.float32), torch.tensor(y), torch.nn.CrossEntropyLoss())
    exact = np_log_softmax(logits.astype(np.float32))
    float32_prob = softmax(logits.astype(np.float32)).astype(np.float32)
    assert np.mean(float32_prob == 0) > 0.5  # the case is what it says
    for name in names:
        assert result[f"val/{name}"] == pytest.approx(reference(name, y, exact), rel=1e-9), name
    for name in RANKED:  # the probabilities' false ties would have given other numbers
        assert reference(name, y, float32_prob) != pytest.approx(result[f"val/{name}"], rel=1e-3), name


def test_roc_auc_ranks_images_by_a_class_score_below_underflow():
    # class 1's positive image scores -110, its negatives -120 and -130: AUC 1, where tied zeros give 0.5
    logits = torch.tensor([[0.0, -110.0, -5.0], [0.0, -120.0, -5.0], [-5.0, -130.0, 0.0], [0.0, -140.0, -1.0]])
    y = torch.tensor([1, 0, 2, 0])
    result = epoch_metrics(["roc_auc", "map"], logits, y, torch.nn.CrossEntropyLoss())
    scores = np_log_softmax(logits.numpy())
    per_class = [hand_binary_auc(y.numpy() == c, scores[:, c]) for c in range(3)]
    assert per_class[1] == 1.0
    assert result["val/roc_auc"] == pytest.approx(np.mean(per_class))
    # map likewise: class 1's image first in its column (AP 1), where four tied zeros would give 1/4
    precisions = [hand_average_precision(y.numpy() == c, scores[:, c]) for c in range(3)]
    assert precisions[1] == 1.0
    assert result["val/map"] == pytest.approx(np.mean(precisions))
