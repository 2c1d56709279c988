"""Metrics over a whole epoch's predictions, vectorised in torch on the device that holds them.

Classification metrics (`METRICS`) take the true labels (N,) and class scores (N, C), as tensors or numpy
arrays: probabilities, or any scores in the same order within each row and, for each class, across rows.
An epoch's metrics rank float64 log-softmax scores of the logits (`epoch_metrics`, `labels_and_scores`):
float32 softmax probabilities underflow to exactly 0 for logits some 100 below the row's largest, and
the false ties between such classes would corrupt every ranking metric (top-k, mrr, ndcg, map, roc_auc).
Regression metrics (`REGRESSION_METRICS`) take true and predicted values, both (N,).
Metrics are computed once per epoch from every prediction, never averaged over batches; the counts they
are made of (trainer/epoch_predictions.py) are computed once for all of them. Each equals scikit-learn's
number for the same definition (tests/test_metrics_oracle.py).

A class that the validation split lacks has no defined ROC-AUC or average precision, and a class that is
neither a label nor a prediction has no defined F1, precision or recall: such classes are left out of the
average and a `MetricWarning` names them, instead of crashing or silently counting them as zero.
"""

import math
import warnings
from typing import Callable, Dict, Sequence, Set, Tuple, Union

import numpy as np
import torch

from trainer.config.registry import Registry
from trainer.evaluation.epoch_predictions import EpochPredictions

METRICS = Registry("metric")
REGRESSION_METRICS = Registry("regression metric")

# Keys where smaller is better (losses and error metrics); every other key is maximised.
MINIMIZED = {"loss", "mae", "mse", "rmse"}


class MetricWarning(UserWarning):
    """A metric was computed over fewer classes than the model has, because some are undefined."""



def default_mode(key: str) -> str:
    """"min" for `val/loss`, `train/loss` and error metrics such as `val/mae`; "max" otherwise."""
    return "min" if key.split("/")[-1] in MINIMIZED else "max"


# Messages already shown. Python's own "default" and "once" filters cannot be relied on for this:
# they forget what they showed whenever any warning filter changes, and scikit-learn changes them
# on almost every call (its input checks enter warnings.catch_warnings), so the same warning would
# come back every epoch.
_already_warned: Set[str] = set()


def warn_left_out(metric: str, left_out: Sequence[int], why: str, outcome: str = "averaged over the other classes") -> None:
    """A MetricWarning naming the classes a metric left out; each message once per process."""
    classes = ", ".join(str(int(c)) for c in sorted(left_out))
    message = f"{metric}: classes [{classes}] {why}; {outcome}"
    if message not in _already_warned:
        _already_warned.add(message)
        warnings.warn(message, MetricWarning, stacklevel=3)


# --- registering a metric ---------------------------------------------------------------------
def _metric(name: str) -> Callable:
    """Register a function of EpochPredictions as the metric `name`. What is registered is called as
    `metric(y_true, scores) -> float`; compute_metrics and epoch_metrics call its `statistic` instead,
    on one EpochPredictions shared by all the metrics of an epoch."""

    def register(statistic: Callable[[EpochPredictions], Union[float, torch.Tensor]]) -> Callable:
        def metric(y_true, scores) -> float:
            return float(statistic(EpochPredictions.from_scores(y_true, scores)))

        metric.__name__, metric.__doc__, metric.statistic = name, statistic.__doc__, statistic
        METRICS.register(name)(metric)
        return statistic

    return register


def _float64(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.float64)


def _classes(mask: torch.Tensor) -> list:
    return mask.nonzero()[:, 0].tolist()


# --- classification: the highest-scoring class is the prediction --------------------------------
@_metric("accuracy")
def accuracy(p: EpochPredictions) -> torch.Tensor:
    """Share of images whose highest-scoring class is the true one (among tied maxima the lowest index,
    as numpy's argmax)."""
    return _float64(p.true_positives.sum()) / p.num_images


