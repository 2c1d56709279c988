"""Every registered metric against hand-written numpy definitions (metric_references.py); the warnings about
classes left out; the keys and values of a whole epoch. Ranking metrics: test_ranking_metrics.py; regression:
test_regression_metrics.py; scikit-learn itself as the oracle: test_metrics_oracle.py."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from metric_references import (
    CASES,
    REFERENCES,
    hand_balanced_accuracy,
    hand_binary_auc,
    hand_macro,
    hand_macro_f1,
    hand_map,
    hand_mrr,
    hand_ndcg,
    hand_roc_auc,
    hand_top_k,
    hand_weighted,
    one_hot,
    random_case,
    reference,
    softmax,
)
from trainer.evaluation.metrics import METRICS, MINIMIZED, REGRESSION_METRICS, MetricWarning, compute_metrics, default_mode, epoch_metrics, labels_and_probabilities
import trainer.evaluation.metrics as metrics_module

@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees the MetricWarnings its own calls raise (the module shows each message once per process)."""
    monkeypatch.setattr(metrics_module, "_already_warned", set())


def test_every_metric_has_a_reference():
    assert sorted(REFERENCES) == METRICS.names()


def test_references_agree_with_scikit_learn():
    # the hand-written references themselves, checked once against scikit-learn on a case with an absent class
    y, prob = random_case(200, 6, 7, classes=[0, 1, 2, 4])
    pred = prob.argmax(axis=1)
    for which, score in (("f1", skm.f1_score), ("precision", skm.precision_score), ("recall", skm.recall_score)):
        assert hand_macro(y, pred, which) == pytest.approx(score(y, pred, average="macro", zero_division=0))
        assert hand_weighted(y, pred, which) == pytest.approx(score(y, pred, average="weighted", zero_division=0))
    onehot = label_binarize(y, classes=np.arange(6))
    present = np.unique(y)
    assert hand_roc_auc(y, prob) == pytest.approx(skm.roc_auc_score(onehot[:, present], prob[:, present], average="macro"))
    assert hand_mrr(y, prob) == pytest.approx(skm.label_ranking_average_precision_score(one_hot(y, 6), prob))
    assert hand_ndcg(y, prob) == pytest.approx(skm.ndcg_score(one_hot(y, 6), prob))
    assert hand_map(y, prob) == pytest.approx(skm.average_precision_score(onehot[:, present], prob[:, present]))
    # ties count one half: pairs (0.9, 0.9) tie, (0.9, 0.1), (0.2, 0.1) are right, (0.2, 0.9) is wrong
    assert hand_binary_auc(np.array([True, False, True, False]), np.array([0.9, 0.9, 0.2, 0.1])) == pytest.approx(0.625)


def expected_left_out(name, y, prob):
    """The classes a metric must leave out and name in a MetricWarning."""
    classes = np.arange(prob.shape[1])
    if name in ("roc_auc", "map"):
        return np.setdiff1d(classes, y).tolist()
    if name in ("f1", "precision", "recall"):
        return np.setdiff1d(classes, np.union1d(y, prob.argmax(axis=1))).tolist()
    return []


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", METRICS.names())
def test_metric_matches_reference(name, case):
    y, prob = random_case(**CASES[case])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = METRICS.get(name)(y, prob)
    expected = reference(name, y, prob)
    assert float(value) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    messages = [str(w.message) for w in caught if issubclass(w.category, MetricWarning)]
    left_out = expected_left_out(name, y, prob)
    if left_out:
        assert len(messages) == 1 and f"[{', '.join(map(str, left_out))}]" in messages[0], messages
    else:
        assert messages == []


def test_cases_exercise_the_warnings():
    # the parametrized test above would pass vacuously if no case left a class out
    assert expected_left_out("roc_auc", *random_case(**CASES["absent_class"])) == [2, 4]
    assert expected_left_out("map", *random_case(**CASES["absent_class"])) == [2, 4]
    assert expected_left_out("f1", *random_case(**CASES["class_in_neither"])) == [4]


