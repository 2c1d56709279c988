"""Optimizers over torch.optim, as registry options: parameter groups (no decay on 1-d parameters, `head_lr`)."""

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from trainer.config.registry import Registry
from trainer.errors import UserError

OPTIMIZERS = Registry("optimizer")


def param_groups(model: nn.Module, lr: float, weight_decay: float, decay_norm_and_bias: bool,
                 head_lr: Optional[float] = None) -> List[Dict[str, Any]]:
    """Split parameters into groups: biases and norm scales (1-d) get no weight decay unless asked, and the
    classifier head (timm's `get_classifier()`) may get its own learning rate for fine-tuning."""
    head_ids = set()
    if head_lr is not None:
        if not hasattr(model, "get_classifier"):
            raise UserError("optimizer.head_lr needs a model with a classifier head (timm models and the built-in cnn have one)")
        head_ids = {id(p) for p in model.get_classifier().parameters()}
    groups: Dict[tuple, List[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        decayed = decay_norm_and_bias or p.ndim > 1
        key = (head_lr if id(p) in head_ids else lr, weight_decay if decayed else 0.0)
        groups.setdefault(key, []).append(p)
    return [{"params": params, "lr": group_lr, "weight_decay": wd} for (group_lr, wd), params in groups.items()]


def check_rates(lr: Optional[float], weight_decay: float, head_lr: Optional[float]) -> None:
    """Learning rates > 0 and weight decay >= 0 (also checked before any data is loaded)."""
    for key, value in (("lr", lr), ("head_lr", head_lr)):
        if value is not None and not value > 0:
            raise UserError(f"optimizer.{key}={value} is not valid; a learning rate must be > 0")
    if weight_decay < 0:
        raise UserError(f"optimizer.weight_decay={weight_decay} is not valid; use a number >= 0")


@OPTIMIZERS.register("sgd")
def sgd(lr, momentum, nesterov, weight_decay, decay_norm_and_bias, head_lr, *, model):
    check_rates(lr, weight_decay, head_lr)
    if nesterov and momentum <= 0:
        raise UserError("optimizer.nesterov=true needs optimizer.momentum > 0")
    groups = param_groups(model, lr, weight_decay, decay_norm_and_bias, head_lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


@OPTIMIZERS.register("adamw")
def adamw(lr, betas, eps, weight_decay, decay_norm_and_bias, head_lr, *, model):
    check_rates(lr, weight_decay, head_lr)
    groups = param_groups(model, lr, weight_decay, decay_norm_and_bias, head_lr)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register("adam")
def adam(lr, betas, eps, weight_decay, decay_norm_and_bias, head_lr, *, model):
    check_rates(lr, weight_decay, head_lr)
    groups = param_groups(model, lr, weight_decay, decay_norm_and_bias, head_lr)
    return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register("rmsprop")
def rmsprop(lr, alpha, momentum, eps, weight_decay, decay_norm_and_bias, head_lr, *, model):
    check_rates(lr, weight_decay, head_lr)
    groups = param_groups(model, lr, weight_decay, decay_norm_and_bias, head_lr)
    return torch.optim.RMSprop(groups, lr=lr, alpha=alpha, momentum=momentum, eps=eps)