@_metric("balanced_accuracy")
def balanced_accuracy(p: EpochPredictions) -> torch.Tensor:
    """Mean recall over the classes present in the labels (scikit-learn's balanced_accuracy_score)."""
    present = p.support > 0
    recall = _float64(p.true_positives) / p.support.clamp(min=1)
    return (recall * present).sum() / present.sum()


def _per_class(p: EpochPredictions, which: str) -> torch.Tensor:
    """Precision, recall or F1 of every class (C,), 0 where undefined (scikit-learn's zero_division=0)."""
    true_positives, support, predicted = _float64(p.true_positives), _float64(p.support), _float64(p.predicted_count)
    numerator, denominator = {
        "precision": (true_positives, predicted),
        "recall": (true_positives, support),
        "f1": (2 * true_positives, support + predicted),
    }[which]
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), 0.0)


def _averaged(name: str, which: str, average: str) -> Callable:
    # As scikit-learn without `labels`: the macro average is over the classes present in y_true or
    # y_pred, a class absent from both is left out instead of counting as zero. A weighted average gives
    # such a class weight 0 anyway, so only the macro averages need to say so.
    def statistic(p: EpochPredictions) -> torch.Tensor:
        score = _per_class(p, which)
        if average == "weighted":
            return (score * p.support).sum() / p.num_images
        counted = (p.support > 0) | (p.predicted_count > 0)
        left_out = _classes(~counted)
        if left_out:
            warn_left_out(name, left_out, "are neither labels nor predictions")
        return (score * counted).sum() / counted.sum()

    statistic.__doc__ = f"{which} of each class, {average} average (scikit-learn's {which}_score, zero_division=0)."
    return statistic


for _name, _which, _average in [
    ("f1", "f1", "macro"),
    ("f1_weighted", "f1", "weighted"),
    ("precision", "precision", "macro"),
    ("precision_weighted", "precision", "weighted"),
    ("recall", "recall", "macro"),
    ("recall_weighted", "recall", "weighted"),
]:
    _metric(_name)(_averaged(_name, _which, _average))


# --- each class's images ranked by that class's score (one-vs-rest) ----------------------------
def _present_classes(p: EpochPredictions, metric: str, too_few: str = "") -> torch.Tensor:
    """The classes among the labels; a MetricWarning names the others (`too_few`: the outcome with one class)."""
    present = p.support > 0
    absent = _classes(~present)
    if too_few and int(present.sum()) < 2:
        warn_left_out(metric, absent, "are not among the labels", too_few)
    elif absent:
        warn_left_out(metric, absent, "are not among the labels")
    return present


@_metric("roc_auc")
def roc_auc(p: EpochPredictions) -> Union[float, torch.Tensor]:
    """One-vs-rest macro ROC-AUC over the classes present in the labels (others have no defined AUC); for two
    classes, class 1's. Each class's AUC is the Mann-Whitney statistic, a tie counting one half: the area
    under the ROC curve through the distinct thresholds, as scikit-learn's roc_auc_score computes it."""
    present = _present_classes(p, "roc_auc", too_few="ROC-AUC needs two classes, so it is NaN")
    if int(present.sum()) < 2 or p.has_nan:
        return math.nan
    positives, n = _float64(p.support), p.num_images
    # Sum over a class's images of (images below + half the level ones, itself included), doubled, less
    # what its own images contribute among themselves (P^2): twice its pairs ranked right, ties one half.
    twice_right = torch.bincount(p.labels, weights=_float64(2 * p.below + p.level), minlength=p.num_classes) - positives**2
    auc = twice_right / (2 * positives * (n - positives)).clamp(min=1)
    if p.num_classes == 2:
        return auc[1]
    return (auc * present).sum() / present.sum()


