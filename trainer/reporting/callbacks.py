"""Observers of the Engine: progress bar, per-epoch log line, metrics.csv, curves.png, TensorBoard (and the
experiment trackers of reporting/tracking.py).

A callback only watches: it receives events and writes to the screen or to files, and it never
changes the run. Their order does not matter. `on_epoch_end` comes once per validation (so once per
epoch by default; more with trainer.val_check_interval, fewer with trainer.val_every_n_epochs): its
record has the epoch and the optimizer step ("epoch", "step"). `on_train_steps` brings the per-step
scalars (trainer.log_every_n_steps) in batches, read from the device once per N steps.
"""

import csv
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional

from trainer.engine.hooks import Callback
from trainer.errors import UserError
from trainer.reporting import plots
from trainer.reporting.tables import format_value

log = logging.getLogger("trainer")

STEPS_CSV = "metrics_steps.csv"
STEP_COLUMNS = ("step", "epoch", "train/loss", "lr", "grad_norm")  # as trainer/step_scalars.py writes them


class EpochLog(Callback):
    """One line per epoch in the console and train.log."""

    def on_epoch_end(self, engine, record, improved) -> None:
        parts = [f"epoch {record['epoch']}/{engine.max_epochs}"]
        parts += [f"{key} {format_value(value)}" for key, value in record.items() if key not in ("epoch", "seconds")]
        parts.append(f"{record['seconds']:.1f}s")
        if improved:
            parts.append(f"best {engine.monitor}")
        log.info("  ".join(parts))

    def on_fit_end(self, engine, summary) -> None:
        best = "none" if summary["best_value"] is None else format_value(summary["best_value"])
        validations = getattr(engine, "validations", None)
        step = f" (optimizer step {summary['best_step']})" if validations and validations.inside_epochs else ""
        reason = f" ({summary['reason']})" if summary.get("reason") else ""  # why it stopped early, or was pruned
        log.info(f"{summary['status']}: best {summary['monitor']} {best} at epoch {summary['best_epoch']}{step}{reason}")


class CsvWriter(Callback):
    """metrics.csv: one row per validation (keyed by epoch and optimizer step), flushed at once.

    At the start it rewrites the file from the engine's history, so a resumed run's file holds exactly
    the validations of its checkpoint, whatever was written after that checkpoint before a crash. A record
    with a column the file lacks (a run resumed from an older checkpoint) rewrites it with every column.
    """

    def __init__(self, path: str):
        self.path = path
        self.columns: Optional[List[str]] = None

    def on_fit_start(self, engine, train_batches, val_batches) -> None:
        self.columns = list(engine.history[0]) if engine.history else None
        with open(self.path, "w", newline="") as f:
            if self.columns:
                writer = csv.DictWriter(f, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(self._row(record) for record in engine.history)

    def on_epoch_end(self, engine, record, improved) -> None:
        new = self.columns is None
        if new:
            self.columns = list(record)
        elif not set(record) <= set(self.columns):
            self.columns = list(dict.fromkeys([*record, *self.columns]))
            with open(self.path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(self._row(row) for row in engine.history)
            return
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow(self._row(record))

    @staticmethod
    def _row(record: Dict[str, Any]) -> Dict[str, Any]:
        return {key: ("" if isinstance(v, float) and math.isnan(v) else v) for key, v in record.items()}


class StepCsvWriter(Callback):
    """metrics_steps.csv: step, epoch, train/loss, lr, grad_norm of every N-th optimizer step
    (trainer.log_every_n_steps). The loss is that step's own (its accumulation window's), not an average;
    the lr is the one that step used; grad_norm is the gradient's total 2-norm before any clipping.
    A resumed run keeps the rows of the steps its checkpoint had taken and redoes the rest."""

    def __init__(self, path: str):
        self.path = path

    def on_fit_start(self, engine, train_batches, val_batches) -> None:
        kept = []
        if engine.optimizer_steps and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= engine.optimizer_steps]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=STEP_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def on_train_steps(self, engine, rows) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=STEP_COLUMNS).writerows(rows)


class RichProgress(Callback):
    """A rich progress bar per epoch over train and validation batches.

    Redrawn from the training thread at most every `interval` seconds, between steps: a background
    refresh thread would take the GIL away from the loop that launches the kernels.
    """

    def __init__(self, console=None, interval: float = 0.25):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            auto_refresh=False, transient=True, console=console,
        )
        self.task = None
        self.total = 0
        self.batches = (0, 0)
        self.interval = interval
        self.last_drawn = 0.0

    def on_fit_start(self, engine, train_batches, val_batches) -> None:
        self.batches = (train_batches, val_batches)
        self.progress.start()

    def on_epoch_start(self, engine, epoch) -> None:
        description = f"epoch {epoch}/{engine.max_epochs}"
        train_batches, val_batches = self.batches  # the validations this epoch will run, each over val_batches
        plan = getattr(engine, "validations", None)
        validations = plan.validations_in(epoch) if plan is not None else 1
        self.total = train_batches + val_batches * validations
        if self.task is None:
            self.task = self.progress.add_task(description, total=self.total)
        else:
            self.progress.reset(self.task, total=self.total, description=description)
        self.progress.refresh()

    def on_batch_end(self, engine, stage) -> None:
        if self.task is None:
            return
        self.progress.advance(self.task)
        now = time.perf_counter()
        if now - self.last_drawn >= self.interval:
            self.last_drawn = now
            self.progress.refresh()

    def on_fit_end(self, engine, summary) -> None:
        self.progress.stop()


