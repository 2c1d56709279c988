"""The files a training run keeps in its directory: last.ckpt, best.ckpt, the top-k epoch
checkpoints, and summary.json.

The Engine decides (is this epoch the best? is the run over?); this module only writes what it was
told, each file atomically, so a crash at any moment leaves the previous version or the new one.
It does not import torch until a checkpoint is saved, so a sweep job that fails before training can
record its summary.json cheaply (`record_failed_job`).
"""

import json
import math
import os
from typing import Any, Callable, Dict, List, Optional

from trainer.errors import UserError


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: such values are written as null."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(value: Any, path: str) -> None:
    """Write to a temporary file, then rename it over `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(finite_or_none(value), f, indent=2)
    os.replace(tmp, path)


class RunFiles:
    """Checkpoints and summary of one run directory; `run_dir=None` keeps nothing (benchmarks, tests).

    `top_k` lists the kept epoch checkpoints ({"value", "epoch", "file"}, best first); it is part of
    the checkpoint itself, so a resumed run keeps ranking where it left off.
    """

    def __init__(self, run_dir: Optional[str], save_top_k: int = 0, save_checkpoints: bool = True):
        self.run_dir = run_dir
        self.save_top_k = save_top_k
        self.keeps_checkpoints = run_dir is not None and save_checkpoints
        self.top_k: List[Dict[str, Any]] = []

    def checkpoint_path(self, name: str) -> str:
        return os.path.join(self.run_dir, "checkpoints", name)

    def save(self, name: str, state: Dict[str, Any]) -> None:
        if self.keeps_checkpoints:
            from trainer.checkpointing.checkpoint import save_checkpoint  # torch

            save_checkpoint(state, self.checkpoint_path(name))

    def after_epoch(self, epoch: int, monitor: str, value: float, mode: str, improved: bool,
                    state_of: Callable[[], Dict[str, Any]], step: Optional[int] = None, save_last: bool = True) -> None:
        """Rank this validation among the top k, then write its checkpoint (if it ranks), best.ckpt (if it
        improved) and last.ckpt, and delete the epoch checkpoint that fell out of the top k.

        `state_of()` is called after the ranking, so the files written hold the new top_k. `step`: the
        optimizer step, named in the file too (runs that validate inside epochs); `save_last=False` for a
        validation inside an epoch (last.ckpt, which resume continues from, is written at epochs' ends).
        """
        if not self.keeps_checkpoints:
            return
        new_file, evicted = None, []
        if self.save_top_k > 0 and math.isfinite(value):
            at = f"epoch-{epoch:03d}" + ("" if step is None else f"-step-{step:07d}")
            name = f"{at}_{monitor.replace('/', '_')}-{value:.4f}.ckpt"
            ranked = sorted(self.top_k + [{"value": value, "epoch": epoch, "step": step, "file": name}],
                            key=lambda entry: entry["value"], reverse=mode == "max")
            self.top_k, evicted = ranked[: self.save_top_k], ranked[self.save_top_k:]
            new_file = name if any(entry["file"] == name for entry in self.top_k) else None
        state = state_of()
        if new_file is not None:
            self.save(new_file, state)
        for entry in evicted:
            path = self.checkpoint_path(entry["file"])
            if os.path.exists(path):
                os.unlink(path)
        if improved:
            self.save("best.ckpt", state)
        if save_last:
            self.save("last.ckpt", state)

    def write_summary(self, summary: Dict[str, Any]) -> None:
        if self.run_dir is not None:
            write_json(summary, os.path.join(self.run_dir, "summary.json"))


def summary_stamp(run_dir: str):
    """What summary.json in `run_dir` looks like now (None when absent): tells a file this job wrote from an older one."""
    try:
        stat = os.stat(os.path.join(run_dir, "summary.json"))
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def record_failed_job(run_dir: str, error: Exception, earlier_stamp, *, monitor: str, mode) -> None:
    """Write a sweep job's failure into its summary.json, so the sweep table lists it and the sweep goes on.

    A summary the Engine wrote during this job (status failed, epochs so far) keeps its content and
    gains the error; a job that failed before training gets a summary of its own. A summary.json
    older than this job belongs to an earlier run in the same directory and is left alone.
    """
    import logging

    log = logging.getLogger("trainer")
    if isinstance(error, UserError):
        message = str(error)
        log.error(f"error: {message}")
    else:
        message = f"{type(error).__name__}: {error}"
        log.exception(f"error: {message}")  # unexpected: the traceback goes to the job's log
    path = os.path.join(run_dir, "summary.json")
    now = summary_stamp(run_dir)
    if now is not None and now == earlier_stamp:
        log.warning(f"{path} is from an earlier run in this directory; left as it is")
        return
    if now is not None:
        with open(path) as f:
            summary = json.load(f)
    else:
        if mode is None:
            from trainer.evaluation.metrics import default_mode  # heavy (torch, scikit-learn): keeps --help fast

            mode = default_mode(monitor)
        summary = {"status": "failed", "monitor": monitor, "mode": mode, "best_epoch": None, "best_value": None,
                   "epochs_run": 0, "final": {}}
    summary.update(status="failed", error=message)
    write_json(summary, path)
