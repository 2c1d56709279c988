"""What is done with the command line before Hydra reads it: resume redirection and an output-dir check.

Hydra creates the run directory before any of our code runs, so a directory that cannot be created
has to be caught here to end with one clear message instead of Hydra's traceback.
"""

import os
import sys
from typing import List

from trainer.resume import checkpoint_of, run_dir_of


def value_of(argv: List[str], key: str):
    values = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith(key + "=")]
    return values[-1] if values else None


def redirect_resumed_run(argv: List[str]) -> None:
    """Point Hydra at the resumed run's own directory (its .hydra/ is kept; the new one goes to .hydra/resumed)."""
    target = value_of(argv, "resume")
    if target is None or value_of(argv, "hydra.run.dir") is not None or {"-m", "--multirun"} & set(argv):
        return
    checkpoint = checkpoint_of(target)
    if os.path.isfile(checkpoint):
        argv += [f"hydra.run.dir={run_dir_of(checkpoint)}", "hydra.output_subdir=.hydra/resumed"]


def output_dir_problem(argv: List[str]):
    """Why the run or sweep directory named on the command line (or ./outputs) cannot be written, or None."""
    if {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc"} & set(argv):
        return None
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        target = value_of(argv, key)
        if target is not None:
            try:
                os.makedirs(target, exist_ok=True)
            except OSError as err:
                return f"{key}={target} cannot be created ({err.strerror}); choose a writable directory"
            if not os.access(target, os.W_OK):
                return f"{key}={target} is not writable; choose a writable directory"
            return None
    if not os.access(os.getcwd(), os.W_OK):
        return f"runs are written under ./outputs, but {os.getcwd()} is not writable; run from a writable directory or set hydra.run.dir"
    return None


def prepare(argv: List[str]) -> None:
    redirect_resumed_run(argv)
    problem = output_dir_problem(argv)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