def test_imbalanced_case_separates_metrics():
    # A predictor that always says the majority class: accuracy high, balanced accuracy 1/C.
    y = np.array([0] * 90 + [1] * 6 + [2] * 4)
    prob = np.tile(np.array([[0.7, 0.2, 0.1]], dtype=np.float32), (100, 1))
    assert METRICS.get("accuracy")(y, prob) == pytest.approx(0.9)
    assert METRICS.get("balanced_accuracy")(y, prob) == pytest.approx(1 / 3)
    # F1: class 0 has precision 0.9, recall 1 -> 2*0.9/1.9; classes 1, 2 score 0.
    assert METRICS.get("f1")(y, prob) == pytest.approx((2 * 0.9 / 1.9) / 3)
    assert METRICS.get("f1_weighted")(y, prob) == pytest.approx(0.9 * 2 * 0.9 / 1.9)
    assert METRICS.get("recall")(y, prob) == pytest.approx(1 / 3)
    assert METRICS.get("precision")(y, prob) == pytest.approx(0.9 / 3)


def test_seed_notes_example():
    # the lecture notes' worked example (sklearn's accuracy/precision/recall/f1, average='macro')
    y = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([0, 2, 1, 0, 0, 1])
    prob = np.eye(3, dtype=np.float32)[pred] * 0.5 + 0.1
    assert METRICS.get("accuracy")(y, prob) == pytest.approx(0.3333333333333333)
    assert METRICS.get("precision")(y, prob) == pytest.approx(0.2222222222222222)
    assert METRICS.get("recall")(y, prob) == pytest.approx(0.3333333333333333)
    assert METRICS.get("f1")(y, prob) == pytest.approx(0.26666666666666666)


def test_f1_averages_over_union_of_true_and_predicted_classes():
    # C=5. y_true has classes {0,1}; predictions have {0,1,2}; classes 3 and 4 appear nowhere.
    y = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 2, 1, 1, 0, 0])
    prob = np.eye(5, dtype=np.float32)[pred] * 0.6 + 0.1
    # by hand: class 0: tp=2 fp=1 fn=1 -> 4/6; class 1: tp=2 fp=0 fn=1 -> 4/5; class 2: tp=0 fp=1 -> 0
    expected = (4 / 6 + 4 / 5 + 0.0) / 3
    with pytest.warns(MetricWarning, match=r"^f1: classes \[3, 4\] are neither labels nor predictions"):
        assert METRICS.get("f1")(y, prob) == pytest.approx(expected)
    assert hand_macro_f1(y, pred) == pytest.approx(expected)
    assert skm.f1_score(y, pred, average="macro", zero_division=0) == pytest.approx(expected)
    # not the average over all 5 classes, nor over the 2 true ones (and no second warning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert METRICS.get("f1")(y, prob) != pytest.approx((4 / 6 + 4 / 5) / 5)
        assert METRICS.get("f1")(y, prob) != pytest.approx((4 / 6 + 4 / 5) / 2)


@pytest.mark.parametrize("name", ["precision", "recall"])
def test_macro_precision_and_recall_warn_about_the_classes_left_out(name):
    y = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 2, 1, 1, 0, 0])
    prob = np.eye(5, dtype=np.float32)[pred] * 0.6 + 0.1
    with pytest.warns(MetricWarning, match=rf"^{name}: classes \[3, 4\]"):
        value = METRICS.get(name)(y, prob)
    assert value == pytest.approx(reference(name, y, prob))


@pytest.mark.parametrize("name", ["f1_weighted", "precision_weighted", "recall_weighted", "accuracy", "mrr"])
def test_weighted_and_other_metrics_do_not_warn(name):
    # a class with no support has weight 0 in a weighted average: nothing is left out that counts
    y = np.array([0, 0, 1, 1, 1, 0])
    prob = np.eye(5, dtype=np.float32)[np.array([0, 2, 1, 1, 0, 0])] * 0.6 + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = METRICS.get(name)(y, prob)
    assert value == pytest.approx(reference(name, y, prob))


