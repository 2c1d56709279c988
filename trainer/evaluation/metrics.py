"""Metrics over a whole epoch's predictions, computed by scikit-learn.

Classification metrics (`METRICS`) take the true labels (N,) and class scores (N, C) as numpy arrays:
probabilities, or any scores in the same order within each row and, for each class, across rows.
An epoch's metrics get float64 log-softmax scores of the logits (`labels_and_scores`): float32
softmax probabilities underflow to exactly 0 for logits some 100 below the row's largest, and the
false ties between such classes would corrupt every ranking metric (top-k, mrr, ndcg, map, roc_auc).
Regression metrics (`REGRESSION_METRICS`) take true and predicted values, both (N,).
Metrics are computed once per epoch from every prediction, never averaged over batches.

A class that the validation split lacks has no defined ROC-AUC, and a class that is neither a
label nor a prediction has no defined F1, precision or recall: such classes are left out of the
average and a `MetricWarning` names them, instead of crashing or silently counting them as zero.
"""

import warnings
from typing import Callable, Dict, Sequence, Set, Tuple

import numpy as np
import torch
from sklearn import metrics as skm

from trainer.config.registry import Registry

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


# --- classification ---------------------------------------------------------------------------
@METRICS.register("accuracy")
def accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    return skm.accuracy_score(y_true, scores.argmax(axis=1))


@METRICS.register("balanced_accuracy")
def balanced_accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        return skm.balanced_accuracy_score(y_true, scores.argmax(axis=1))


def _averaged(name: str, score: Callable, average: str) -> Callable:
    # Without `labels`, scikit-learn averages over the classes present in y_true or y_pred: a class
    # absent from both is left out instead of counting as zero. A weighted average gives such a
    # class weight 0 anyway, so only the macro averages need to say so.
    def metric(y_true: np.ndarray, scores: np.ndarray) -> float:
        pred = scores.argmax(axis=1)
        if average == "macro":
            left_out = np.setdiff1d(np.arange(scores.shape[1]), np.union1d(y_true, pred))
            if len(left_out):
                warn_left_out(name, left_out, "are neither labels nor predictions")
        return score(y_true, pred, average=average, zero_division=0)

    metric.__name__ = name
    return metric


for _name, _score, _average in [
    ("f1", skm.f1_score, "macro"),
    ("f1_weighted", skm.f1_score, "weighted"),
    ("precision", skm.precision_score, "macro"),
    ("precision_weighted", skm.precision_score, "weighted"),
    ("recall", skm.recall_score, "macro"),
    ("recall_weighted", skm.recall_score, "weighted"),
]:
    METRICS.register(_name)(_averaged(_name, _score, _average))


@METRICS.register("roc_auc")
def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """One-vs-rest macro ROC-AUC over the classes present in y_true (others have no defined AUC)."""
    present = np.unique(y_true)
    absent = np.setdiff1d(np.arange(scores.shape[1]), present)
    if len(present) < 2:
        warn_left_out("roc_auc", absent, "are not among the labels", "ROC-AUC needs two classes, so it is NaN")
        return float("nan")
    if len(absent):
        warn_left_out("roc_auc", absent, "are not among the labels")
    if scores.shape[1] == 2:
        return skm.roc_auc_score(y_true, scores[:, 1])
    # One-vs-rest by hand: scikit-learn's multi_class="ovr" insists that each row sums to 1, which
    # log-probabilities do not; its macro average is this same mean of the per-class AUCs.
    return float(np.mean([skm.roc_auc_score(y_true == c, scores[:, c]) for c in present]))


def _top_k(k: int) -> Callable:
    def metric(y_true: np.ndarray, scores: np.ndarray) -> float:
        if scores.shape[1] <= k:  # every class is among the top k
            return 1.0
        return skm.top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(scores.shape[1]))

    metric.__name__ = f"top{k}"
    return metric


METRICS.register("top3")(_top_k(3))
METRICS.register("top5")(_top_k(5))


# --- ranking of the classes by score -----------------------------------------------------------
# Each image is a query, the classes sorted by score are the ranked answers, and the true class is
# the one relevant answer.
def _one_hot(y_true: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=int)[y_true]


