"""Classification metrics over a whole epoch's predictions, computed by scikit-learn.

Each metric takes the true labels (N,) and the class probabilities (N, C) as numpy arrays. Metrics
are computed once per epoch from every prediction, never averaged over batches.
"""

import warnings
from typing import Dict, Sequence

import numpy as np
from sklearn import metrics as skm

from trainer.registry import Registry

METRICS = Registry("metric")

# Metrics where smaller is better; every other metric (and key) is maximised.
MINIMIZED = {"loss"}


def default_mode(key: str) -> str:
    return "min" if key.split("/")[-1] in MINIMIZED else "max"


@METRICS.register("accuracy")
def accuracy(y_true: np.ndarray, prob: np.ndarray) -> float:
    return skm.accuracy_score(y_true, prob.argmax(axis=1))


@METRICS.register("balanced_accuracy")
def balanced_accuracy(y_true: np.ndarray, prob: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        return skm.balanced_accuracy_score(y_true, prob.argmax(axis=1))


def _averaged(score, average: str):
    # Without `labels`, scikit-learn averages over the classes present in y_true or y_pred:
    # a class absent from both is left out instead of counting as zero.
    def metric(y_true: np.ndarray, prob: np.ndarray) -> float:
        return score(y_true, prob.argmax(axis=1), average=average, zero_division=0)

    return metric


METRICS.register("f1")(_averaged(skm.f1_score, "macro"))
METRICS.register("f1_weighted")(_averaged(skm.f1_score, "weighted"))
METRICS.register("precision")(_averaged(skm.precision_score, "macro"))
METRICS.register("recall")(_averaged(skm.recall_score, "macro"))


@METRICS.register("roc_auc")
def roc_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """One-vs-rest macro ROC-AUC over the classes present in y_true (others have no defined AUC)."""
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if prob.shape[1] == 2:
        return skm.roc_auc_score(y_true, prob[:, 1])
    if len(present) < prob.shape[1]:
        scores = [skm.roc_auc_score(y_true == c, prob[:, c]) for c in present]
        return float(np.mean(scores))
    return skm.roc_auc_score(y_true, prob, multi_class="ovr", average="macro")


@METRICS.register("top5")
def top5(y_true: np.ndarray, prob: np.ndarray) -> float:
    if prob.shape[1] <= 5:  # every class is among the top 5
        return 1.0
    return skm.top_k_accuracy_score(y_true, prob, k=5, labels=np.arange(prob.shape[1]))


def compute_metrics(names: Sequence[str], y_true: np.ndarray, prob: np.ndarray, prefix: str = "val/") -> Dict[str, float]:
    return {f"{prefix}{name}": float(METRICS.get(name)(y_true, prob)) for name in names}
