"""`python -m trainer [overrides]`: compose the config, build the parts, run the Engine.

Heavy libraries (torch, timm, scikit-learn) are imported inside `train`, so `--help`, `--cfg job`
and shell completion answer without loading them.
"""

import math
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hydra_plugins.trainer_optuna_sweeper import register as register_optuna_sweeper
from trainer.config.schema import CONF_DIR, register_configs
from trainer.engine.place import launched_by_torchrun
from trainer.engine.run_files import record_failed_job, summary_stamp
from trainer.errors import UserError, reported_as_exit
from trainer.run import command_line

register_configs()
register_optuna_sweeper()


def train(cfg: DictConfig) -> float:
    import logging
    import os
    import signal

    # heavy (torch, timm, scikit-learn): imported here so that --help answers without them
    from trainer.data.loaders import stop_workers
    from trainer.engine.resume import auto_resume_target, load_resume_state
    from trainer.engine.step_checkpoints import REQUEUE_EXIT_STATUS, StoppedToRequeue, requeue_signals, submitit_signal
    from trainer.reporting.callbacks import run_callbacks
    from trainer.run import assembly, checks

    log = logging.getLogger("trainer")
    run_dir = HydraConfig.get().runtime.output_dir
    state = None
    auto = cfg.resume == "auto"  # continue run_dir's last.ckpt if there is one, else start the run there
    if auto:
        cfg.resume = auto_resume_target(run_dir)
    if cfg.resume is not None:
        cfg, state = load_resume_state(cfg, HydraConfig.get().overrides.task, run_dir, auto=auto)
    checks.check_config(cfg)
    checks.normalise_config(cfg)  # before the config is stored in checkpoints
    checkpoints = os.path.join(run_dir, "checkpoints")
    if state is None and os.path.isdir(checkpoints) and os.listdir(checkpoints):
        raise UserError(
            f"run directory '{run_dir}' already holds checkpoints; continue it with resume={run_dir}, "
            "or choose a new hydra.run.dir"
        )
    engine, train_loader, val_loader = assembly.assemble(cfg, run_dir, run_callbacks(cfg, run_dir))
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # a trial of a pruned Optuna search reports every validation
        from hydra_plugins.trainer_optuna_sweeper.pruning import trial_pruning

        pruning = trial_pruning(HydraConfig.get(), engine.place.world_size)
        if pruning is not None:
            engine.stop_conditions.append(pruning)
    if state is not None:
        engine.load_state_dict(state)
        log.info(f"resumed from epoch {engine.epoch} of {run_dir}")
    place = engine.place
    global_batch = cfg.data.batch_size * place.world_size * cfg.trainer.accumulate
    log.info(
        f"run directory: {run_dir}  device: {engine.device}  processes: {place.world_size}  "
        f"train/val batches: {len(train_loader)}/{len(val_loader)}  global batch: {global_batch}"
    )

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        try:
            with engine.step_checkpoints.watching(*requeue_signals(cfg.trainer.checkpoint_signal)):
                summary = engine.fit(train_loader, val_loader)
        except StoppedToRequeue as stopped:
            log.warning(
                f"{stopped}: checkpoints/last.ckpt holds it; exiting with status {REQUEUE_EXIT_STATUS} (requeue me). "
                f"Continue with the same command and resume=auto, or: python -m trainer resume={run_dir}"
            )
            handler = engine.step_checkpoints.previous.get(stopped.signum)
            if stopped.signum == submitit_signal() and callable(handler):  # submitit's: requeues the job, exits
                handler(stopped.signum, None)
            raise SystemExit(REQUEUE_EXIT_STATUS) from None
        except KeyboardInterrupt:
            log.warning(
                f"interrupted in epoch {engine.epoch + 1}; checkpoints/last.ckpt holds epoch {engine.epoch}. "
                f"Continue with: python -m trainer resume={run_dir}"
            )
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise  # the sweeper decides what an interrupted job means for the sweep
            raise SystemExit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        if cfg.task == "classification":
            # heavy (torch, timm, scikit-learn): imported here so that --help answers without them
            from trainer.run.end_of_run import report_best_checkpoint

            report_best_checkpoint(engine, val_loader, run_dir, engine.run_info["class_names"], engine.place.is_main,
                                   show=HydraConfig.get().mode != RunMode.MULTIRUN, data=cfg.data)
    finally:
        stop_workers(train_loader, val_loader)  # now, not during the interpreter's teardown
        for callback in engine.callbacks:  # trackers upload the reports written above and close their runs
            callback.on_run_end(engine)
    return summary["best_value"]


@hydra.main(config_path=CONF_DIR, config_name="train", version_base=None)
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


def run() -> None:
    """`python -m trainer` and the `trainer` command (the one shell completion works with)."""
    command_line.prepare(sys.argv)
    try:
        main()
    finally:
        if launched_by_torchrun():
            from trainer.engine.distributed import close_process_group  # torch, so only under torchrun

            close_process_group()


if __name__ == "__main__":
    run()
