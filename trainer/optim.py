"""Optimizers and learning-rate schedules over torch.optim, as registry options."""

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from trainer.errors import UserError
from trainer.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> List[Dict[str, Any]]:
    """Weight decay on weight matrices and kernels only: biases and norm scales (1-d) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _check(lr: float, weight_decay: float) -> None:
    if not lr > 0:
        raise UserError(f"optimizer.lr={lr} is not valid; the learning rate must be > 0")
    if weight_decay < 0:
        raise UserError(f"optimizer.weight_decay={weight_decay} is not valid; use a number >= 0")


@OPTIMIZERS.register("sgd")
def sgd(lr, momentum=0.9, nesterov=True, weight_decay=0.0, decay_norm_and_bias=False, *, model):
    _check(lr, weight_decay)
    if nesterov and momentum <= 0:
        raise UserError("optimizer.nesterov=true needs optimizer.momentum > 0")
    groups = param_groups(model, weight_decay, decay_norm_and_bias)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


@OPTIMIZERS.register("adamw")
def adamw(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay_norm_and_bias=False, *, model):
    _check(lr, weight_decay)
    groups = param_groups(model, weight_decay, decay_norm_and_bias)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register("adam")
def adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decay_norm_and_bias=False, *, model):
    _check(lr, weight_decay)
    groups = param_groups(model, weight_decay, decay_norm_and_bias)
    return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register("rmsprop")
def rmsprop(lr, alpha=0.99, momentum=0.0, eps=1e-8, weight_decay=0.0, decay_norm_and_bias=False, *, model):
    _check(lr, weight_decay)
    groups = param_groups(model, weight_decay, decay_norm_and_bias)
    return torch.optim.RMSprop(groups, lr=lr, alpha=alpha, momentum=momentum, eps=eps)


class EpochSchedule:
    """Steps a torch scheduler once per epoch, after validation; ReduceLROnPlateau gets the monitored value."""

    def __init__(self, scheduler: Optional[Any] = None):
        self.scheduler = scheduler
        self.needs_metric = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def step(self, monitored: float) -> None:
        if self.scheduler is None:
            return
        if self.needs_metric:
            self.scheduler.step(monitored)
        else:
            self.scheduler.step()

    def state_dict(self) -> Dict[str, Any]:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


@SCHEDULERS.register("none")
def no_schedule():
    return EpochSchedule(None)


@SCHEDULERS.register("step")
def step(step_size=10, gamma=0.1, *, optimizer):
    if step_size < 1:
        raise UserError(f"scheduler.step_size={step_size} is not valid; use an integer >= 1 (epochs)")
    return EpochSchedule(torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma))


@SCHEDULERS.register("cosine")
def cosine(t_max=None, eta_min=0.0, *, optimizer, max_epochs):
    t_max = max_epochs if t_max is None else t_max
    if t_max < 1:
        raise UserError(f"scheduler.t_max={t_max} is not valid; use an integer >= 1 (epochs) or null")
    return EpochSchedule(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min))


@SCHEDULERS.register("plateau")
def plateau(factor=0.1, patience=3, threshold=1e-4, cooldown=0, min_lr=0.0, *, optimizer, mode):
    if not 0 < factor < 1:
        raise UserError(f"scheduler.factor={factor} is not valid; use 0 < factor < 1")
    return EpochSchedule(
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold, cooldown=cooldown, min_lr=min_lr
        )
    )
