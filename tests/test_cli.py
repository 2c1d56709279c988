"""The command line through real subprocesses: train, evaluate, multirun, and the run directory contract."""

import pytest

import math
import sys
from pathlib import Path

import torch

from conftest import read_csv, read_json, run_module


def test_training_writes_the_run_directory(trained_run):
    rows = read_csv(trained_run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"epoch", "lr", "train/loss", "val/loss", "val/accuracy", "val/f1", "seconds"} <= set(rows[0])
    summary = read_json(trained_run / "summary.json")
    assert summary["status"] == "completed"
    assert summary["monitor"] == "val/f1" and summary["mode"] == "max"
    assert summary["epochs_run"] == 3
    best = max(range(3), key=lambda i: float(rows[i]["val/f1"]))
    assert summary["best_epoch"] == best + 1
    assert math.isclose(summary["best_value"], float(rows[best]["val/f1"]), rel_tol=1e-12)
    assert summary["final"]["epoch"] == 3
    assert (trained_run / ".hydra" / "config.yaml").is_file()
    assert (trained_run / "train.log").read_text().count("epoch 3/3") == 1


def test_checkpoints_load_with_weights_only(trained_run):
    summary = read_json(trained_run / "summary.json")
    best = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert best["epoch"] == summary["best_epoch"] and last["epoch"] == 3
    assert best["class_names"] == [str(i) for i in range(10)]
    assert best["config"]["loss"]["name"] == "ce"
    assert {"model", "optimizer", "scheduler", "rng", "best_value", "bad_epochs"} <= set(last)
    assert not list((trained_run / "checkpoints").glob(".tmp-*"))


def test_evaluate_reproduces_the_recorded_metrics(trained_run):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    result = run_module("trainer.evaluate", f"ckpt_path={ckpt}", cwd=trained_run)
    assert result.returncode == 0, result.stderr
    assert "val/f1" in result.stdout
    written = read_json(trained_run / "checkpoints" / "best.metrics.json")
    epoch = written["epoch"]
    row = read_csv(trained_run / "metrics.csv")[epoch - 1]
    assert written["metrics"].keys() == {"val/loss", "val/accuracy", "val/f1"}
    for key, value in written["metrics"].items():
        assert abs(value - float(row[key])) <= 1e-6, key