def test_no_warning_when_every_class_is_present():
    y, prob = random_case(n=200, c=4, seed=21)
    assert set(y) == set(prob.argmax(axis=1)) == {0, 1, 2, 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_metrics(METRICS.names(), y, prob)


def test_warning_is_shown_once_per_process_not_every_epoch():
    # An epoch loop warns once, even with the filter that shows everything: scikit-learn resets
    # Python's own record of shown warnings on every call, so the module keeps its own.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(3):
            y, prob = random_case(n=100, c=7, seed=seed, classes=[0, 1, 2, 3, 4])
            compute_metrics(["accuracy", "roc_auc", "f1"], y, prob)
    messages = [str(w.message) for w in caught if issubclass(w.category, MetricWarning)]
    assert messages == ["roc_auc: classes [5, 6] are not among the labels; averaged over the other classes"]
    assert issubclass(MetricWarning, UserWarning)


def test_roc_auc_averages_only_present_classes():
    y, prob = random_case(**CASES["absent_class"])
    with pytest.warns(MetricWarning, match=r"^roc_auc: classes \[2, 4\] are not among the labels"):
        value = METRICS.get("roc_auc")(y, prob)
    per_class = [hand_binary_auc(y == c, prob[:, c]) for c in (0, 1, 3)]
    assert value == pytest.approx(np.mean(per_class))
    assert np.isfinite(value)


def test_roc_auc_perfect_and_single_class():
    y = np.array([0, 1, 2, 0, 1, 2])
    prob = np.eye(3, dtype=np.float32)[y] * 0.7 + 0.1
    assert METRICS.get("roc_auc")(y, prob) == pytest.approx(1.0)
    with pytest.warns(MetricWarning, match=r"classes \[1, 2\] .* NaN"):
        assert np.isnan(METRICS.get("roc_auc")(np.zeros(6, dtype=int), prob))


def test_roc_auc_two_classes():
    y, prob = random_case(n=80, c=2, seed=9)
    assert METRICS.get("roc_auc")(y, prob) == pytest.approx(hand_binary_auc(y == 1, prob[:, 1]))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 60), c=st.integers(3, 9), seed=st.integers(0, 2**32 - 1))
