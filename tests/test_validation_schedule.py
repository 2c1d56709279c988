"""Validation when it is wanted (trainer.val_every_n_epochs, val_check_interval, max_steps) and per-step scalars
(trainer.log_every_n_steps), each checked by what a real run writes: metrics.csv, metrics_steps.csv, summary.json."""

import math
import os
import signal
import sys

import pytest
import torch

from conftest import REPO, compose_train, read_csv, read_json, run_module, schedule_rates
from trainer.engine.validation_schedule import ValidationSchedule, interval_steps
from trainer.errors import UserError
from trainer.run import assembly, checks

# 6 optimizer steps per epoch (digits: 23 batches of 64, limited to 6), one validation batch
SMALL = ["trainer.limit_train_batches=6", "trainer.limit_val_batches=1"]


def run(tmp_path, *overrides, name="run"):
    run_dir = tmp_path / name
    result = run_module("trainer", *SMALL, *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir, read_csv(run_dir / "metrics.csv"), read_json(run_dir / "summary.json")


def planned_rates(*overrides, epochs, steps_per_epoch=6):
    """The learning rate of every optimizer step, from the schedule the run's config builds (tests/conftest.py)."""
    cfg = compose_train(*SMALL, *overrides)
    optimizer, schedule = assembly.build_optimization(cfg, torch.nn.Linear(2, 2), steps_per_epoch)
    return schedule_rates(optimizer, schedule, epochs, steps_per_epoch)


# --- the schedule alone ----------------------------------------------------------------------
def test_the_schedule_validates_every_n_epochs_inside_them_and_where_the_run_ends():
    plan = ValidationSchedule(steps_per_epoch=6, max_epochs=5, every_n_epochs=2, interval=2, max_steps=27)
    assert plan.run_steps == 27 and plan.last_epoch == 5
    inside = [(epoch, window) for epoch in range(1, 6) for window in range(1, 7) if plan.validates_inside(epoch, window)]
    # epochs 2 and 4 (every 2nd) and 5 (the last), after steps 2 and 4 of each (step 6 is the epoch's end)
    assert inside == [(2, 2), (2, 4), (4, 2), (4, 4), (5, 2), (5, 4)]
    assert [plan.validates_epoch(epoch, epoch * 6) for epoch in range(1, 5)] == [False, True, False, True]
    assert plan.validates_epoch(5, 27)  # cut by max_steps: validated although 5 is odd
    assert [plan.validations_in(epoch) for epoch in range(1, 6)] == [0, 3, 0, 3, 3]
    assert not plan.run_over(4, 26) and plan.run_over(4, 27) and plan.run_over(5, 0)


@pytest.mark.parametrize("value, steps", [(None, None), (1.0, None), (0.5, 3), (0.34, 2), (0.01, 1), (1, 1), (4, 4), (6, None)])
def test_val_check_interval_as_a_share_or_a_number_of_steps(value, steps):
    assert interval_steps(value, 6) == steps  # None: only at the end of the epoch


@pytest.mark.parametrize("overrides, message", [
    (["trainer.val_check_interval=0"], "trainer.val_check_interval=0 is not valid; a number of optimizer steps must be >= 1"),
    (["trainer.val_check_interval=0.0"], "trainer.val_check_interval=0.0 is not valid; a share of an epoch must be in (0, 1]"),
    (["trainer.val_check_interval=1.5"], "trainer.val_check_interval=1.5 is not valid; a share of an epoch must be in (0, 1]"),
    (["trainer.val_check_interval=often"], "trainer.val_check_interval=often is not valid; use a float in (0, 1]"),
    (["trainer.val_every_n_epochs=0"], "trainer.val_every_n_epochs=0 is not valid; use an integer >= 1"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 is not valid; use an integer >= 1"),
    (["trainer.log_every_n_steps=-1"], "trainer.log_every_n_steps=-1 is not valid"),
    (["trainer.patience=0"], "use an integer >= 1 (validations without improvement)"),
])
def test_bad_settings_are_refused_before_any_data_is_read(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.").replace("[", r"\[")):
        checks.check_config(compose_train(*overrides))


def test_more_steps_than_an_epoch_has_and_a_warmup_past_max_steps_end_the_command(tmp_path):
    from test_bad_input import assert_refused

    result = run_module("trainer", *SMALL, "trainer.val_check_interval=7", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert result.returncode == 2
    assert_refused(result, "trainer.val_check_interval=7 is more than the 6 optimizer steps an epoch has here", "at most 6")
    assert not (tmp_path / "a" / "checkpoints").exists()
    cfg = compose_train(*SMALL, "scheduler.warmup_epochs=2", "trainer.max_steps=12")
    with pytest.raises(UserError, match=r"scheduler.warmup_epochs=2 is not valid for a run of trainer.max_steps=12"):
        assembly.build_optimization(cfg, torch.nn.Linear(2, 2), 6)


# --- real runs -------------------------------------------------------------------------------
def test_validations_inside_epochs_every_n_epochs_and_max_steps(tmp_path):
    overrides = ["trainer.max_epochs=3", "trainer.val_every_n_epochs=2", "trainer.val_check_interval=2",
                 "trainer.max_steps=16", "scheduler.interval=step", "trainer.log_every_n_steps=3",
                 "checkpoint.save_top_k=1"]
    run_dir, rows, summary = run(tmp_path, *overrides)
    # epoch 1 is not validated; epoch 2 after its steps 2 and 4 and at its end; epoch 3 (the last) after its
    # step 2, then max_steps=16 cuts it after its step 4
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(2, 8), (2, 10), (2, 12), (3, 14), (3, 16)]
    assert summary["status"] == "completed" and summary["steps_run"] == 16 and summary["epochs_run"] == 3
    assert summary["final"]["step"] == 16
    best = max(rows, key=lambda r: float(r["val/f1"]))
    assert (summary["best_epoch"], summary["best_step"]) == (int(best["epoch"]), int(best["step"]))
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["optimizer_steps"] == summary["best_step"] and ckpt["best_step"] == summary["best_step"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["optimizer_steps"] == 16 and not last["mid_epoch"]
    [top] = (run_dir / "checkpoints").glob("epoch-*.ckpt")
    assert top.name.startswith(f"epoch-{summary['best_epoch']:03d}-step-{summary['best_step']:07d}_val_f1-")

    # the LR schedule spans the 16 steps (cosine per step: from the full rate down towards 0 at step 16)
    rates = planned_rates(*overrides, epochs=3)[:16]
    assert rates[0] == pytest.approx(3e-3) and rates[15] == pytest.approx(3e-3 * (1 + math.cos(math.pi * 15 / 16)) / 2)
    # a row's lr is that of the first step since the previous row
    previous = [0] + [int(r["step"]) for r in rows[:-1]]
    assert [float(r["lr"]) for r in rows] == pytest.approx([rates[p] for p in previous], rel=1e-6)

    # per-step scalars: every 3rd optimizer step, with the lr that step used
    steps = read_csv(run_dir / "metrics_steps.csv")
    assert [int(s["step"]) for s in steps] == [3, 6, 9, 12, 15]
    assert [int(s["epoch"]) for s in steps] == [1, 1, 2, 2, 3]
    assert [float(s["lr"]) for s in steps] == pytest.approx([rates[s - 1] for s in (3, 6, 9, 12, 15)], rel=1e-6)
    assert all(math.isfinite(float(s["train/loss"])) and float(s["train/loss"]) > 0 for s in steps)
    assert all(float(s["grad_norm"]) > 0 for s in steps)


def test_early_stopping_and_plateau_count_validations_not_epochs(tmp_path):
    # min_delta=100: only the first validation is an improvement; mode=max makes every falling val/loss a bad
    # validation for plateau too (patience 0: the rate halves after each)
    run_dir, rows, summary = run(
        tmp_path, "trainer.max_epochs=5", "trainer.val_check_interval=0.34", "monitor=val/loss", "mode=max",
        "trainer.min_delta=100", "trainer.patience=3", "scheduler=plateau", "scheduler.patience=0",
        "scheduler.factor=0.5", "trainer.log_every_n_steps=0")
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(1, 2), (1, 4), (1, 6), (2, 8)]
    assert summary["status"] == "stopped_early" and summary["epochs_run"] == 2 and summary["steps_run"] == 8
    assert "for 3 validations" in summary["reason"]
    assert (summary["best_epoch"], summary["best_step"]) == (1, 2)
    assert not (run_dir / "metrics_steps.csv").exists()  # 0: off
    # torch's ReduceLROnPlateau fed the same validation values gives each row's rate
    param = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.SGD([param], lr=3e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, mode="max", factor=0.5, patience=0)
    expected = []
    for row in rows:
        expected.append(reference.param_groups[0]["lr"])
        plateau.step(float(row["val/loss"]))
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-9)
    assert len(set(expected)) > 2  # the rate did fall, more than once in one epoch's validations


# --- resume ----------------------------------------------------------------------------------
KILL_AT_SAVE = """
import os, signal, torch
_save, _calls = torch.save, [0]
def save(obj, f, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == int(os.environ["KILL_AT_SAVE"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *args, **kwargs)
torch.save = save
"""


@pytest.mark.slow
def test_resume_after_an_epoch_without_validation_matches_an_unbroken_run(tmp_path):
    """The train metrics of a record cover every step since the previous one, across a crash and resume."""
    overrides = ["trainer.deterministic=true", "trainer.max_epochs=4", "trainer.val_every_n_epochs=2",
                 "trainer.val_check_interval=3", "monitor=val/loss", "trainer.min_delta=100", "trainer.log_every_n_steps=5"]
    reference_dir, reference, _ = run(tmp_path, *overrides, name="reference")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AT_SAVE)
    # saves: last (start), last (epoch 1), best (step 9), last (epoch 2), last (epoch 3), then killed at epoch 4's
    killed = run_module("trainer", *SMALL, *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                        env_extra={"PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "KILL_AT_SAVE": "6"})
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
    refused = run_module("trainer", f"resume={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", cwd=tmp_path)
    assert refused.returncode == 2 and "was saved at a validation inside epoch 2 (optimizer step 9)" in refused.stderr
    resumed = run_module("trainer", f"resume={tmp_path / 'run'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(2, 9), (2, 12), (4, 21), (4, 24)]
    for row in (*rows, *reference):
        row.pop("seconds")
    assert rows == reference
    assert read_csv(tmp_path / "run" / "metrics_steps.csv") == read_csv(reference_dir / "metrics_steps.csv")


# --- per-step scalars without a read per step ----------------------------------------------------
@pytest.mark.parametrize("every, reads", [(4, 2), (1, 11)])
def test_per_step_scalars_are_read_from_the_device_once_every_n_steps(monkeypatch, every, reads):
    """12 optimizer steps: the rows of steps N, 2N, ... are read in one transfer each, when the next one is kept
    (the last one waits for the epoch's end); nothing else in the loop reads a tensor back per step."""
    cfg = compose_train("trainer.limit_train_batches=12", f"trainer.log_every_n_steps={every}", "trainer.device=cpu")
    delivered = []

    class Rows:
        def on_train_steps(self, engine, rows):
            delivered.extend(rows)

    engine, train_loader, _ = assembly.assemble(cfg, run_dir=None, callbacks=[Rows()])
    counts = {"tolist": 0, "item": 0}  # reads by the training loop's own modules (the data loader's aside)
    loop_files = {os.path.join(REPO, "trainer", "engine", f"{name}.py") for name in ("loop", "step_scalars", "step_totals", "validation_schedule")}

    def counted(name):
        real = getattr(torch.Tensor, name)

        def read(self):
            if os.path.abspath(sys._getframe(1).f_code.co_filename) in loop_files:
                counts[name] += 1
            return real(self)
        return read

    for name in counts:
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    engine.train_epoch(train_loader, epoch=1)
    assert counts == {"tolist": reads, "item": 2}  # item: train/loss and train/accuracy, once per epoch
    kept = [every * k for k in range(1, 12 // every + 1)] if every else []
    assert [row["step"] for row in delivered] == kept[:-1]
    assert [row["step"] for row in engine.step_scalars.flush()] == kept[-1:]
