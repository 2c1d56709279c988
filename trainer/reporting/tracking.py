"""What the experiment trackers (logger=mlflow, logger=wandb) share: the run's context, its files and state.

A tracker is a callback (trainer/callbacks.py) that mirrors a run into an outside service. The run's own
files stay the record: a tracker that fails during training warns once and falls silent, it never ends
the run. The tracker runs' ids are kept in <run dir>/tracking.json, so `resume=` continues the same runs.
MLflow and W&B are optional extras: they are imported only by the tracker that needs them. (The trackers
import this module; callbacks.run_callbacks imports them: no module here imports a tracker.)
"""

import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Dict, List, Optional
from urllib.parse import urlsplit

from trainer.engine.hooks import Callback
from trainer.errors import UserError

log = logging.getLogger("trainer")
STATE_FILE = "tracking.json"  # {"mlflow": {"tracking_uri", "experiment_id", "run_id"}, "wandb": {"id", ...}}
# What a tracker uploads when the run ends, if the run wrote it (the per-class reports: classification only).
RUN_FILES = ("curves.png", "summary.json", "metrics.csv", "per_class.csv", "per_class.json",
             "confusion_matrix.csv", "confusion_matrix.png")
CHECKPOINT = os.path.join("checkpoints", "best.ckpt")
TAG_LENGTH = 8000  # MLflow's limit on a tag's value
PIP_EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}  # import name -> the extra of pyproject.toml


class Tracker(Callback):
    """A callback of the Engine (the events of engine.hooks.Callback)."""


@dataclass
class RunContext:
    """Where and how this run was started: what a tracker names, tags and groups it by."""

    run_dir: str  # absolute
    cwd: str  # the working directory the command was started in (Hydra does not change it, but may)
    overrides: List[str]  # the command line's overrides (Hydra's task overrides)
    sweep_dir: Optional[str]  # absolute, for a job of a sweep (-m)
    job: Optional[int]
    resumed: bool

    @property
    def name(self) -> str:
        return os.path.relpath(self.run_dir, self.cwd)


def run_context(cfg, run_dir: str) -> RunContext:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
    except (ImportError, ValueError):  # not started by Hydra (a test, a script)
        return RunContext(os.path.abspath(run_dir), os.getcwd(), [], None, None, cfg.get("resume") is not None)
    cwd = hydra.runtime.cwd
    sweep = hydra.mode == RunMode.MULTIRUN
    return RunContext(
        run_dir=os.path.abspath(run_dir), cwd=cwd, overrides=list(hydra.overrides.task),
        sweep_dir=os.path.abspath(os.path.join(cwd, hydra.sweep.dir)) if sweep else None,
        job=hydra.job.num if sweep else None, resumed=cfg.get("resume") is not None,
    )


def flat_params(cfg) -> Dict[str, str]:
    """The resolved config as `section.key` -> value (strings as they are, the rest as JSON: true, null,
    [1, 2]), `resume` left out (it differs between a run and its continuation, which share the params)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    flat: Dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node if isinstance(node, str) else json.dumps(node)

    walk("", {key: value for key, value in plain.items() if key != "resume"})
    return flat


def numbers(record: Dict[str, Any]) -> Dict[str, float]:
    """A record's numbers but its position (epoch, step): losses, metrics, lr, seconds."""
    return {key: float(value) for key, value in record.items()
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)}


def step_numbers(row: Dict[str, Any]) -> Dict[str, float]:
    """A per-step row's numbers (train/loss, lr, grad_norm of one optimizer step) under the names TensorBoard gives
    them: step/train_loss, step/lr, step/grad_norm (apart from the validations' train/loss and lr)."""
    return {"step/" + key.replace("/", "_"): value for key, value in numbers(row).items()}


def record_step(record: Dict[str, Any]) -> int:
    """The step a record is logged at: its optimizer step when it carries one (a validation inside an epoch),
    else its epoch."""
    return int(record["step"] if "step" in record else record["epoch"])


def override_tags(overrides: List[str]) -> Dict[str, str]:
    """`overrides`: the command line's overrides as given; `override.<key>`: each one's value (keys a tag may have)."""
    tags = {"overrides": " ".join(overrides)[:TAG_LENGTH]}
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if re.fullmatch(r"[\w\-./ ]+", key):
            tags[f"override.{key}"] = value[:TAG_LENGTH]
    return tags


def run_files(run_dir: str, with_checkpoint: bool) -> List[str]:
    """The files of the run to upload at its end: those it wrote, relative to the run directory."""
    names = list(RUN_FILES) + ([CHECKPOINT] if with_checkpoint else [])
    return [name for name in names if os.path.isfile(os.path.join(run_dir, name))]


def read_state(run_dir: str) -> Dict[str, Any]:
    path = os.path.join(run_dir, STATE_FILE)
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning(f"{path} unreadable ({error}); the trackers start new runs")
        return {}
    return state if isinstance(state, dict) else {}


def write_state(run_dir: str, tracker: str, value: Dict[str, Any]) -> None:
    """Record one tracker's run in tracking.json (atomically: a crash leaves the old file or the new one)."""
    state = read_state(run_dir)
    state[tracker] = value
    path = os.path.join(run_dir, STATE_FILE)
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(temporary, path)


def require(package: str, logger: str) -> None:
    """One clear message naming the pip extra when an optional tracker library is not installed."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        extra = PIP_EXTRAS[package]
        raise UserError(f"logger={logger} needs the {package} package, which is not installed: "
                        f"pip install -e '.[{extra}]' (the '{extra}' extra), or pip install '{package}'")


def unreachable(url: str, timeout: float = 3.0) -> Optional[str]:
    """Why an http(s) URL's server cannot be reached (one TCP connection, `timeout` seconds), or None. Other
    schemes are not probed: their client says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{type(error).__name__}: {error}"


def logger_settings(cfg) -> Dict[str, Any]:
    """The chosen loggers, name -> settings. A config stored by an older version (`logger.name`, its keys
    beside it) reads as the same choice."""
    logger = cfg.get("logger")
    if logger is None or not hasattr(logger, "items"):
        return {}
    if "name" in logger:
        name = logger.name
        return {} if name == "none" else {name: {key: value for key, value in logger.items() if key != "name"}}
    return dict(logger.items())
