"""Turn a composed config into the parts of a run: checks first, then data, model, loss, optimizer, schedule."""

import os
import random
from typing import Any, Dict

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from trainer.data import DATASETS, DataBundle
from trainer.errors import UserError
from trainer.losses import LOSSES
from trainer.metrics import METRICS, default_mode
from trainer.models import build_model
from trainer.optim import OPTIMIZERS, SCHEDULERS
from trainer.registry import build


def plain(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def monitor_mode(cfg: DictConfig) -> str:
    return cfg.mode if cfg.mode is not None else default_mode(cfg.monitor)


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before data is loaded, each with one clear message."""
    t = cfg.trainer
    if t.max_epochs < 1:
        raise UserError(f"trainer.max_epochs={t.max_epochs} is not valid; use an integer >= 1")
    if t.accumulate < 1:
        raise UserError(f"trainer.accumulate={t.accumulate} is not valid; use an integer >= 1 (1 = no accumulation)")
    if t.patience is not None and t.patience < 1:
        raise UserError(f"trainer.patience={t.patience} is not valid; use an integer >= 1, or null for no early stopping")
    if t.grad_clip_norm is not None and t.grad_clip_norm <= 0:
        raise UserError(f"trainer.grad_clip_norm={t.grad_clip_norm} is not valid; use a number > 0, or null")
    if cfg.mode not in (None, "min", "max"):
        raise UserError(f"mode={cfg.mode} is not valid; use min, max, or null (min for losses, max otherwise)")
    for name in cfg.metric.names:
        METRICS.get(name)
    LOSSES.get(cfg.loss.name)
    OPTIMIZERS.get(cfg.optimizer.name)
    SCHEDULERS.get(cfg.scheduler.name)
    DATASETS.get(cfg.data.name)
    valid = ["train/loss", "train/accuracy", "val/loss"] + [f"val/{name}" for name in cfg.metric.names]
    if cfg.monitor not in valid:
        raise UserError(f"monitor={cfg.monitor} is not produced by this run; choose one of: {', '.join(valid)}")
    resolve_device(t.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"trainer.device={name} is not valid; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but this machine has no CUDA GPU; use trainer.device=cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"trainer.device={name} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Config keys of the image datasets that hold paths, and those that must be given.
DATA_PATH_KEYS = ("root", "val_root", "csv", "val_csv", "image_dir")
REQUIRED_DATA_KEYS = {"image_folder": "root", "csv": "csv"}
INPUT_KEYS = ("image_size", "mean", "std", "interpolation", "crop_pct")


def normalise_config(cfg: DictConfig) -> None:
    """Make the config that a checkpoint stores usable on its own, from any working directory:
    data paths become absolute, and input settings left null (image size, mean, std, ...) take the
    model's defaults, so evaluate and predict use exactly the numbers training used."""
    from hydra.utils import to_absolute_path  # against the directory the run was started from

    from trainer.transforms import resolve_input

    data = cfg.data
    required = REQUIRED_DATA_KEYS.get(data.name)
    if required is not None and OmegaConf.is_missing(data, required):
        raise UserError(f"data.{required} is required with data={data.name}, e.g. data.{required}=path/to/"
                        + ("images (one sub-folder per class)" if required == "root" else "train.csv"))
    for key in DATA_PATH_KEYS:
        if key in data and data[key] is not None:
            data[key] = to_absolute_path(os.path.expanduser(data[key]))
    if "channels" in data:
        spec = resolve_input(cfg.model.name, data.channels, *(data[key] for key in INPUT_KEYS))
        for key in INPUT_KEYS:
            data[key] = list(spec[key]) if isinstance(spec[key], tuple) else spec[key]


def build_data(cfg: DictConfig, device: torch.device) -> DataBundle:
    return build(DATASETS, plain(cfg.data), seed=cfg.seed, pin_memory=device.type == "cuda", model_name=cfg.model.name)


def build_model_and_loss(cfg: DictConfig, data: DataBundle):
    model = build_model(plain(cfg.model), in_chans=data.in_chans, num_classes=data.num_classes)
    loss_fn = build(LOSSES, plain(cfg.loss), num_classes=data.num_classes, train_labels=data.train_labels)
    return model, loss_fn


def build_optimization(cfg: DictConfig, model: torch.nn.Module):
    optimizer = build(OPTIMIZERS, plain(cfg.optimizer), model=model)
    schedule = build(
        SCHEDULERS, plain(cfg.scheduler), optimizer=optimizer, max_epochs=cfg.trainer.max_epochs, mode=monitor_mode(cfg)
    )
    return optimizer, schedule