@METRICS.register("mrr")
def mrr(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean reciprocal rank of the true class among the classes sorted by score.

    scikit-learn has no MRR of its own. Ties count against the model, as scikit-learn's
    `label_ranking_average_precision_score` counts them (the rank is the number of classes scoring
    at least as high as the true one), so a constant prediction scores 1/C, not 1, and `mrr`
    equals `map` exactly.
    """
    true_score = scores[np.arange(len(y_true)), y_true][:, None]
    rank = (scores >= true_score).sum(axis=1)
    return float(np.mean(1.0 / rank))


@METRICS.register("ndcg")
def ndcg(y_true: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's `ndcg_score` over the full class ranking with one-hot relevance.

    With one relevant class per image it is the mean of 1/log2(1 + rank of the true class);
    tied scores share the average of their positions' discounts.
    """
    return skm.ndcg_score(_one_hot(y_true, scores.shape[1]), scores)


@METRICS.register("map")
def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean average precision of the class ranking: scikit-learn's `label_ranking_average_precision_score`.

    Each image has exactly one relevant class, so its average precision is 1/rank of its true class
    and MAP always equals MRR (ties counted the same way); both are listed because the lecture notes
    list both.
    """
    return skm.label_ranking_average_precision_score(_one_hot(y_true, scores.shape[1]), scores)


# --- regression --------------------------------------------------------------------------------
REGRESSION_METRICS.register("mae")(skm.mean_absolute_error)
REGRESSION_METRICS.register("mse")(skm.mean_squared_error)
REGRESSION_METRICS.register("rmse")(skm.root_mean_squared_error)
REGRESSION_METRICS.register("r2")(skm.r2_score)


# --- a whole epoch -----------------------------------------------------------------------------
def compute_metrics(names: Sequence[str], y_true: np.ndarray, scores: np.ndarray, prefix: str = "val/") -> Dict[str, float]:
    return {f"{prefix}{name}": float(METRICS.get(name)(y_true, scores)) for name in names}


def compute_regression_metrics(
    names: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray, prefix: str = "val/"
) -> Dict[str, float]:
    return {f"{prefix}{name}": float(REGRESSION_METRICS.get(name)(y_true, y_pred)) for name in names}


def labels_and_scores(logits: torch.Tensor, targets: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """What every classification metric takes: labels (N,) and float64 log-softmax scores (N, C).

    The log-softmax keeps the logits' order within a row (it subtracts one number per row) and is
    monotone in each class's probability across rows (roc_auc ranks the images by one class's score),
    without the underflow of float32 probabilities.
    """
    scores = torch.log_softmax(logits.detach().to(torch.float64), dim=1)
    return targets.detach().cpu().numpy(), scores.cpu().numpy()


def labels_and_probabilities(logits: torch.Tensor, targets: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and float64 softmax probabilities (N, C), for the per-class reports; the exponential
    of `labels_and_scores`, so their argmax is the one the metrics see."""
    y_true, scores = labels_and_scores(logits, targets)
    return y_true, np.exp(scores)


def epoch_metrics(names: Sequence[str], logits: torch.Tensor, targets: torch.Tensor, loss_fn: Callable,
                  prefix: str = "val/") -> Dict[str, float]:
    """`<prefix>loss` and every `<prefix><name>` from one epoch's logits (N, C) and integer targets (N,).

    The loss is computed once over all N predictions, as Engine.validate and evaluate both need.
    """
    with torch.inference_mode():
        loss = loss_fn(logits, targets)
    y_true, scores = labels_and_scores(logits, targets)
    return {f"{prefix}loss": loss.item(), **compute_metrics(names, y_true, scores, prefix)}


def epoch_regression_metrics(names: Sequence[str], outputs: torch.Tensor, values: torch.Tensor, loss_fn: Callable,
                             prefix: str = "val/") -> Dict[str, float]:
    """`<prefix>loss` and every regression `<prefix><name>` from one epoch's (N, 1) outputs and (N,) true values."""
    with torch.inference_mode():
        loss = loss_fn(outputs, values)
    y_pred = outputs.detach().float().reshape(-1).cpu().numpy()
    return {f"{prefix}loss": loss.item(), **compute_regression_metrics(names, values.cpu().numpy(), y_pred, prefix)}
