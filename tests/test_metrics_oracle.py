"""scikit-learn as the oracle: every classification metric equals scikit-learn's number (tests/sklearn_metrics.py)
to 1e-9, on random and adversarial inputs: ties within images and across them, constant predictions,
absent classes, one class, two classes, a thousand classes; and whether the counts are worked out in
one block or in many."""

import warnings

import numpy as np
import pytest
import torch

import trainer.evaluation.epoch_predictions as epoch_predictions
import trainer.evaluation.metrics as metrics_module
from sklearn_metrics import OLD_METRICS, ORACLE, old_log_softmax
from trainer.evaluation.metrics import METRICS, compute_metrics, epoch_metrics, labels_and_scores

NAMES = METRICS.names()


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    """The classes left out are tested elsewhere (test_metrics.py); here only the numbers."""
    monkeypatch.setattr(metrics_module, "_already_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def labels(rng, n, c, classes=None, p=None):
    return rng.choice(np.arange(c) if classes is None else np.asarray(classes), size=n, p=p)


def correlated(rng, y, c, scale=1.0):
    """Scores (float64) mildly correlated with the labels."""
    scores = rng.normal(size=(len(y), c)) * scale
    scores[np.arange(len(y)), y] += scale
    return scores


def make_case(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "random":
        y = labels(rng, 200, 7)
        return y, correlated(rng, y, 7)
    if name == "float32_probabilities":
        y = labels(rng, 300, 6)
        logits = correlated(rng, y, 6, scale=3.0)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return y, (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    if name == "ties_rounded":  # ties within images and across them
        y = labels(rng, 150, 8)
        return y, np.round(correlated(rng, y, 8), 1)
    if name == "ties_three_values":
        y = labels(rng, 120, 6)
        return y, rng.integers(0, 3, size=(120, 6)).astype(np.float64)
    if name == "constant":
        return labels(rng, 40, 5), np.full((40, 5), 0.2)
    if name == "duplicated_images":  # every image three times: ties across images in every column
        y = labels(rng, 20, 6)
        return np.tile(y, 3), np.tile(correlated(rng, y, 6), (3, 1))
    if name == "absent_classes":
        y = labels(rng, 150, 6, classes=[0, 2, 3], p=[0.6, 0.3, 0.1])
        return y, correlated(rng, y, 6)
    if name == "never_predicted":
        y = labels(rng, 100, 5)
        scores = correlated(rng, y, 5)
        scores[:, 4] -= 20
        return y, scores
    if name == "imbalanced":
        y = labels(rng, 300, 4, p=[0.85, 0.1, 0.04, 0.01])
        return y, correlated(rng, y, 4)
    if name == "one_class":
        return np.zeros(30, dtype=int), rng.normal(size=(30, 4))
    if name == "one_image":
        return np.array([2]), np.array([[0.1, 0.5, 0.3]])
    if name == "two_classes":
        y = labels(rng, 80, 2)
        return y, correlated(rng, y, 2)
    if name == "two_classes_tied":
        y = labels(rng, 80, 2)
        return y, np.round(correlated(rng, y, 2), 0)
    if name == "thousand_classes":  # most classes absent from 80 images
        y = labels(rng, 80, 1000)
        return y, correlated(rng, y, 1000, scale=2.0)
    if name == "thousand_classes_tied":  # scores 0, 1, 2: top-k decided among tied classes
        y = labels(rng, 60, 1000, classes=range(0, 1000, 7))
        scores = rng.integers(0, 3, size=(60, 1000)).astype(np.float64)
        scores[np.arange(0, 60, 2), y[::2]] = 2.0
        return y, scores
    raise AssertionError(name)


CASES = ["random", "float32_probabilities", "ties_rounded", "ties_three_values", "constant", "duplicated_images",
         "absent_classes", "never_predicted", "imbalanced", "one_class", "one_image", "two_classes",
         "two_classes_tied", "thousand_classes", "thousand_classes_tied"]


def oracle(name, y, scores):
    return ORACLE[name](y, scores)


def test_every_metric_has_an_oracle():
    assert sorted(ORACLE) == sorted(OLD_METRICS) == NAMES


@pytest.mark.parametrize("case", CASES)
def test_every_metric_equals_scikit_learn(case):
    y, scores = make_case(case)
    got = {name: METRICS.get(name)(y, scores) for name in NAMES}
    expected = {name: oracle(name, y, scores) for name in NAMES}
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True)
    # all at once, sharing the counts, from tensors: the same numbers
    shared = compute_metrics(NAMES, torch.from_numpy(y), torch.from_numpy(scores), prefix="")
    assert shared == pytest.approx(got, rel=1e-12, abs=0, nan_ok=True)


def test_the_cases_are_adversarial():
    # what the cases claim to hold, or the test above would pass on easy inputs
    y, scores = make_case("ties_rounded")
    true = scores[np.arange(len(y)), y]
    assert np.mean((scores == true[:, None]).sum(axis=1) > 1) > 0.1  # the true class often ties in its row
    y, scores = make_case("thousand_classes_tied")
    true = scores[np.arange(len(y)), y]
    ties_decide = [(s > t).sum() < 5 < (s >= t).sum() for s, t in zip(scores, true)]
    assert sum(ties_decide) >= 30  # whether the true class is in the top 5 depends on the rule for ties
    assert len(np.unique(make_case("thousand_classes")[0])) < 100


@pytest.mark.parametrize("case", ["random", "ties_rounded", "duplicated_images", "absent_classes",
                                  "thousand_classes", "thousand_classes_tied"])
def test_small_blocks_give_the_same_numbers(case, monkeypatch):
    # a few rows and columns at a time, as at ImageNet scale: the blocks' seams change nothing
    y, scores = make_case(case)
    whole = compute_metrics(NAMES, y, scores)
    monkeypatch.setattr(epoch_predictions, "ROW_CHUNK", 3 * scores.shape[1])
    monkeypatch.setattr(epoch_predictions, "CHUNK", 2 * len(y))
    monkeypatch.setattr(epoch_predictions, "TILE_ROWS", 7)
    assert compute_metrics(NAMES, y, scores) == pytest.approx(whole, rel=1e-12, abs=0, nan_ok=True)
    logits = torch.from_numpy(scores).float()
    assert epoch_metrics(NAMES, logits, torch.from_numpy(y), torch.nn.CrossEntropyLoss()) == pytest.approx(
        epoch_metrics(NAMES, logits, torch.from_numpy(y), torch.nn.CrossEntropyLoss()), rel=1e-12)


@pytest.mark.parametrize("case", ["random", "ties_rounded", "thousand_classes", "thousand_classes_tied", "two_classes"])
def test_an_epoch_ranks_float64_log_softmax(case):
    # epoch_metrics from float32 logits: scikit-learn on the old path's float64 log-softmax of the same logits
    y, scores = make_case(case)
    logits = torch.from_numpy(scores).float()
    result = epoch_metrics(NAMES, logits, torch.from_numpy(y), torch.nn.CrossEntropyLoss(), prefix="")
    exact = old_log_softmax(logits)
    expected = {name: oracle(name, y, exact) for name in NAMES}
    assert {name: result[name] for name in NAMES} == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True)
    # and the scores labels_and_scores hands out are the ones the metrics ranked
    _, scores64 = labels_and_scores(logits, torch.from_numpy(y))
    np.testing.assert_allclose(scores64, exact, rtol=1e-12)
    assert compute_metrics(NAMES, y, scores64, prefix="") == pytest.approx(
        {name: result[name] for name in NAMES}, rel=1e-12, abs=0, nan_ok=True)


def test_numbers_other_than_map_are_those_of_the_old_implementation():
    # the vectorised metrics changed no number but map's (a new definition): the old scikit-learn path agrees
    y, scores = make_case("ties_rounded")
    for name in NAMES:
        if name != "map":
            assert METRICS.get(name)(y, scores) == pytest.approx(OLD_METRICS[name](y, scores), rel=1e-9), name
    assert OLD_METRICS["map"](y, scores) == pytest.approx(ORACLE["mrr"](y, scores), rel=1e-12)  # what it was


def test_top_k_breaks_ties_as_scikit_learn_does():
    # among tied classes the higher index ranks first (a stable ascending sort, reversed)
    scores = np.array([[0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]] * 2)
    y = np.array([1, 4])  # four classes tie for first place: class 4 counts as first, class 1 as fourth
    assert METRICS.get("top3")(y, scores) == 0.5 == ORACLE["top3"](y, scores)
    assert METRICS.get("top5")(y, scores) == 1.0 == ORACLE["top5"](y, scores)


def test_nan_scores_make_rankings_nan_not_an_error():
    y = np.array([0, 1, 2, 1])
    scores = np.array([[0.5, 0.2, 0.3], [0.1, 0.8, 0.1], [np.nan, 0.2, 0.3], [0.3, 0.3, 0.4]])
    result = compute_metrics(NAMES, y, scores, prefix="")
    for name in ["roc_auc", "map", "mrr", "ndcg"]:
        assert np.isnan(result[name]), name
    assert result["accuracy"] == pytest.approx(OLD_METRICS["accuracy"](y, scores))
    logits = torch.tensor([[0.0, 1.0, float("nan")], [2.0, 0.0, 1.0]])
    result = epoch_metrics(["accuracy", "roc_auc", "map"], logits, torch.tensor([0, 1]), lambda a, b: torch.tensor(0.0))
    assert np.isnan(result["val/roc_auc"]) and np.isnan(result["val/map"])


def test_one_class_warns_and_roc_auc_is_nan():
    y, scores = make_case("one_class")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compute_metrics(["roc_auc", "map"], y, scores, prefix="")
    assert np.isnan(result["roc_auc"]) and result["map"] == 1.0
    assert sorted(str(w.message).split(":")[0] for w in caught) == ["map", "roc_auc"]
