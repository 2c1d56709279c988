"""The one exception type for a user's mistake, and how entry points report it."""

import contextlib
import os
import sys


class UserError(Exception):
    """A mistake the user can fix: the message names the problem and what would be valid."""


@contextlib.contextmanager
def reported_as_exit():
    """Turn a UserError into one line on stderr and exit status 2 (full traceback with HYDRA_FULL_ERROR=1)."""
    try:
        yield
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


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
    import json
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
            from trainer.metrics import default_mode

            mode = default_mode(monitor)
        summary = {"status": "failed", "monitor": monitor, "mode": mode, "best_epoch": None, "best_value": None,
                   "epochs_run": 0, "final": {}}
    summary.update(status="failed", error=message)
    from trainer.run_files import write_json

    write_json(summary, path)