@pytest.mark.slow
def test_every_group_is_a_command_line_option(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli(
        "trainer", "loss=focal", "scheduler=cosine", "optimizer=sgd", "trainer.max_epochs=3", "trainer.accumulate=4",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    config = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["config"]
    assert config["loss"]["name"] == "focal" and config["optimizer"]["name"] == "sgd"
    assert config["scheduler"]["name"] == "cosine" and config["trainer"]["accumulate"] == 4
    rows = read_csv(run_dir / "metrics.csv")
    assert len(rows) == 3
    # cosine over the 3-epoch run: the learning rate falls every epoch
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] > lrs[1] > lrs[2] > 0


def test_multirun_gives_each_job_its_own_directory(cli, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("trainer", "-m", "loss=ce,focal", "scheduler=step,cosine", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        assert read_json(job / "summary.json")["status"] == "completed"
        config = torch.load(job / "checkpoints" / "best.ckpt", weights_only=True)["config"]
        seen.add((config["loss"]["name"], config["scheduler"]["name"]))
    assert seen == {("ce", "step"), ("ce", "cosine"), ("focal", "step"), ("focal", "cosine")}


@pytest.mark.slow
def test_default_run_directories_are_unique(tmp_path):
    """Two runs started together, in the same second, each get their own directory under outputs/."""
    import subprocess

    from conftest import cli_env

    args = [sys.executable, "-m", "trainer", "trainer.max_epochs=1"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 2
    for run in runs:
        assert read_json(run / "summary.json")["status"] == "completed"


def test_local_weights_file_starts_the_model(trained_run, cli, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    run_dir = tmp_path / "finetune"
    result = cli("trainer", f"model.weights={ckpt}", "trainer.max_epochs=1", "optimizer.lr=1e-6", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    # started from trained weights and barely moved: the first epoch is already as good as the source run's best
    source_best = read_json(trained_run / "summary.json")["best_value"]
    assert float(read_csv(run_dir / "metrics.csv")[0]["val/f1"]) >= source_best - 0.01


@pytest.mark.slow
def test_timm_model_by_name(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli("trainer", "model=timm", "model.name=resnet10t", "trainer.max_epochs=1", "data.batch_size=128", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    assert state["fc.weight"].shape == (10, 512)  # classes from the data
    assert state["conv1.0.weight"].shape[1] == 1  # one input channel, from the data


@pytest.mark.parametrize("args, comp_line, expected", [
    (["--help"], None, "loss: ce, f1, focal, huber, l1, label_smoothing, mse"),
    (["--cfg", "job", "loss=focal"], None, "name: focal"),
    (["-sc", "query=bash"], "trainer loss=fo", "loss=focal"),  # what tab completion asks
])
def test_start_up_answers_do_not_import_torch_timm_or_sklearn(tmp_path, args, comp_line, expected):
    code = (
        "import runpy, sys\n"
        f"sys.argv = {['trainer', *args]!r}\n"
        "try:\n    runpy.run_module('trainer', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'timm', 'sklearn', 'mlflow', 'wandb') if m in sys.modules))\n"
    )
    import subprocess

    from conftest import cli_env

    env = cli_env()
    if comp_line is not None:
        env.update(COMP_LINE=comp_line, COMP_POINT=str(len(comp_line)))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert expected in out.stdout, out.stdout + out.stderr
    assert "HEAVY []" in out.stdout


def test_the_trainer_command_completes_groups_options_and_keys(tmp_path):
    """`pip install` puts a `trainer` command beside python; Hydra's bash completion queries it."""
    import subprocess

    from conftest import cli_env

    command = Path(sys.executable).with_name("trainer")
    assert command.exists(), "pip install -e . installs the trainer command"
    for line, expected in (("trainer loss=fo", "loss=focal"), ("trainer sched", "scheduler="),
                           ("trainer scheduler=cosine scheduler.t_", "scheduler.t_max=")):
        env = dict(cli_env(), COMP_LINE=line, COMP_POINT=str(len(line)))
        out = subprocess.run([str(command), "-sc", "query=bash"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert expected in out.stdout.split(), (line, out.stdout, out.stderr)
    install = subprocess.run([str(command), "-sc", "install=bash"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert "complete -o nospace -o default -F hydra_bash_completion trainer" in install.stdout


def test_end_of_training_reports_of_the_best_epoch(trained_run):
    import csv as csv_module

    with open(trained_run / "per_class.csv", newline="") as f:
        rows = {row["class"]: row for row in csv_module.DictReader(f)}
    assert [str(c) for c in range(10)] == [name for name in rows if name.isdigit()]
    assert sum(int(rows[str(c)]["support"]) for c in range(10)) == 360
    png = (trained_run / "confusion_matrix.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    matrix = (trained_run / "confusion_matrix.csv").read_text().splitlines()
    assert len(matrix) == 11  # a header row and one row per class


@pytest.mark.slow
def test_regression_predicts_the_digit_value(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli("trainer", "task=regression", "trainer.max_epochs=4", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    summary = read_json(run_dir / "summary.json")
    assert summary["monitor"] == "val/mae" and summary["mode"] == "min"
    assert {"val/mae", "val/rmse", "val/r2"} <= set(summary["final"]) and "train/accuracy" not in summary["final"]
    assert summary["final"]["val/r2"] > 0.5  # far better than predicting the mean digit
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert state["model"]["head.1.weight"].shape == (1, 128)  # one output
    assert not (run_dir / "confusion_matrix.png").exists()
    evaluated = run_module("trainer.evaluate", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = read_json(run_dir / "checkpoints" / "best.metrics.json")["metrics"]
    row = read_csv(run_dir / "metrics.csv")[summary["best_epoch"] - 1]
    for key, value in metrics.items():
        assert abs(value - float(row[key])) <= 1e-6, key
    refused = cli("trainer", "task=regression", "loss=focal", f"hydra.run.dir={tmp_path / 'bad'}")
    assert refused.returncode == 2 and "unknown regression loss 'focal'" in refused.stderr
