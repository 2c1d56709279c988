"""The ranking metrics against definitions written in metric_references.py: top-k, mrr and ndcg rank each
image's classes by score (the true class the one relevant answer); map ranks each class's images."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

import trainer.evaluation.metrics as metrics_module
from metric_references import CASES, hand_average_precision, hand_map, hand_mrr, hand_ndcg, hand_top_k, one_hot, random_case
from trainer.evaluation.metrics import METRICS, MetricWarning

# top5 with C <= 5 is trivially 1.0 and scikit-learn says so in a warning; the value is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to 'n_classes'")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(metrics_module, "_already_warned", set())


# --- top-k -------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("c", [2, 3, 4, 10])
def test_top3_matches_top_k_accuracy(c):
    y, prob = random_case(n=120, c=c, seed=30 + c)
    value = METRICS.get("top3")(y, prob)
    assert value == pytest.approx(hand_top_k(y, prob, min(3, c)))
    if c > 3:
        assert value == pytest.approx(skm.top_k_accuracy_score(y, prob, k=3, labels=np.arange(c)))
        assert value < 1.0
    else:
        assert value == 1.0


def test_top5_two_classes():
    # a binary task: top-2 of 2 classes is always right
    y, prob = random_case(n=20, c=2, seed=12)
    assert METRICS.get("top5")(y, prob) == 1.0


# --- ranking: mrr, ndcg (each image's classes), map (each class's images) ------------------------
def test_ranking_by_hand():
    # true class 2 is second: RR 1/2, DCG 1/log2(3).
    # true class 0 ties with class 3 for places 3-4: counted as 4th for RR, mean discount for NDCG.
    prob = np.array([[0.1, 0.5, 0.3, 0.1], [0.1, 0.5, 0.3, 0.1], [0.7, 0.1, 0.1, 0.1]])
    y = np.array([2, 0, 0])
    assert METRICS.get("mrr")(y, prob) == pytest.approx((1 / 2 + 1 / 4 + 1) / 3)
    tie = (1 / np.log2(4) + 1 / np.log2(5)) / 2
    assert METRICS.get("ndcg")(y, prob) == pytest.approx((1 / np.log2(3) + tie + 1) / 3)
    # map, by class. Class 0's column [0.1, 0.1, 0.7]: its image scoring 0.7 first (precision 1/1), then its
    # other image tied with image 0 (precision 2/3 after the tie): AP 5/6. Class 2's column [0.3, 0.3, 0.1]:
    # its image tied with image 1 for first place: AP 1/2. Classes 1 and 3 have no images.
    with pytest.warns(MetricWarning, match=r"^map: classes \[1, 3\] are not among the labels"):
        assert METRICS.get("map")(y, prob) == pytest.approx((5 / 6 + 1 / 2) / 2)


def test_map_is_not_mrr():
    # each image's true class comes first (mrr 1), but class 1's image scores below image 0 in class 1's column
    y = np.array([0, 1])
    prob = np.array([[0.9, 0.8], [0.3, 0.4]])
    assert METRICS.get("mrr")(y, prob) == 1.0
    assert METRICS.get("map")(y, prob) == pytest.approx((1 + 1 / 2) / 2)
    assert METRICS.get("map")(y, prob) == pytest.approx(skm.average_precision_score(one_hot(y, 2), prob))


@pytest.mark.parametrize("c", [2, 5, 10])
def test_constant_prediction_ranks_the_true_class_last(c):
    # a uniform prediction must not score as if the true class were first
    y = np.arange(20) % c
    prob = np.full((20, c), 1 / c)
    assert METRICS.get("mrr")(y, prob) == pytest.approx(1 / c)
    # each class's images all tie with the others: its precision is its share of the images, here 1/c
    assert METRICS.get("map")(y, prob) == pytest.approx(1 / c)
    assert METRICS.get("ndcg")(y, prob) == pytest.approx(np.mean(1 / np.log2(1 + np.arange(1, c + 1))))


def test_perfect_ranking_scores_one():
    y, prob = random_case(n=50, c=6, seed=40)
    prob = np.eye(6)[y] * 0.5 + prob * 0.1
    for name in ["mrr", "ndcg", "map"]:
        assert METRICS.get(name)(y, prob) == pytest.approx(1.0)


@pytest.mark.parametrize("case", list(CASES))
def test_ranking_metrics_against_sklearn_and_formulas(case):
    y, prob = random_case(**CASES[case])
    c = prob.shape[1]
    lrap = skm.label_ranking_average_precision_score(one_hot(y, c), prob)
    assert METRICS.get("mrr")(y, prob) == pytest.approx(lrap, rel=1e-9)
    assert METRICS.get("mrr")(y, prob) == pytest.approx(hand_mrr(y, prob), rel=1e-9)
    assert METRICS.get("ndcg")(y, prob) == pytest.approx(hand_ndcg(y, prob), rel=1e-9)
    present = np.unique(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        value = METRICS.get("map")(y, prob)
    assert value == pytest.approx(hand_map(y, prob), rel=1e-9)
    assert value == pytest.approx(skm.average_precision_score(one_hot(y, c)[:, present], prob[:, present]), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    c=st.integers(2, 9),
    seed=st.integers(0, 2**32 - 1),
    decimals=st.sampled_from([0, 1, 2, 6]),
)
def test_property_ranking_metrics(n, c, seed, decimals):
    # rounding the scores makes ties common: the conventions for ties are part of what is tested
    y, prob = random_case(n, c, seed)
    prob = np.round(prob.astype(np.float64), decimals)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # classes are often missing from a small sample
        mrr, map_, ndcg = (METRICS.get(name)(y, prob) for name in ("mrr", "map", "ndcg"))
    assert mrr == pytest.approx(hand_mrr(y, prob), rel=1e-9)
    assert mrr == pytest.approx(skm.label_ranking_average_precision_score(one_hot(y, c), prob), rel=1e-9)
    assert map_ == pytest.approx(hand_map(y, prob), rel=1e-9)
    assert ndcg == pytest.approx(hand_ndcg(y, prob), rel=1e-9)
    # with one relevant class, NDCG's log discount is gentler than MRR's 1/rank
    assert 1 / c - 1e-12 <= mrr <= ndcg + 1e-12 <= 1 + 2e-12


def test_hand_average_precision_is_a_real_average_precision():
    # the test's own reference (map's, per class), checked on a list with two relevant items against sklearn
    relevant = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.5, 0.1])
    # relevant items at ranks 1 and 4: (1/1 + 2/4) / 2
    assert hand_average_precision(relevant, scores) == pytest.approx(0.75)
    assert skm.label_ranking_average_precision_score([relevant], [scores]) == pytest.approx(0.75)
    assert skm.average_precision_score(relevant, scores) == pytest.approx(0.75)
    # a tie shares the precision after it: relevant items tied with an irrelevant one for ranks 1-2
    assert hand_average_precision(np.array([1, 1, 0]), np.array([0.5, 0.5, 0.5])) == pytest.approx(2 / 3)
    assert skm.average_precision_score([1, 1, 0], [0.5, 0.5, 0.5]) == pytest.approx(2 / 3)