def test_property_metrics_match_hand_definitions(n, c, seed):
    y, prob = random_case(n, c, seed)
    pred = prob.argmax(axis=1)
    assert METRICS.get("accuracy")(y, prob) == pytest.approx(np.mean(pred == y))
    assert METRICS.get("balanced_accuracy")(y, prob) == pytest.approx(hand_balanced_accuracy(y, pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        assert METRICS.get("f1")(y, prob) == pytest.approx(hand_macro_f1(y, pred))
    assert METRICS.get("top5")(y, prob) == pytest.approx(hand_top_k(y, prob, min(5, c)))
    assert METRICS.get("precision_weighted")(y, prob) == pytest.approx(hand_weighted(y, pred, "precision"))
    assert METRICS.get("recall_weighted")(y, prob) == pytest.approx(hand_weighted(y, pred, "recall"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # classes are often missing from a small sample
        auc = METRICS.get("roc_auc")(y, prob)
    present = np.unique(y)
    if len(present) < 2:
        assert np.isnan(auc)
    else:
        expected = np.mean([hand_binary_auc(y == k, prob[:, k]) for k in present])
        assert auc == pytest.approx(expected)


def test_compute_metrics_keys_and_values():
    y, prob = random_case(n=50, c=6, seed=13)
    names = METRICS.names()
    result = compute_metrics(names, y, prob)
    assert set(result) == {f"val/{name}" for name in names}
    for name in names:
        assert isinstance(result[f"val/{name}"], float)
        assert result[f"val/{name}"] == pytest.approx(reference(name, y, prob))
    assert set(compute_metrics(["accuracy"], y, prob, prefix="test/")) == {"test/accuracy"}
    assert compute_metrics([], y, prob) == {}


def test_compute_metrics_unknown_name_raises():
    from trainer.errors import UserError

    y, prob = random_case(n=10, c=3, seed=14)
    with pytest.raises(UserError, match="accuracy"):
        compute_metrics(["acuracy"], y, prob)


def test_default_mode():
    assert default_mode("val/loss") == "min"
    assert default_mode("train/loss") == "min"
    assert default_mode("loss") == "min"
    for key in ["val/mae", "val/mse", "val/rmse", "mae"]:
        assert default_mode(key) == "min"
    for key in ["val/accuracy", "val/f1", "val/roc_auc", "val/top5", "val/balanced_accuracy", "val/r2"]:
        assert default_mode(key) == "max"
    for name in METRICS.names():  # every classification metric is a score: higher is better
        assert default_mode(f"val/{name}") == "max"
    assert MINIMIZED == {"loss"} | (set(REGRESSION_METRICS.names()) - {"r2"})


# --- a whole epoch from tensors --------------------------------------------------------------
def test_epoch_metrics_equals_engine_validate():
    # evaluate computes its numbers with epoch_metrics; they must be the ones the engine records
    from torch.utils.data import DataLoader, TensorDataset

    from trainer.engine.loop import Engine

    torch.manual_seed(0)
    inputs, targets = torch.randn(70, 8), torch.randint(0, 4, (70,))
    model = torch.nn.Linear(8, 4)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 1.0]))
    names = METRICS.names()
    engine = Engine(model, loss_fn, None, None, names, device=torch.device("cpu"))
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=16)
    logits, labels = engine.predict(loader)
    result = epoch_metrics(names, logits, labels, loss_fn)
    assert result == engine.validate(loader)
    assert list(result) == ["val/loss"] + [f"val/{name}" for name in names]
    # the loss over all 70 at once, not a mean of batch means
    with torch.no_grad():
        assert result["val/loss"] == pytest.approx(loss_fn(model(inputs), targets).item(), rel=1e-6)


def test_labels_and_probabilities():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0], [1.0, 2.0]], requires_grad=True)
    targets = torch.tensor([1, 0, 1])
    y, prob = labels_and_probabilities(logits, targets)
    assert isinstance(y, np.ndarray) and isinstance(prob, np.ndarray)
    np.testing.assert_array_equal(y, [1, 0, 1])
    np.testing.assert_allclose(prob, softmax(logits.detach().numpy()), rtol=1e-6)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-6)


# --- the metric options ----------------------------------------------------------------------
def metric_option(name):
    """The metric names of `metric=<name>`, as Hydra composes them."""
    from hydra import compose, initialize_config_dir

    from trainer.config.schema import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(CONF_DIR, version_base=None):
        return list(compose("train", overrides=[f"metric={name}"]).metric.names)


def test_metric_all_lists_every_metric():
    names = metric_option("all")
    assert sorted(names) == METRICS.names() and len(names) == len(set(names))


def test_metric_ranking_option():
    assert metric_option("ranking") == ["accuracy", "mrr", "ndcg", "map"]


@pytest.mark.parametrize("monitor, mode", [("val/mrr", "max"), ("val/ndcg", "max"), ("val/map", "max"), ("val/loss", "min")])
def test_monitor_may_name_a_ranking_metric(monitor, mode):
    from hydra import compose, initialize_config_dir

    from conftest import REPO
    from trainer.config.schema import register_configs
    from trainer.run import checks

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=["metric=ranking", f"monitor={monitor}"])
    checks.check_config(cfg)  # raises for a monitor the run does not produce
    assert checks.monitor_mode(cfg) == mode
