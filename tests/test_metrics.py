"""Every registered metric against scikit-learn and hand-written numpy definitions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from trainer.metrics import METRICS, compute_metrics, default_mode

# top5 with C <= 5 is trivially 1.0 and scikit-learn says so in a warning; the value is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to 'n_classes'")


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_case(n, c, seed, class_probs=None, classes=None):
    """Labels drawn from `classes` (default all) with `class_probs`; probabilities mildly correlated with labels."""
    rng = np.random.default_rng(seed)
    classes = np.arange(c) if classes is None else np.asarray(classes)
    y = rng.choice(classes, size=n, p=class_probs)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.0
    return y, softmax(logits).astype(np.float32)


def hand_macro_f1(y, pred):
    classes = np.union1d(np.unique(y), np.unique(pred))
    scores = []
    for c in classes:
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        scores.append(0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def hand_balanced_accuracy(y, pred):
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def hand_top_k(y, prob, k):
    top = np.argsort(-prob, axis=1)[:, :k]
    return float(np.mean([y[i] in top[i] for i in range(len(y))]))


def sklearn_expected(name, y, prob):
    pred = prob.argmax(axis=1)
    c = prob.shape[1]
    if name == "accuracy":
        return skm.accuracy_score(y, pred)
    if name == "balanced_accuracy":
        return hand_balanced_accuracy(y, pred)
    if name == "f1":
        return skm.f1_score(y, pred, average="macro", zero_division=0)
    if name == "f1_weighted":
        return skm.f1_score(y, pred, average="weighted", zero_division=0)
    if name == "precision":
        return skm.precision_score(y, pred, average="macro", zero_division=0)
    if name == "recall":
        return skm.recall_score(y, pred, average="macro", zero_division=0)
    if name == "roc_auc":
        present = np.unique(y)
        if len(present) < 2:
            return float("nan")
        # multilabel (one-vs-rest) form over the present classes: another sklearn code path
        if c == 2:
            return skm.roc_auc_score(y, prob[:, 1])
        onehot = label_binarize(y, classes=np.arange(c))
        return skm.roc_auc_score(onehot[:, present], prob[:, present], average="macro")
    if name == "top5":
        return hand_top_k(y, prob, min(5, c))
    raise AssertionError(f"no reference for metric {name}; add one")


def test_every_metric_has_a_reference():
    y, prob = random_case(30, 6, 0)
    for name in METRICS.names():
        sklearn_expected(name, y, prob)  # raises for a metric this file does not know


CASES = {
    "balanced": dict(n=200, c=6, seed=1),
    "imbalanced": dict(n=300, c=4, seed=2, class_probs=[0.8, 0.15, 0.04, 0.01]),
    "absent_class": dict(n=150, c=5, seed=3, classes=[0, 1, 3], class_probs=[0.5, 0.3, 0.2]),
    "many_classes": dict(n=400, c=12, seed=4),
    "binary": dict(n=100, c=3, seed=5, classes=[0, 2]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", METRICS.names())
def test_metric_matches_reference(name, case):
    y, prob = random_case(**CASES[case])
    value = METRICS.get(name)(y, prob)
    expected = sklearn_expected(name, y, prob)
    assert float(value) == pytest.approx(expected, rel=1e-6, abs=1e-9)


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


def test_f1_averages_over_union_of_true_and_predicted_classes():
    # C=5. y_true has classes {0,1}; predictions have {0,1,2}; classes 3 and 4 appear nowhere.
    y = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 2, 1, 1, 0, 0])
    prob = np.eye(5, dtype=np.float32)[pred] * 0.6 + 0.1
    # by hand: class 0: tp=2 fp=1 fn=1 -> 4/6; class 1: tp=2 fp=0 fn=1 -> 4/5; class 2: tp=0 fp=1 -> 0
    expected = (4 / 6 + 4 / 5 + 0.0) / 3
    assert METRICS.get("f1")(y, prob) == pytest.approx(expected)
    assert hand_macro_f1(y, pred) == pytest.approx(expected)
    assert skm.f1_score(y, pred, average="macro", zero_division=0) == pytest.approx(expected)
    # not the average over all 5 classes, nor over the 2 true ones
    assert METRICS.get("f1")(y, prob) != pytest.approx((4 / 6 + 4 / 5) / 5)
    assert METRICS.get("f1")(y, prob) != pytest.approx((4 / 6 + 4 / 5) / 2)


def test_roc_auc_averages_only_present_classes():
    y, prob = random_case(**CASES["absent_class"])
    value = METRICS.get("roc_auc")(y, prob)
    per_class = [skm.roc_auc_score((y == c).astype(int), prob[:, c]) for c in (0, 1, 3)]
    assert value == pytest.approx(np.mean(per_class))
    assert np.isfinite(value)


def test_roc_auc_perfect_and_single_class():
    y = np.array([0, 1, 2, 0, 1, 2])
    prob = np.eye(3, dtype=np.float32)[y] * 0.7 + 0.1
    assert METRICS.get("roc_auc")(y, prob) == pytest.approx(1.0)
    assert np.isnan(METRICS.get("roc_auc")(np.zeros(6, dtype=int), prob))


def test_roc_auc_two_classes():
    y, prob = random_case(n=80, c=2, seed=9)
    assert METRICS.get("roc_auc")(y, prob) == pytest.approx(skm.roc_auc_score(y, prob[:, 1]))


@pytest.mark.parametrize("c", [3, 5, 8, 20])
def test_top5_matches_top_k_accuracy(c):
    y, prob = random_case(n=120, c=c, seed=c)
    k = min(5, c)
    value = METRICS.get("top5")(y, prob)
    assert value == pytest.approx(skm.top_k_accuracy_score(y, prob, k=k, labels=np.arange(c)))
    assert value == pytest.approx(hand_top_k(y, prob, k))
    if c <= 5:
        assert value == 1.0


def test_top5_with_labels_missing_from_y_true():
    y, prob = random_case(n=60, c=8, seed=11, classes=[1, 6])
    assert METRICS.get("top5")(y, prob) == pytest.approx(hand_top_k(y, prob, 5))


def test_top5_two_classes():
    # a binary task: top-2 of 2 classes is always right
    y, prob = random_case(n=20, c=2, seed=12)
    assert METRICS.get("top5")(y, prob) == 1.0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 60), c=st.integers(3, 9), seed=st.integers(0, 2**32 - 1))
def test_property_metrics_match_hand_definitions(n, c, seed):
    y, prob = random_case(n, c, seed)
    pred = prob.argmax(axis=1)
    assert METRICS.get("accuracy")(y, prob) == pytest.approx(np.mean(pred == y))
    assert METRICS.get("balanced_accuracy")(y, prob) == pytest.approx(hand_balanced_accuracy(y, pred))
    assert METRICS.get("f1")(y, prob) == pytest.approx(hand_macro_f1(y, pred))
    assert METRICS.get("top5")(y, prob) == pytest.approx(hand_top_k(y, prob, min(5, c)))
    auc = METRICS.get("roc_auc")(y, prob)
    present = np.unique(y)
    if len(present) < 2:
        assert np.isnan(auc)
    else:
        expected = np.mean([skm.roc_auc_score((y == k).astype(int), prob[:, k]) for k in present])
        assert auc == pytest.approx(expected)


def test_compute_metrics_keys_and_values():
    y, prob = random_case(n=50, c=6, seed=13)
    names = METRICS.names()
    result = compute_metrics(names, y, prob)
    assert set(result) == {f"val/{name}" for name in names}
    for name in names:
        assert isinstance(result[f"val/{name}"], float)
        assert result[f"val/{name}"] == pytest.approx(sklearn_expected(name, y, prob))
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
    for key in ["val/accuracy", "val/f1", "val/roc_auc", "val/top5", "val/balanced_accuracy"]:
        assert default_mode(key) == "max"