@_metric("map")
def mean_average_precision(p: EpochPredictions) -> Union[float, torch.Tensor]:
    """Mean over the classes present in the labels of each class's average precision: its images ranked
    by its score among all images, the precision at each of its images averaged (scikit-learn's
    average_precision_score, one-vs-rest, macro). Tied images share their precision, counted after the tie.

    Not the average precision of each image's ranking of classes: with one true class per image that
    would only repeat `mrr`.
    """
    present = _present_classes(p, "map")
    if p.has_nan:
        return math.nan
    positives = p.support[p.labels]
    precision = _float64(positives - p.positives_below) / _float64(p.num_images - p.below)
    average_precision = torch.bincount(p.labels, weights=precision, minlength=p.num_classes) / p.support.clamp(min=1)
    return (average_precision * present).sum() / present.sum()


# --- each image's classes ranked by score ------------------------------------------------------
# Each image is a query, the classes sorted by score are the ranked answers, and the true class is
# the one relevant answer.
def _top_k(k: int) -> Callable:
    def statistic(p: EpochPredictions) -> Union[float, torch.Tensor]:
        if p.num_classes <= k:  # every class is among the top k
            return 1.0
        if p.has_nan:
            return math.nan
        return _float64(p.greater + p.tied_after < k).mean()

    statistic.__doc__ = (f"Share of images whose true class is among the {k} highest-scoring (scikit-learn's "
                         "top_k_accuracy_score: among tied classes the higher index ranks first).")
    return statistic


_metric("top3")(_top_k(3))
_metric("top5")(_top_k(5))


@_metric("mrr")
def mrr(p: EpochPredictions) -> Union[float, torch.Tensor]:
    """Mean reciprocal rank of the true class among the classes sorted by score.

    scikit-learn has no MRR of its own. Ties count against the model, as scikit-learn's
    `label_ranking_average_precision_score` counts them (the rank is the number of classes scoring
    at least as high as the true one), so a constant prediction scores 1/C, not 1; with one relevant
    class per image it equals that score exactly.
    """
    if p.has_nan:
        return math.nan
    return (1.0 / _float64(p.greater + p.tied)).mean()


@_metric("ndcg")
def ndcg(p: EpochPredictions) -> Union[float, torch.Tensor]:
    """scikit-learn's `ndcg_score` over the full class ranking with one-hot relevance.

    With one relevant class per image it is the mean of 1/log2(1 + rank of the true class);
    tied scores share the average of their positions' discounts.
    """
    if p.has_nan:
        return math.nan
    discounts = 1.0 / torch.log2(torch.arange(2, p.num_classes + 2, dtype=torch.float64, device=p.device))
    total = torch.cat([discounts.new_zeros(1), torch.cumsum(discounts, 0)])  # total[k]: the first k positions'
    return ((total[p.greater + p.tied] - total[p.greater]) / _float64(p.tied)).mean()


