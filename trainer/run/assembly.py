"""A training run assembled from its config, step by step: data, model and loss, placement, optimizer and
schedule, then the Engine. Each step calls down into one concern (data, parts, optim, engine) and returns.
"""

import dataclasses
import logging

import torch
from omegaconf import DictConfig

from trainer.config.registry import build
from trainer.data.batches import FixedBatches, LimitedLoader, batch_count
from trainer.data.datasets import DATASETS, DataBundle
from trainer.engine import distributed
from trainer.engine.loop import Engine
from trainer.engine.place import current_place
from trainer.engine.settings import LoopSettings
from trainer.engine.step_checkpoints import StepCheckpoints
from trainer.engine.validation_schedule import ValidationSchedule
from trainer.errors import UserError
from trainer.optim.optimizers import OPTIMIZERS
from trainer.optim.schedules import SCHEDULERS
from trainer.parts.models import build_model
from trainer.run.checks import monitor_mode, plain, task_registries
from trainer.run.environment import configure_torch, resolve_device, seed_everything


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
        steps_per_epoch=steps_per_epoch, max_steps=cfg.trainer.get("max_steps"), mode=monitor_mode(cfg),
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
        val_every_n_epochs=t.val_every_n_epochs,
        val_check_interval=t.val_check_interval,
        max_steps=t.max_steps,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
    )


def validation_plan(cfg: DictConfig, train_batches: int):
    """The loop's settings and when it validates (checks val_check_interval against the epoch's steps)."""
    loop = loop_settings(cfg)
    validations = ValidationSchedule.of(loop, train_batches)
    if loop.max_steps is not None and loop.max_steps > validations.run_steps:
        logging.getLogger("trainer").warning(
            f"warning: trainer.max_steps={loop.max_steps} is more than the {validations.run_steps} optimizer steps of "
            f"trainer.max_epochs={loop.max_epochs}; the run ends after {loop.max_epochs} epochs: raise trainer.max_epochs "
            "for a longer run")
    return loop, validations


def shard_data(cfg: DictConfig, data: DataBundle, place) -> DataBundle:
    """Under torchrun: each rank trains on its share of every epoch and validates on its share of the set."""
    if not place.launched:
        return data
    if cfg.trainer.on_nonfinite == "skip" and place.world_size > 1:
        raise UserError("trainer.on_nonfinite=skip cannot be used with several processes (their steps would diverge)")
    train, val = distributed.shard_loaders(data.train_loader, data.val_loader, place, cfg.seed)
    return dataclasses.replace(data, train_loader=train, val_loader=val)


def place_model(cfg: DictConfig, model: torch.nn.Module, device: torch.device, place):
    """The model on its device (SyncBatchNorm, memory format), its EMA, then DDP and torch.compile around it.
    Returns (the model the loop calls, the EMA or None)."""
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
    return model, ema


def seed_this_process(cfg: DictConfig, place) -> None:
    """From here on each process draws its own augmentation, dropout and mixup, reproducibly. Rank 0 goes
    on with the run's seed, so a single-process run draws exactly what it drew before."""
    if place.rank > 0:
        seed_everything(distributed.rank_seed(cfg.seed, place.rank))


def assemble(cfg: DictConfig, run_dir, callbacks=()):
    """Every part of a training run, ready for `engine.fit(train_loader, val_loader)`, step by step.

    Under torchrun the loaders are sharded, the model is wrapped in DistributedDataParallel, and only
    rank 0 gets the run directory and the callbacks: the other ranks compute and stay silent.
    """
    place = current_place()
    device = distributed.device_for(place, resolve_device(cfg.trainer.device))
    configure_torch(cfg.trainer.deterministic, device)
    seed_everything(cfg.seed)  # the same on every rank: data split and model initialisation agree
    data = shard_data(cfg, build_data(cfg, device), place)
    model, loss_fn = build_model_and_loss(cfg, data)
    model, ema = place_model(cfg, model, device, place)
    seed_this_process(cfg, place)
    train_loader, val_loader = training_loaders(cfg, data)
    loop, validations = validation_plan(cfg, len(train_loader))
    optimizer, schedule = build_optimization(cfg, model, validations.steps_per_epoch)
    engine = Engine(
        model, loss_fn, optimizer, schedule, cfg.metric.names,
        device=device,
        loop=loop,
        ema=ema,
        batch_transform=data.batch_transform and data.batch_transform.on_rank(place.rank),
        target_values=regression_targets(cfg, data),
        run_dir=run_dir if place.is_main else None,
        run_info={"config": plain(cfg), "class_names": data.class_names},
        callbacks=callbacks if place.is_main else (),
        place=place,
        step_checkpoints=StepCheckpoints(cfg.checkpoint.every_n_steps, cfg.checkpoint.every_minutes, place),
        val_ids=data.val_ids,
    )
    return engine, train_loader, val_loader
