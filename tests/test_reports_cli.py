"""Reports of a run: curves.png each epoch, TensorBoard scalars, and `python -m trainer.report` for old directories."""

import math
import shutil
import subprocess
import sys

import pytest

from conftest import cli_env, read_csv, read_json, run_module
from test_sweeps import assert_png, table_rows


def test_training_draws_curves(trained_run):
    assert_png(trained_run / "curves.png", min_size=(900, 250))


def test_report_of_a_sweep_reproduces_its_table_and_pictures(small_sweep, tmp_path):
    sweep_dir = tmp_path / "old_sweep"
    shutil.copytree(small_sweep[0], sweep_dir)
    before = {name: (sweep_dir / name).read_text() for name in ("sweep_summary.csv", "sweep_seeds.csv")}
    completed = next(r["job"] for r in read_csv(sweep_dir / "sweep_summary.csv") if r["status"] == "completed")
    for name in ("sweep_summary.csv", "sweep_seeds.csv", "sweep.png", f"{completed}/curves.png"):
        (sweep_dir / name).unlink()
    result = run_module("trainer.report", str(sweep_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = {name: (sweep_dir / name).read_text() for name in before}
    # the old sweep's own CSVs name its own directory nowhere, so they come back byte for byte
    assert after == before
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert table_rows(result.stdout) == [(int(r["rank"]), r["job"]) for r in rows]
    assert "optimizer.lr=-1.0 is not valid" in result.stdout and "over seeds" in result.stdout
    assert_png(sweep_dir / "sweep.png")
    assert_png(sweep_dir / completed / "curves.png", min_size=(900, 250))


def test_report_of_a_run_prints_its_epochs_and_redraws_curves(trained_run, tmp_path):
    run_dir = tmp_path / "old_run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / "curves.png").unlink()
    result = run_module("trainer.report", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = read_json(run_dir / "summary.json")
    lines = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in lines] == [
        f"{e}{' *' if e == summary['best_epoch'] else ''}" for e in (1, 2, 3)
    ]
    title = " ".join(result.stdout.split())  # rich may wrap the title
    assert f"completed, best val/f1 {summary['best_value']:.4f} at epoch {summary['best_epoch']}" in title
    assert_png(run_dir / "curves.png", min_size=(900, 250))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is neither a run directory"),
    (lambda p: None, "is not a directory"),
])
def test_report_refuses_what_is_neither_run_nor_sweep(tmp_path, make, message):
    target = tmp_path / "target"
    make(target)
    result = run_module("trainer.report", str(target), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_report_does_not_import_torch(trained_run, tmp_path):
    """Old runs are read back in a blink: no torch, timm or scikit-learn."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['report', {str(trained_run)!r}]\n"
        "runpy.run_module('trainer.report', run_name='__main__')\n"
        "print('HEAVY', sorted(m for m in ('torch', 'timm', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


@pytest.mark.slow
def test_tensorboard_logger_writes_every_epoch_scalar(cli, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard): logger=tensorboard untestable")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    result = cli("trainer", "logger=tensorboard", "trainer.max_epochs=2", "scheduler=step", "scheduler.step_size=1",
                 "trainer.log_every_n_steps=20", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    rows = read_csv(run_dir / "metrics.csv")
    assert {"lr", "train/loss", "train/accuracy", "val/loss", "val/f1"} <= set(events.Tags()["scalars"])
    for key in ("lr", "train/loss", "val/f1", "epoch"):  # over the optimizer step, as the per-step scalars
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [int(r["step"]) for r in rows] == [23, 46]
        assert [s.value for s in scalars] == pytest.approx([float(r[key]) for r in rows], rel=1e-6)
    lrs = [s.value for s in events.Scalars("lr")]
    assert lrs[1] == pytest.approx(lrs[0] * 0.1, rel=1e-5)  # the step schedule, as logged
    steps = read_csv(run_dir / "metrics_steps.csv")
    for key, tag in (("train/loss", "step/train_loss"), ("lr", "step/lr"), ("grad_norm", "step/grad_norm")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [int(r["step"]) for r in steps] == [20, 40]
        assert [s.value for s in scalars] == pytest.approx([float(r[key]) for r in steps], rel=1e-6)
    assert_png(run_dir / "curves.png", min_size=(900, 250))


def test_tensorboard_missing_is_one_clear_error(monkeypatch):
    import importlib.util

    from trainer.errors import UserError
    from trainer.reporting.callbacks import TensorBoardWriter

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install tensorboard"):
        TensorBoardWriter("unused")


def test_curves_of_a_loss_monitored_run_show_accuracy_beside_the_loss(tmp_path):
    from PIL import Image

    from trainer.reporting.plots import draw_curves

    rows = [{"epoch": e, "lr": 0.1 / 10 ** e, "train/loss": 1 / e, "train/accuracy": 0.5 + e / 10,
             "val/loss": math.nan if e == 2 else 1.2 / e, "val/accuracy": 0.4 + e / 10, "seconds": 1.0} for e in (1, 2, 3)]
    path = tmp_path / "curves.png"
    draw_curves(rows, "val/loss", str(path), best_epoch=3)
    assert_png(path, min_size=(900, 250))
    with Image.open(path) as image:
        assert image.size == (1300, 360)
    assert not list(tmp_path.glob("*.tmp"))


def test_curves_are_drawn_every_interval_and_when_the_run_ends(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from trainer.reporting import plots
    from trainer.reporting.callbacks import CurvesPlot

    drawn = []
    monkeypatch.setattr(plots, "draw_curves", lambda history, monitor, path, **best: drawn.append(len(history)))
    engine = SimpleNamespace(history=[], monitor="val/loss", best_epoch=None)
    for interval, expected in ((3600.0, [3]), (0.0, [1, 2, 3, 3])):
        drawn.clear()
        curves = CurvesPlot(str(tmp_path / "curves.png"), interval=interval)
        engine.history = []
        curves.on_fit_start(engine, 1, 1)
        for epoch in (1, 2, 3):
            engine.history.append({"epoch": epoch, "val/loss": 1.0 / epoch})
            curves.on_epoch_end(engine, engine.history[-1], True)
        curves.on_fit_end(engine, {})
        assert drawn == expected, interval  # a short run draws once, at its end