# --- regression --------------------------------------------------------------------------------
def _regression(name: str) -> Callable:
    def register(statistic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
        def metric(y_true, y_pred) -> float:
            return float(statistic(*_values(y_true, y_pred)))

        metric.__name__, metric.__doc__, metric.statistic = name, statistic.__doc__, statistic
        REGRESSION_METRICS.register(name)(metric)
        return statistic

    return register


def _values(y_true, y_pred) -> Tuple[torch.Tensor, torch.Tensor]:
    y_pred = torch.as_tensor(y_pred).detach().reshape(-1).to(torch.float64)
    return torch.as_tensor(y_true).detach().reshape(-1).to(y_pred.device, torch.float64), y_pred


@_regression("mae")
def mae(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (scikit-learn's mean_absolute_error)."""
    return (y_pred - y_true).abs().mean()


@_regression("mse")
def mse(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Mean squared error (scikit-learn's mean_squared_error)."""
    return ((y_pred - y_true) ** 2).mean()


@_regression("rmse")
def rmse(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Root mean squared error (scikit-learn's root_mean_squared_error)."""
    return mse(y_true, y_pred).sqrt()


@_regression("r2")
def r2(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination, as scikit-learn's r2_score: 1 for a perfect prediction, 0 for an
    imperfect one of constant values, NaN for fewer than two values."""
    if len(y_true) < 2:
        return torch.tensor(math.nan, dtype=torch.float64)
    residual = ((y_true - y_pred) ** 2).sum()
    total = ((y_true - y_true.mean()) ** 2).sum()
    fraction = torch.where(total != 0, 1 - residual / torch.where(total != 0, total, 1.0), 0.0)
    return torch.where(residual == 0, 1.0, fraction)


# --- a whole epoch -----------------------------------------------------------------------------
def _as_floats(keys: Sequence[str], values: list) -> Dict[str, float]:
    """Python floats, fetched from the device in one transfer."""
    tensors = [torch.as_tensor(v, dtype=torch.float64) for v in values]
    fetched = torch.stack([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else []
    return dict(zip(keys, fetched))


def metric_values(names: Sequence[str], predictions: EpochPredictions, prefix: str = "val/") -> Dict[str, float]:
    """`<prefix><name>` of every classification metric in `names`, sharing the counts they are made of."""
    statistics = [METRICS.get(name).statistic for name in names]  # an unknown name fails before any work
    values = [statistic(predictions) for statistic in statistics]
    return _as_floats([f"{prefix}{name}" for name in names], values)


def compute_metrics(names: Sequence[str], y_true, scores, prefix: str = "val/") -> Dict[str, float]:
    return metric_values(names, EpochPredictions.from_scores(y_true, scores), prefix)


def compute_regression_metrics(names: Sequence[str], y_true, y_pred, prefix: str = "val/") -> Dict[str, float]:
    statistics = [REGRESSION_METRICS.get(name).statistic for name in names]
    y_true, y_pred = _values(y_true, y_pred)
    return _as_floats([f"{prefix}{name}" for name in names], [statistic(y_true, y_pred) for statistic in statistics])


def labels_and_scores(logits: torch.Tensor, targets: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and float64 log-softmax scores (N, C) as numpy, the scores every metric of an epoch ranks.

    The log-softmax keeps the logits' order within a row (it subtracts one number per row) and is
    monotone in each class's probability across rows (roc_auc ranks the images by one class's score),
    without the underflow of float32 probabilities.
    """
    scores = EpochPredictions.from_logits(logits, targets).log_softmax()
    return targets.detach().cpu().numpy(), scores.cpu().numpy()


def labels_and_probabilities(logits: torch.Tensor, targets: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and float64 softmax probabilities (N, C), for the per-class reports; the exponential
    of `labels_and_scores`, so their argmax is the one the metrics see."""
    y_true, scores = labels_and_scores(logits, targets)
    return y_true, np.exp(scores)


def epoch_metrics(names: Sequence[str], logits: torch.Tensor, targets: torch.Tensor, loss_fn: Callable,
                  prefix: str = "val/") -> Dict[str, float]:
    """`<prefix>loss` and every `<prefix><name>` from one epoch's logits (N, C) and integer targets (N,),
    computed where the logits are (the GPU when training on one).

    The loss is computed once over all N predictions, as Engine.validate and evaluate both need.
    """
    with torch.inference_mode():
        loss = loss_fn(logits, targets)
        metrics = metric_values(names, EpochPredictions.from_logits(logits, targets), prefix)
    return {f"{prefix}loss": loss.item(), **metrics}


def epoch_regression_metrics(names: Sequence[str], outputs: torch.Tensor, values: torch.Tensor, loss_fn: Callable,
                             prefix: str = "val/") -> Dict[str, float]:
    """`<prefix>loss` and every regression `<prefix><name>` from one epoch's (N, 1) outputs and (N,) true values."""
    with torch.inference_mode():
        loss = loss_fn(outputs, values)
        metrics = compute_regression_metrics(names, values, outputs, prefix)
    return {f"{prefix}loss": loss.item(), **metrics}
