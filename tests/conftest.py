"""Shared fixtures: run the real command line in a subprocess, in a per-test directory, never online."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_module(module: str, *args: str, cwd: Path, timeout: float = 300, env_extra=None) -> subprocess.CompletedProcess:
    env = cli_env()
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def read_csv(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def records_without_seconds(run_dir: Path):
    """metrics.csv's rows and summary.json of a run, less the seconds (which no two runs share)."""
    rows = read_csv(run_dir / "metrics.csv")
    for row in rows:
        row.pop("seconds")
    summary = read_json(run_dir / "summary.json")
    summary["final"].pop("seconds")
    return rows, summary


@pytest.fixture
def cli(tmp_path):
    """cli("trainer", "loss=focal", ...) runs `python -m trainer ...` with tmp_path as working directory."""

    def run(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run_module(module, *args, cwd=tmp_path, **kwargs)

    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One real 3-epoch training run shared by the tests that only read its outputs."""
    root = tmp_path_factory.mktemp("trained")
    run_dir = root / "run"
    result = run_module("trainer", "trainer.max_epochs=3", f"hydra.run.dir={run_dir}", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


@pytest.fixture(scope="session")
def ema_run(tmp_path_factory):
    """One digits epoch that keeps a fast EMA and chooses its checkpoints by it, shared by the evaluate and
    export tests. After a single epoch the EMA still lags far behind the raw weights, so the two score very
    differently, and a use of the wrong ones shows."""
    root = tmp_path_factory.mktemp("ema_run")
    result = run_module("trainer", "trainer.max_epochs=1", "trainer.ema_decay=0.9", "monitor=val_ema/f1", "progress=false",
                        "hydra.run.dir=run", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "run"


def schedule_rates(optimizer, schedule, epochs: int, steps_per_epoch: int, monitored: float = 0.0) -> list:
    """The learning rate of every optimizer step of `epochs` epochs, the schedule stepped as Engine.fit and
    train_epoch step it (after each optimizer step, and after each epoch with the monitored value)."""
    import warnings

    rates = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        for _ in range(epochs):
            for _ in range(steps_per_epoch):
                rates.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                schedule.after_optimizer_step()
            schedule.after_epoch(monitored)
    return rates


def compose_train(*overrides: str):
    """The real train config, composed in-process with Hydra (no run directory, no subprocess)."""
    from hydra import compose, initialize_config_dir

    from trainer.config.schema import register_configs

    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        return compose("train", overrides=["progress=false", *overrides])


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory):
    """One real sweep of 1-epoch jobs shared by the sweep and report tests: three learning rates, one of
    them invalid (its two jobs fail at run time, after composition), times two seeds."""
    root = tmp_path_factory.mktemp("sweep")
    sweep_dir = root / "sweep"
    result = run_module(
        "trainer", "-m", "optimizer.lr=0.003,0.01,-1", "seed=0,1", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep_dir}",
        cwd=root,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return sweep_dir, result
