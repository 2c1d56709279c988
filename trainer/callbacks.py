"""Observers of the Engine: progress bar, per-epoch log line, metrics.csv, curves.png, TensorBoard.

A callback only watches: it receives events and writes to the screen or to files, and it never
changes the run. Their order does not matter.
"""

import csv
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional

log = logging.getLogger("trainer")


class Callback:
    def on_fit_start(self, engine, train_batches: int, val_batches: int) -> None: ...
    def on_epoch_start(self, engine, epoch: int) -> None: ...
    def on_batch_end(self, engine, stage: str) -> None: ...
    def on_epoch_end(self, engine, record: Dict[str, float], improved: bool) -> None: ...
    def on_fit_end(self, engine, summary: Dict[str, Any]) -> None: ...


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


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
        reason = f" ({summary['reason']})" if summary.get("reason") else ""  # why it stopped early, or was pruned
        log.info(f"{summary['status']}: best {summary['monitor']} {best} at epoch {summary['best_epoch']}{reason}")


class CsvWriter(Callback):
    """metrics.csv: one row per epoch, flushed as soon as the epoch ends.

    At the start it rewrites the file from the engine's history, so a resumed run's file holds exactly
    the epochs of its checkpoint, whatever was written after that checkpoint before a crash.
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
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow(self._row(record))

    @staticmethod
    def _row(record: Dict[str, Any]) -> Dict[str, Any]:
        return {key: ("" if isinstance(v, float) and math.isnan(v) else v) for key, v in record.items()}


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
        self.interval = interval
        self.last_drawn = 0.0

    def on_fit_start(self, engine, train_batches, val_batches) -> None:
        self.total = train_batches + val_batches
        self.progress.start()

    def on_epoch_start(self, engine, epoch) -> None:
        description = f"epoch {epoch}/{engine.max_epochs}"
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
        from trainer.plots import draw_curves

        self.last_drawn = time.perf_counter()
        try:
            draw_curves([dict(row) for row in engine.history], engine.monitor, self.path, best_epoch=engine.best_epoch)
        except Exception as error:  # a picture is not worth a training run: warn once and go on
            self.broken = True
            log.warning(f"curves.png not drawn ({type(error).__name__}: {error}); redraw later with python -m trainer.report")


class TensorBoardWriter(Callback):
    """TensorBoard event files: every per-epoch number of metrics.csv (losses, metrics, lr) as a scalar."""

    def __init__(self, log_dir: str):
        import importlib.util

        from trainer.errors import UserError

        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("logger=tensorboard needs the tensorboard package: pip install tensorboard")
        self.log_dir = log_dir
        self.writer = None

    def on_fit_start(self, engine, train_batches, val_batches) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=self.log_dir)

    def on_epoch_end(self, engine, record, improved) -> None:
        for key, value in record.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, global_step=record["epoch"])
        self.writer.flush()  # readable while the run goes on

    def on_fit_end(self, engine, summary) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_wanted(enabled: bool) -> bool:
    """Drawn only on a terminal: logs and pipes get the per-epoch lines alone."""
    import sys

    return enabled and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def run_callbacks(cfg, run_dir: str) -> List[Callback]:
    """The observers of a training run, chosen by the config."""
    from trainer.errors import UserError
    from trainer.plots import CURVES_PNG

    callbacks: List[Callback] = [
        EpochLog(), CsvWriter(os.path.join(run_dir, "metrics.csv")), CurvesPlot(os.path.join(run_dir, CURVES_PNG))
    ]
    if progress_wanted(cfg.progress):
        callbacks.append(RichProgress())
    if cfg.logger.name == "tensorboard":
        callbacks.append(TensorBoardWriter(os.path.join(run_dir, cfg.logger.log_dir)))
    elif cfg.logger.name != "none":
        raise UserError(f"unknown logger '{cfg.logger.name}'; choose one of: none, tensorboard")
    return callbacks
