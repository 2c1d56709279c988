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


def launched_by_torchrun() -> bool:
    """torchrun's variables are set (even for one process). Kept here, free of torch, for start-up speed."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join_torchrun(argv: List[str]) -> None:
    """Under torchrun every rank runs this command: they must share rank 0's run directory, and only
    rank 0 writes Hydra's files and the log file."""
    if not launched_by_torchrun():
        return
    from trainer import distributed

    if {"-m", "--multirun"} & set(argv):
        print("error: a sweep (-m) cannot run under torchrun; run each job with torchrun instead", file=sys.stderr)
        raise SystemExit(2)
    place = distributed.init_process_group()
    if value_of(argv, "hydra.run.dir") is None:
        import datetime

        now = datetime.datetime.now()
        chosen = os.path.join("outputs", now.strftime("%Y-%m-%d"), now.strftime("%H-%M-%S-%f"))
        argv.append(f"hydra.run.dir={distributed.broadcast_from_main(chosen)}")
    if not place.is_main:
        argv += ["hydra.output_subdir=null", "hydra.job_logging.root.level=WARNING", "hydra.job_logging.root.handlers=[console]"]


def print_help(argv: List[str]) -> bool:
    """`--help` from the same config and template as Hydra's, without Hydra's listing of the options of
    every group (its own included), which deep-copies the config repository once per group and takes
    seconds. Falls back to Hydra's help if the overrides do not compose."""
    if not {"--help", "-h"} & set(argv[1:]) or {"-m", "--multirun"} & set(argv[1:]):
        return False
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from trainer.config import CONF_DIR

    conf = Path(CONF_DIR)
    overrides = [arg for arg in argv[1:] if arg not in ("--help", "-h")]
    try:
        with initialize_config_dir(CONF_DIR, version_base=None):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    except Exception:
        return False
    groups = "\n".join(
        f"{folder.name}: {', '.join(sorted(p.stem for p in folder.glob('*.yaml')))}"
        for folder in sorted(conf.iterdir()) if folder.is_dir() and folder.name != "hydra"
    )
    template = cfg.hydra.help.template
    config = OmegaConf.to_yaml({key: cfg[key] for key in cfg if key != "hydra"}, resolve=False)
    text = template.replace("${hydra.help.header}", cfg.hydra.help.header).replace("${hydra.help.footer}", cfg.hydra.help.footer)
    print(text.replace("$APP_CONFIG_GROUPS", groups).replace("$CONFIG", config))
    return True


def prepare(argv: List[str]) -> None:
    if print_help(argv):
        raise SystemExit(0)
    redirect_resumed_run(argv)
    join_torchrun(argv)
    problem = output_dir_problem(argv)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
