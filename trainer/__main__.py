"""`python -m trainer [overrides]`: compose the config, build the parts, run the Engine.

Heavy libraries (torch, timm, scikit-learn) are imported inside `train`, so `--help`, `--cfg job`
and shell completion answer without loading them.
"""

import math

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hydra_plugins.trainer_optuna_sweeper import register as register_optuna_sweeper
from trainer.config import register_configs
from trainer.errors import record_failed_job, reported_as_exit, summary_stamp

register_configs()
register_optuna_sweeper()


def train(cfg: DictConfig) -> float:
    import logging
    import os

    from hydra.core.hydra_config import HydraConfig

    from trainer import build
    from trainer.callbacks import run_callbacks
    from trainer.engine import Engine
    from trainer.errors import UserError

    build.check_config(cfg)
    run_dir = HydraConfig.get().runtime.output_dir
    checkpoints = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(checkpoints) and os.listdir(checkpoints):
        raise UserError(f"run directory '{run_dir}' already holds checkpoints; choose a new hydra.run.dir")
    device = build.resolve_device(cfg.trainer.device)
    build.seed_everything(cfg.seed)
    data = build.build_data(cfg, device)
    model, loss_fn = build.build_model_and_loss(cfg, data)
    optimizer, schedule = build.build_optimization(cfg, model)
    engine = Engine(
        model, loss_fn, optimizer, schedule, cfg.metric.names,
        device=device,
        max_epochs=cfg.trainer.max_epochs,
        accumulate=cfg.trainer.accumulate,
        monitor=cfg.monitor,
        mode=build.monitor_mode(cfg),
        patience=cfg.trainer.patience,
        min_delta=cfg.trainer.min_delta,
        grad_clip_norm=cfg.trainer.grad_clip_norm,
        run_dir=run_dir,
        run_info={"config": build.plain(cfg), "class_names": data.class_names},
        callbacks=run_callbacks(cfg, run_dir),
    )
    logging.getLogger("trainer").info(
        f"run directory: {run_dir}  device: {device}  train/val batches: {len(data.train_loader)}/{len(data.val_loader)}"
    )
    summary = engine.fit(data.train_loader, data.val_loader)
    return summary["best_value"]


@hydra.main(config_path="../conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> float:
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        with reported_as_exit():
            return train(cfg)
    # In a sweep one failing job must not end the others: its error goes into its summary.json
    # (the sweep table reads it) and Hydra gets NaN, which sweepers count as a failed trial.
    run_dir = HydraConfig.get().runtime.output_dir
    earlier = summary_stamp(run_dir)
    try:
        return train(cfg)
    except Exception as error:
        record_failed_job(run_dir, error, earlier, monitor=cfg.monitor, mode=cfg.mode)
        return math.nan


if __name__ == "__main__":
    main()
