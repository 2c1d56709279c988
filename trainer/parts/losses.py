"""The losses of the lecture notes, as registry options.

`LOSSES` (classification) take raw logits (N, C) and integer targets (N,) or soft targets (N, C)
(mixup/cutmix: rows of class probabilities; the same loss, equal to the integer form on one-hot
rows); `REGRESSION_LOSSES` take predictions (N, 1) or (N,) and float targets (N,). Every loss returns the batch mean.
"""

from functools import partial
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.config.registry import Registry
from trainer.errors import UserError

LOSSES = Registry("loss")
REGRESSION_LOSSES = Registry("regression loss")


def class_weights(weights: Any, num_classes: int, train_labels: Optional[Sequence[int]]) -> Optional[torch.Tensor]:
    """null -> None; "balanced" -> scikit-learn's inverse-frequency weights of the training labels; a list as given."""
    if weights is None:
        return None
    if isinstance(weights, str):
        if weights != "balanced":
            raise UserError(f"loss.weights='{weights}' is not valid; use null, balanced, or one number per class")
        from sklearn.utils.class_weight import compute_class_weight

        labels = np.asarray(train_labels)
        present = np.unique(labels)
        if len(present) != num_classes:
            missing = sorted(set(range(num_classes)) - set(present.tolist()))
            raise UserError(f"loss.weights=balanced needs every class in the training split; missing: {missing}")
        return torch.tensor(compute_class_weight("balanced", classes=present, y=labels), dtype=torch.float32)
    valid = f"use null, balanced, or {num_classes} non-negative numbers, one per class"
    try:
        values = [float(v) for v in weights]
    except (TypeError, ValueError):
        raise UserError(f"loss.weights={weights} is not valid; {valid}") from None
    if len(values) != num_classes or not all(np.isfinite(v) and v >= 0 for v in values):
        raise UserError(f"loss.weights={values} is not valid; {valid}")
    return torch.tensor(values, dtype=torch.float32)


def target_distribution(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets as one row of class probabilities per sample: integer labels become one-hot rows;
    soft targets (mixup/cutmix, float (N, C) rows that sum to 1) are used as they are."""
    if target.is_floating_point():
        if target.dim() != 2 or target.shape[1] != num_classes:
            raise ValueError(f"soft targets must have shape (N, {num_classes}); got {tuple(target.shape)}")
        return target.float()
    return F.one_hot(target, num_classes).float()


def sample_weights(q: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Each sample's class weight: w[y] for a one-hot row, the target-weighted mean of w for a mixed one
    (a 70/30 mix of two images weighs 0.7 w[a] + 0.3 w[b]). Torch's weighted losses divide by their sum."""
    return q.sum(dim=1) if weight is None else q @ weight


class CrossEntropy(nn.Module):
    """torch's cross-entropy (class weights, label smoothing spread over all C classes), for integer
    labels and for soft targets.

    Integer labels go to F.cross_entropy. For soft targets q (rows summing to 1) the smoothed target is
    t = (1 - s) q + s / C and the loss sum_i sum_c w_c t_ic (-log p_ic) / sum_i sum_c w_c q_ic: with
    one-hot rows that is exactly torch's weighted, smoothed loss, which torch's own probability-target
    form is not (it divides by N, not by the weights' sum).
    """

    def __init__(self, num_classes: int, label_smoothing: float, weight: Optional[torch.Tensor]):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"loss.label_smoothing={label_smoothing} is not valid; use 0 <= label_smoothing < 1")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not target.is_floating_point():
            return F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing)
        q = target_distribution(target, self.num_classes)
        log_prob = F.log_softmax(logits.float(), dim=-1)
        smoothed = (1.0 - self.label_smoothing) * q + self.label_smoothing / self.num_classes
        weighted = smoothed if self.weight is None else smoothed * self.weight
        return -(weighted * log_prob).sum() / sample_weights(q, self.weight).sum()


class FocalLoss(nn.Module):
    """Softmax focal loss: -w_y (1 - p_y)^gamma log p_y, averaged like weighted cross-entropy.

    With gamma=0 it is exactly cross-entropy (same weighting and normalisation). A soft target q
    weighs each class's term by q_c: sum_c q_c w_c (1 - p_c)^gamma (-log p_c), divided by the sum
    of sum_c q_c w_c; a one-hot q gives the integer-label loss.
    """

    def __init__(self, num_classes: int, gamma: float, weight: Optional[torch.Tensor]):
        super().__init__()
        if gamma < 0:
            raise UserError(f"loss.gamma={gamma} is not valid; use a number >= 0")
        self.num_classes = num_classes
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_prob = F.log_softmax(logits.float(), dim=-1)
        modulated = (1.0 - log_prob.exp()).clamp_min(0.0).pow(self.gamma) * log_prob
        if not target.is_floating_point():
            return F.nll_loss(modulated, target, weight=self.weight)
        q = target_distribution(target, self.num_classes)
        weighted = q if self.weight is None else q * self.weight
        return -(weighted * modulated).sum() / sample_weights(q, self.weight).sum()


