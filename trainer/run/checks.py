"""What can be checked of a composed config before any data is read, and the config made self-sufficient.

Each check ends the run with one message naming the problem and what is valid. They know every
registry (losses, metrics, optimizers, schedules, datasets), so they live here, above the parts.
"""

import logging
import os
from typing import Any, Dict

from omegaconf import DictConfig, OmegaConf

from trainer.data.batches import batch_count
from trainer.data.datasets import DATASETS
from trainer.data.folds import check_fold_settings
from trainer.data.transforms import resolve_input
from trainer.engine.step_checkpoints import check_checkpoint_settings
from trainer.engine.validation_schedule import check_validation_settings
from trainer.errors import UserError
from trainer.evaluation.metrics import METRICS, REGRESSION_METRICS, default_mode
from trainer.optim.optimizers import OPTIMIZERS, check_rates
from trainer.optim.schedules import SCHEDULERS, check_schedule
from trainer.parts.losses import LOSSES, REGRESSION_LOSSES
from trainer.run.environment import resolve_device


def plain(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def monitor_mode(cfg: DictConfig) -> str:
    return cfg.mode if cfg.mode is not None else default_mode(cfg.monitor)


PRECISIONS = ("32", "bf16", "fp16")


TASKS = ("classification", "regression")


def task_registries(task: str):
    """The losses and metrics that fit a task: class scores, or one predicted value."""
    return (LOSSES, METRICS) if task == "classification" else (REGRESSION_LOSSES, REGRESSION_METRICS)


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before data is loaded, each with one clear message."""
    t = cfg.trainer
    if t.max_epochs < 1:
        raise UserError(f"trainer.max_epochs={t.max_epochs} is not valid; use an integer >= 1")
    if t.accumulate < 1:
        raise UserError(f"trainer.accumulate={t.accumulate} is not valid; use an integer >= 1 (1 = no accumulation)")
    if t.patience is not None and t.patience < 1:
        raise UserError(f"trainer.patience={t.patience} is not valid; use an integer >= 1 (validations without "
                        "improvement), or null for no early stopping")
    check_validation_settings(t)
    every = t.log_every_n_steps
    if every is not None and every < 0:
        raise UserError(f"trainer.log_every_n_steps={every} is not valid; use an integer >= 1 (optimizer steps), "
                        "or 0 or null for no per-step scalars")
    for key in ("grad_clip_norm", "grad_clip_value"):
        if t[key] is not None and t[key] <= 0:
            raise UserError(f"trainer.{key}={t[key]} is not valid; use a number > 0, or null")
    if t.ema_decay is not None and not 0 < t.ema_decay < 1:
        raise UserError(f"trainer.ema_decay={t.ema_decay} is not valid; use a number between 0 and 1 (e.g. 0.999), or null")
    if str(t.precision) not in PRECISIONS:
        raise UserError(f"trainer.precision={t.precision} is not valid; use one of: {', '.join(PRECISIONS)}")
    if t.on_nonfinite not in ("stop", "skip"):
        raise UserError(f"trainer.on_nonfinite={t.on_nonfinite} is not valid; use stop or skip")
    if t.overfit_batches < 0:
        raise UserError(f"trainer.overfit_batches={t.overfit_batches} is not valid; use 0 (off) or a number of batches")
    batch_count(t.limit_train_batches, 1, "trainer.limit_train_batches")
    batch_count(t.limit_val_batches, 1, "trainer.limit_val_batches")
    if cfg.checkpoint.save_top_k < 0:
        raise UserError(f"checkpoint.save_top_k={cfg.checkpoint.save_top_k} is not valid; use 0 (only best and last) or more")
    check_checkpoint_settings(cfg.checkpoint, t)
    if cfg.mode not in (None, "min", "max"):
        raise UserError(f"mode={cfg.mode} is not valid; use min, max, or null (min for losses, max otherwise)")
    check_rates(cfg.optimizer.get("lr"), cfg.optimizer.get("weight_decay", 0.0), cfg.optimizer.get("head_lr"))
    check_schedule(cfg.scheduler.get("interval", "epoch"), cfg.scheduler.get("warmup_epochs", 0), t.max_epochs)
    if cfg.task not in TASKS:
        raise UserError(f"task={cfg.task} is not valid; use one of: {', '.join(TASKS)}")
    losses, metrics = task_registries(cfg.task)
    for name in cfg.metric.names:
        metrics.get(name)
    losses.get(cfg.loss.name)
    OPTIMIZERS.get(cfg.optimizer.name)
    SCHEDULERS.get(cfg.scheduler.name)
    DATASETS.get(cfg.data.name)
    check_fold_settings(cfg.data)
    valid = monitor_choices(cfg)
    if cfg.monitor not in valid:
        raise UserError(f"monitor={cfg.monitor} is not produced by this run; choose one of: {', '.join(valid)}")
    check_smoothing(cfg)
    device = resolve_device(t.device)
    if str(t.precision) == "fp16" and device.type != "cuda":
        # torch's CPU autocast does float16 and its GradScaler("cpu") works: allowed, e.g. to try the fp16 path.
        logging.getLogger("trainer").warning(
            "warning: trainer.precision=fp16 on the CPU runs (torch's CPU autocast and GradScaler), but most CPUs "
            "have no fast float16 arithmetic: expect it many times slower than 32; train with bf16 or 32 on the CPU"
        )


def check_smoothing(cfg: DictConfig) -> None:
    """With mixup/cutmix, data.label_smoothing smooths the mixed targets (timm's Mixup) before the loss, and
    a loss with its own smoothing would smooth them a second time: refused rather than guessed."""
    data, loss = cfg.data, cfg.loss
    if not (data.get("mixup", 0) > 0 or data.get("cutmix", 0) > 0) or not data.get("label_smoothing", 0) > 0:
        return
    key = {"ce": "label_smoothing", "label_smoothing": "smoothing"}.get(loss.name)
    if key is not None and loss[key] > 0:
        raise UserError(
            f"data.label_smoothing={data.label_smoothing} smooths the mixup/cutmix targets and loss.{key}={loss[key]} "
            f"would smooth them again; set data.label_smoothing=0 to keep the loss's smoothing (on training and "
            f"validation), or loss.{key}=0 to smooth only the mixed training targets"
        )


def monitor_choices(cfg: DictConfig) -> list:
    names = ["loss"] + list(cfg.metric.names)
    choices = ["train/loss"] + (["train/accuracy"] if cfg.task == "classification" else [])
    choices += [f"val/{name}" for name in names]
    if cfg.trainer.ema_decay is not None:
        choices += [f"val_ema/{name}" for name in names]
    return choices


# Config keys of the image datasets that hold paths, and those that must be given.
DATA_PATH_KEYS = ("root", "val_root", "csv", "val_csv", "image_dir", "cache_dir")


REQUIRED_DATA_KEYS = {"image_folder": "root", "csv": "csv"}


INPUT_KEYS = ("image_size", "mean", "std", "interpolation", "crop_pct")


def normalise_config(cfg: DictConfig) -> None:
    """Make the config that a checkpoint stores usable on its own, from any working directory:
    data paths become absolute, and input settings left null (image size, mean, std, ...) take the
    model's defaults, so evaluate and predict use exactly the numbers training used."""
    from hydra.utils import to_absolute_path  # against the directory the run was started from


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