class CurvesPlot(Callback):
    """curves.png of every epoch so far (a resumed run's included), kept current while the run trains.

    Drawing takes a few hundred milliseconds (a second with matplotlib's import), as long as a whole
    epoch of a small run: it is drawn every `interval` seconds, counted from the start, and always
    when the run ends, so a short run draws it once.
    """

    def __init__(self, path: str, interval: float = 30.0):
        self.path = path
        self.interval = interval
        self.last_drawn = 0.0
        self.broken = False

    def on_fit_start(self, engine, train_batches, val_batches) -> None:
        self.last_drawn = time.perf_counter()

    def on_epoch_end(self, engine, record, improved) -> None:
        if time.perf_counter() - self.last_drawn >= self.interval:
            self._draw(engine)

    def on_fit_end(self, engine, summary) -> None:
        self._draw(engine)

    def _draw(self, engine) -> None:
        if self.broken or not engine.history:
            return

        self.last_drawn = time.perf_counter()
        try:
            plots.draw_curves([dict(row) for row in engine.history], engine.monitor, self.path, best_epoch=engine.best_epoch,
                              best_step=getattr(engine, "best_step", None))
        except Exception as error:  # a picture is not worth a training run: warn once and go on
            self.broken = True
            log.warning(f"curves.png not drawn ({type(error).__name__}: {error}); redraw later with python -m trainer.report")


class TensorBoardWriter(Callback):
    """TensorBoard event files: every number of metrics.csv (losses, metrics, lr, epoch) as a scalar, and the
    per-step scalars as step/train_loss, step/lr, step/grad_norm; all over one x axis, the optimizer step."""

    def __init__(self, log_dir: str):
        import importlib.util


        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("logger=tensorboard needs the tensorboard package: pip install tensorboard")
        self.log_dir = log_dir
        self.writer = None

    def on_fit_start(self, engine, train_batches, val_batches) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=self.log_dir)

    def on_epoch_end(self, engine, record, improved) -> None:
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(key, value, global_step=record["step"])
        self.writer.flush()  # readable while the run goes on

    def on_train_steps(self, engine, rows) -> None:
        for row in rows:
            for key, tag in (("train/loss", "step/train_loss"), ("lr", "step/lr"), ("grad_norm", "step/grad_norm")):
                self.writer.add_scalar(tag, row[key], global_step=row["step"])

    def on_fit_end(self, engine, summary) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_wanted(enabled: bool) -> bool:
    """Drawn only on a terminal: logs and pipes get the per-epoch lines alone."""
    import sys

    return enabled and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def run_callbacks(cfg, run_dir: str) -> List[Callback]:
    """The observers of a training run, chosen by the config."""
    from trainer.reporting.tracking import logger_settings  # no tracker's library yet: imported when chosen

    callbacks: List[Callback] = [
        EpochLog(), CsvWriter(os.path.join(run_dir, "metrics.csv")), CurvesPlot(os.path.join(run_dir, plots.CURVES_PNG))
    ]
    if cfg.trainer.log_every_n_steps:
        callbacks.append(StepCsvWriter(os.path.join(run_dir, STEPS_CSV)))
    if progress_wanted(cfg.progress):
        callbacks.append(RichProgress())
    chosen = logger_settings(cfg)
    # trackers first: one that cannot start stops the run before the other callbacks have begun
    trackers, others = tracker_callbacks(cfg, chosen, run_dir)
    for name in others:
        if name != "tensorboard":
            raise UserError(f"unknown logger '{name}'; choose any of: none, tensorboard, mlflow, wandb "
                            "(several at once: logger=[tensorboard,mlflow])")
        callbacks.append(TensorBoardWriter(os.path.join(run_dir, chosen[name]["log_dir"])))
    return trackers + callbacks


def tracker_callbacks(cfg, chosen: Dict[str, Any], run_dir: str):
    """The experiment trackers among the chosen loggers (reporting/tracking.py), and the other loggers' names."""
    trackers: List[Any] = []
    if {"mlflow", "wandb"} & set(chosen):
        from trainer.reporting.tracking import run_context

        context = run_context(cfg, run_dir)
        if "mlflow" in chosen:
            from trainer.reporting.mlflow_tracker import MlflowTracker

            trackers.append(MlflowTracker(chosen["mlflow"], cfg, context))
        if "wandb" in chosen:
            from trainer.reporting.wandb_tracker import WandbTracker

            trackers.append(WandbTracker(chosen["wandb"], cfg, context))
    return trackers, [name for name in chosen if name not in ("mlflow", "wandb")]
