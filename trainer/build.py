"""Turn a composed config into the parts of a run: checks first, then data, model, loss, optimizer, schedule."""

import logging
import math
import os
import random
from typing import Any, Dict

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from trainer.batches import FixedBatches, LimitedLoader, batch_count
from trainer.data import DATASETS, DataBundle
from trainer.engine import LoopSettings
from trainer.errors import UserError
from trainer.losses import LOSSES, REGRESSION_LOSSES
from trainer.metrics import METRICS, REGRESSION_METRICS, default_mode
from trainer.models import build_model
from trainer.optim import OPTIMIZERS, SCHEDULERS, check_rates, check_schedule
from trainer.registry import build


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
        raise UserError(f"trainer.patience={t.patience} is not valid; use an integer >= 1, or null for no early stopping")
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


def configure_torch(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels when asked (bit-identical reruns); otherwise let cuDNN pick the fastest ones."""
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if deterministic != torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic)  # imports torch._dynamo: 2 s, so only when it changes


# Config keys of the image datasets that hold paths, and those that must be given.
DATA_PATH_KEYS = ("root", "val_root", "csv", "val_csv", "image_dir", "cache_dir")
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


def regression_targets(cfg: DictConfig, data: DataBundle):
    """For task=regression: the numeric value of each class name (the digit of digits), indexed by label."""
    if cfg.get("task", "classification") != "regression":
        return None
    try:
        return torch.tensor([float(name) for name in data.class_names])
    except ValueError:
        raise UserError(
            f"task=regression needs labels that are numbers; these are not: {', '.join(data.class_names[:5])}"
        ) from None


def build_model_and_loss(cfg: DictConfig, data: DataBundle):
    regression = cfg.get("task", "classification") == "regression"
    outputs = 1 if regression else data.num_classes
    model = build_model(plain(cfg.model), in_chans=data.in_chans, num_classes=outputs)
    losses, _ = task_registries("regression" if regression else "classification")
    loss_fn = build(losses, plain(cfg.loss), num_classes=data.num_classes, train_labels=data.train_labels)
    return model, loss_fn


def training_loaders(cfg: DictConfig, data: DataBundle):
    """The loaders the loop runs over, after the debugging controls (fast_dev_run, limits, overfit_batches)."""
    t = cfg.trainer
    if t.overfit_batches:
        fixed = FixedBatches(data.train_loader, t.overfit_batches)
        return fixed, fixed
    train_limit, val_limit = (1, 1) if t.fast_dev_run else (t.limit_train_batches, t.limit_val_batches)
    train = data.train_loader
    val = data.val_loader
    train_count = batch_count(train_limit, len(train), "trainer.limit_train_batches")
    val_count = batch_count(val_limit, len(val), "trainer.limit_val_batches")
    if train_count < len(train):
        train = LimitedLoader(train, train_count)
    if val_count < len(val):
        val = LimitedLoader(val, val_count)
    return train, val


def prepare_model(cfg: DictConfig, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.preserve_format
    return model.to(device=device, memory_format=memory_format)


def build_ema(cfg: DictConfig, model: torch.nn.Module):
    if cfg.trainer.ema_decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.trainer.ema_decay)


def build_optimization(cfg: DictConfig, model: torch.nn.Module, steps_per_epoch: int):
    optimizer = build(OPTIMIZERS, plain(cfg.optimizer), model=model)
    schedule = build(
        SCHEDULERS, plain(cfg.scheduler), optimizer=optimizer, max_epochs=cfg.trainer.max_epochs,
        steps_per_epoch=steps_per_epoch, mode=monitor_mode(cfg),
    )
    return optimizer, schedule


def loop_settings(cfg: DictConfig) -> LoopSettings:
    t = cfg.trainer
    return LoopSettings(
        max_epochs=1 if t.fast_dev_run else t.max_epochs,
        accumulate=t.accumulate,
        precision=str(t.precision),
        grad_clip_norm=t.grad_clip_norm,
        grad_clip_value=t.grad_clip_value,
        channels_last=t.channels_last,
        on_nonfinite=t.on_nonfinite,
        monitor=cfg.monitor,
        mode=monitor_mode(cfg),
        patience=t.patience,
        min_delta=t.min_delta,
        save_top_k=cfg.checkpoint.save_top_k,
        save_checkpoints=not t.fast_dev_run,
    )


def assemble(cfg: DictConfig, run_dir, callbacks=()):
    """Every part of a training run, ready for `engine.fit(train_loader, val_loader)`.

    Under torchrun the loaders are sharded, the model is wrapped in DistributedDataParallel, and only
    rank 0 gets the run directory and the callbacks: the other ranks compute and stay silent.
    """
    import dataclasses

    from trainer import distributed
    from trainer.engine import Engine

    place = distributed.current_place()
    device = distributed.device_for(place, resolve_device(cfg.trainer.device))
    configure_torch(cfg.trainer.deterministic, device)
    seed_everything(cfg.seed)  # the same on every rank: data split and model initialisation agree
    data = build_data(cfg, device)
    if place.launched:
        if cfg.trainer.on_nonfinite == "skip" and place.world_size > 1:
            raise UserError("trainer.on_nonfinite=skip cannot be used with several processes (their steps would diverge)")
        train, val = distributed.shard_loaders(data.train_loader, data.val_loader, place, cfg.seed)
        data = dataclasses.replace(data, train_loader=train, val_loader=val)
    model, loss_fn = build_model_and_loss(cfg, data)
    if cfg.trainer.sync_batchnorm and place.world_size > 1:
        if device.type != "cuda":
            raise UserError("trainer.sync_batchnorm=true needs CUDA GPUs (torch's SyncBatchNorm does not run on CPUs)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = prepare_model(cfg, model, device)
    ema = build_ema(cfg, model)
    if place.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.trainer.compile:
        model = torch.compile(model)
    if place.rank > 0:
        # From here on each process draws its own augmentation, dropout and mixup, reproducibly. Rank 0
        # goes on with the run's seed, so a single-process run draws exactly what it drew before.
        seed_everything(distributed.rank_seed(cfg.seed, place.rank))
    train_loader, val_loader = training_loaders(cfg, data)
    optimizer, schedule = build_optimization(cfg, model, math.ceil(len(train_loader) / cfg.trainer.accumulate))
    engine = Engine(
        model, loss_fn, optimizer, schedule, cfg.metric.names,
        device=device,
        loop=loop_settings(cfg),
        ema=ema,
        mixup=getattr(data, "mixup", None),
        target_values=regression_targets(cfg, data),
        run_dir=run_dir if place.is_main else None,
        run_info={"config": plain(cfg), "class_names": data.class_names},
        callbacks=callbacks if place.is_main else (),
        place=place,
    )
    return engine, train_loader, val_loader
