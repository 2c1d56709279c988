"""The classification metrics as scikit-learn computes them, from numpy labels (N,) and scores (N, C).

`OLD_METRICS` is what trainer/metrics.py computed before its metrics were vectorised in torch, kept as it
was (less its MetricWarnings): scripts/bench_metrics.py times it against the new path. `ORACLE` is
scikit-learn's number for each metric's definition today, the oracle of tests/test_metrics_oracle.py: the
same calls, except `map` (now each class's average precision, averaged over the classes present; it was
label_ranking_average_precision_score, which equals `mrr` with one true class per image) and roc_auc,
taken from scikit-learn's multilabel form instead of a loop over classes.
"""

import warnings

import numpy as np
from sklearn import metrics as skm


def one_hot(y_true, num_classes):
    return np.eye(num_classes, dtype=int)[y_true]


def accuracy(y_true, scores):
    return skm.accuracy_score(y_true, scores.argmax(axis=1))


def balanced_accuracy(y_true, scores):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        return skm.balanced_accuracy_score(y_true, scores.argmax(axis=1))


def averaged(score, average):
    return lambda y_true, scores: score(y_true, scores.argmax(axis=1), average=average, zero_division=0)


def old_roc_auc(y_true, scores):
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if scores.shape[1] == 2:
        return skm.roc_auc_score(y_true, scores[:, 1])
    return float(np.mean([skm.roc_auc_score(y_true == c, scores[:, c]) for c in present]))


def roc_auc(y_true, scores):
    """One-vs-rest macro over the classes present, by scikit-learn's multilabel roc_auc_score."""
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if scores.shape[1] == 2:
        return skm.roc_auc_score(y_true, scores[:, 1])
    return skm.roc_auc_score(one_hot(y_true, scores.shape[1])[:, present], scores[:, present], average="macro")


def top_k(k):
    def metric(y_true, scores):
        if scores.shape[1] <= k:  # every class is among the top k
            return 1.0
        return skm.top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(scores.shape[1]))

    return metric


def mrr(y_true, scores):
    true_score = scores[np.arange(len(y_true)), y_true][:, None]
    return float(np.mean(1.0 / (scores >= true_score).sum(axis=1)))


def ndcg(y_true, scores):
    return skm.ndcg_score(one_hot(y_true, scores.shape[1]), scores)


def old_map(y_true, scores):
    return skm.label_ranking_average_precision_score(one_hot(y_true, scores.shape[1]), scores)


def mean_average_precision(y_true, scores):
    """scikit-learn's average_precision_score, one-vs-rest, macro over the classes present."""
    present = np.unique(y_true)
    return skm.average_precision_score(one_hot(y_true, scores.shape[1])[:, present], scores[:, present], average="macro")


_COMMON = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "f1": averaged(skm.f1_score, "macro"),
    "f1_weighted": averaged(skm.f1_score, "weighted"),
    "precision": averaged(skm.precision_score, "macro"),
    "precision_weighted": averaged(skm.precision_score, "weighted"),
    "recall": averaged(skm.recall_score, "macro"),
    "recall_weighted": averaged(skm.recall_score, "weighted"),
    "top3": top_k(3),
    "top5": top_k(5),
    "ndcg": ndcg,
}
OLD_METRICS = {**_COMMON, "roc_auc": old_roc_auc, "mrr": mrr, "map": old_map}
# mrr: scikit-learn has none; label_ranking_average_precision_score is MRR with one true class per image
ORACLE = {**_COMMON, "roc_auc": roc_auc, "mrr": old_map, "map": mean_average_precision}


def old_log_softmax(logits):
    """The old path's scores: float64 log-softmax as numpy (labels_and_scores before)."""
    import torch

    return torch.log_softmax(logits.detach().to(torch.float64), dim=1).cpu().numpy()


OLD_REGRESSION_METRICS = {
    "mae": skm.mean_absolute_error,
    "mse": skm.mean_squared_error,
    "rmse": skm.root_mean_squared_error,
    "r2": skm.r2_score,
}