class LabelSmoothingLoss(nn.Module):
    """The lecture notes' label smoothing: the true class gets 1-s, each other class s/(C-1).

    torch's `label_smoothing` (loss=ce loss.label_smoothing=s) instead spreads s over all C classes,
    so the true class gets 1-s+s/C. With optional class weights, each sample is weighted by its
    target class and the sum is divided by the weights' sum, as torch's weighted cross-entropy does.
    A soft target q is smoothed the same way, t = (1-s) q + s/(C-1) (1-q), and weighs sum_c q_c w_c.
    """

    def __init__(self, num_classes: int, smoothing: float, weight: Optional[torch.Tensor]):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise UserError(f"loss.smoothing={smoothing} is not valid; use 0 <= smoothing < 1")
        if num_classes < 2:
            raise UserError("loss=label_smoothing needs at least 2 classes")
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_prob = F.log_softmax(logits.float(), dim=-1)
        q = target_distribution(target, self.num_classes)
        smoothed = (1.0 - self.smoothing) * q + self.smoothing / (self.num_classes - 1) * (1.0 - q)
        per_sample = -(smoothed * log_prob).sum(dim=-1)
        if self.weight is None:
            return per_sample.mean()
        w = sample_weights(q, self.weight)
        return (w * per_sample).sum() / w.sum()


class F1Loss(nn.Module):
    """1 - soft macro F1: precision and recall from softmax probabilities instead of hard predictions.
    Soft targets take the place of the one-hot rows in the true positives, false positives and negatives."""

    def __init__(self, num_classes: int, epsilon: float):
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prob = F.softmax(logits.float(), dim=-1)
        onehot = target_distribution(target, self.num_classes)
        tp = (onehot * prob).sum(dim=0)
        fp = ((1 - onehot) * prob).sum(dim=0)
        fn = (onehot * (1 - prob)).sum(dim=0)
        precision = tp / (tp + fp + self.epsilon)
        recall = tp / (tp + fn + self.epsilon)
        f1 = 2 * precision * recall / (precision + recall + self.epsilon)
        return 1 - f1.clamp(self.epsilon, 1 - self.epsilon).mean()


# Builders take every option from the config (the schema in trainer/config.py states the defaults)
# and the runtime values `build` offers: the number of classes and the training labels.
@LOSSES.register("ce")
def cross_entropy(label_smoothing: float, weights: Any, *, num_classes: int, train_labels):
    return CrossEntropy(num_classes, label_smoothing, class_weights(weights, num_classes, train_labels))


@LOSSES.register("focal")
def focal(gamma: float, weights: Any, *, num_classes: int, train_labels):
    return FocalLoss(num_classes, gamma, class_weights(weights, num_classes, train_labels))


@LOSSES.register("label_smoothing")
def label_smoothing(smoothing: float, weights: Any, *, num_classes: int, train_labels):
    return LabelSmoothingLoss(num_classes, smoothing, class_weights(weights, num_classes, train_labels))


@LOSSES.register("f1")
def f1(epsilon: float, *, num_classes: int):
    return F1Loss(num_classes, epsilon)


# --- regression ------------------------------------------------------------------------------
class RegressionLoss(nn.Module):
    """A pointwise regression loss that refuses to broadcast.

    A model's (N, 1) output against (N,) targets would silently broadcast to an (N, N) loss in
    torch; the single output column is dropped instead, and any other shape mismatch is an error.
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.loss = loss

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prediction = prediction.float()
        if prediction.dim() == target.dim() + 1 and prediction.shape[-1] == 1:
            prediction = prediction.squeeze(-1)
        if prediction.shape != target.shape:
            raise ValueError(
                f"regression predictions of shape {tuple(prediction.shape)} do not match targets of shape "
                f"{tuple(target.shape)}; expected (N,) or (N, 1) predictions for (N,) targets"
            )
        return self.loss(prediction, target.to(prediction.dtype))


@REGRESSION_LOSSES.register("mse")
def mse():
    return RegressionLoss(F.mse_loss)


@REGRESSION_LOSSES.register("l1")
def l1():
    return RegressionLoss(F.l1_loss)


@REGRESSION_LOSSES.register("huber")
def huber(delta: float):
    """Quadratic within `delta` of the target, linear beyond (torch's huber_loss)."""
    if not delta > 0:
        raise UserError(f"loss.delta={delta} is not valid; use a number > 0")
    return RegressionLoss(partial(F.huber_loss, delta=delta))
