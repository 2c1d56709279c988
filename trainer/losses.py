"""The losses of the lecture notes, as registry options.

`LOSSES` (classification) take raw logits (N, C) and integer targets (N,); `REGRESSION_LOSSES`
take predictions (N, 1) or (N,) and float targets (N,). Every loss returns the batch mean.
"""

from functools import partial
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import UserError
from trainer.registry import Registry

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


class FocalLoss(nn.Module):
    """Softmax focal loss: -w_y (1 - p_y)^gamma log p_y, averaged like weighted cross-entropy.

    With gamma=0 it is exactly cross-entropy (same weighting and normalisation).
    """

    def __init__(self, gamma: float = 2.0, weight: Optional[torch.Tensor] = None):
        super().__init__()
        if gamma < 0:
            raise UserError(f"loss.gamma={gamma} is not valid; use a number >= 0")
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_prob = F.log_softmax(logits.float(), dim=-1)
        modulated = (1.0 - log_prob.exp()).clamp_min(0.0).pow(self.gamma) * log_prob
        return F.nll_loss(modulated, target, weight=self.weight)


class LabelSmoothingLoss(nn.Module):
    """The lecture notes' label smoothing: the true class gets 1-s, each other class s/(C-1).

    torch's `label_smoothing` (loss=ce loss.label_smoothing=s) instead spreads s over all C classes,
    so the true class gets 1-s+s/C. With optional class weights, each sample is weighted by its
    target class and the sum is divided by the weights' sum, as torch's weighted cross-entropy does.
    """

    def __init__(self, num_classes: int, smoothing: float = 0.1, weight: Optional[torch.Tensor] = None):
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
        true_dist = torch.full_like(log_prob, self.smoothing / (self.num_classes - 1))
        true_dist.scatter_(1, target.unsqueeze(1), 1.0 - self.smoothing)
        per_sample = -(true_dist * log_prob).sum(dim=-1)
        if self.weight is None:
            return per_sample.mean()
        w = self.weight[target]
        return (w * per_sample).sum() / w.sum()


class F1Loss(nn.Module):
    """1 - soft macro F1: precision and recall from softmax probabilities instead of hard predictions."""

    def __init__(self, num_classes: int, epsilon: float = 1e-7):
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prob = F.softmax(logits.float(), dim=-1)
        onehot = F.one_hot(target, self.num_classes).to(prob.dtype)
        tp = (onehot * prob).sum(dim=0)
        fp = ((1 - onehot) * prob).sum(dim=0)
        fn = (onehot * (1 - prob)).sum(dim=0)
        precision = tp / (tp + fp + self.epsilon)
        recall = tp / (tp + fn + self.epsilon)
        f1 = 2 * precision * recall / (precision + recall + self.epsilon)
        return 1 - f1.clamp(self.epsilon, 1 - self.epsilon).mean()


@LOSSES.register("ce")
def cross_entropy(label_smoothing: float = 0.0, weights: Any = None, *, num_classes: int, train_labels=None):
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"loss.label_smoothing={label_smoothing} is not valid; use 0 <= label_smoothing < 1")
    return nn.CrossEntropyLoss(weight=class_weights(weights, num_classes, train_labels), label_smoothing=label_smoothing)


@LOSSES.register("focal")
def focal(gamma: float = 2.0, weights: Any = None, *, num_classes: int, train_labels=None):
    return FocalLoss(gamma, class_weights(weights, num_classes, train_labels))


@LOSSES.register("label_smoothing")
def label_smoothing(smoothing: float = 0.1, weights: Any = None, *, num_classes: int, train_labels=None):
    return LabelSmoothingLoss(num_classes, smoothing, class_weights(weights, num_classes, train_labels))


@LOSSES.register("f1")
def f1(epsilon: float = 1e-7, *, num_classes: int):
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
def huber(delta: float = 1.0):
    """Quadratic within `delta` of the target, linear beyond (torch's huber_loss)."""
    if not delta > 0:
        raise UserError(f"loss.delta={delta} is not valid; use a number > 0")
    return RegressionLoss(partial(F.huber_loss, delta=delta))
