"""Resume after any crash, refuse unsafe checkpoints, stop on non-finite losses: each tried for real."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, cli_env, compose_train, read_csv, read_json, records_without_seconds, run_module
from trainer.engine.loop import NonFiniteLoss
from trainer.run import assembly

RUN = ["trainer.deterministic=true", "trainer.max_epochs=4", "checkpoint.save_top_k=2", "monitor=val/loss"]


def comparable(run_dir):
    rows, summary = records_without_seconds(run_dir)
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("epoch-*.ckpt"))
    return rows, summary, kept


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    result = run_module("trainer", *RUN, f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr
    return comparable(root / "run")


def start(run_dir, *extra, env_extra=None):
    env = cli_env()
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", *RUN, *extra, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_epochs(run_dir, count, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "metrics.csv"
        if path.exists() and len(path.read_text().splitlines()) > count:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the run did not reach the expected epoch in time")


def resume(run_dir, *extra):
    result = run_module("trainer", f"resume={run_dir}", *extra, cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for_epochs(run_dir, 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"python -m trainer resume={run_dir}" in out + err
    assert read_json(run_dir / "summary.json")["status"] == "interrupted"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] >= 1
    resume(run_dir)
    assert comparable(run_dir) == reference


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(2))
def test_sigkill_at_a_random_moment_then_resume(tmp_path, reference, attempt):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for_epochs(run_dir, 1 + attempt, proc)
    time.sleep(random.uniform(0, 0.4))
    proc.kill()
    proc.communicate(timeout=60)
    resume(run_dir)
    assert comparable(run_dir) == reference


KILL_DURING_SAVE = """
import os, signal, torch
_save, _calls = torch.save, [0]
def save(obj, f, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == int(os.environ["KILL_AT_SAVE"]):
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *args, **kwargs)
torch.save = save
"""


@pytest.mark.slow
def test_kill_in_the_middle_of_a_checkpoint_write(tmp_path, reference):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_DURING_SAVE)
    run_dir = tmp_path / "run"
    # saves: last (epoch 0), then per epoch best/top-k/last; the 6th is inside epoch 2's writes
    proc = start(run_dir, env_extra={"PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "KILL_AT_SAVE": "6"})
    proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # the previous one, whole
    assert last["epoch"] == 1
    resume(run_dir)
    assert comparable(run_dir) == reference
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_resume_refuses_overrides_that_change_the_run_but_extends_epochs(tmp_path, cli):
    run_dir = tmp_path / "run"
    assert cli("trainer", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}").returncode == 0
    refused = cli("trainer", f"resume={run_dir}", "loss=focal")
    assert refused.returncode == 2 and "loss=focal would change the meaning" in refused.stderr
    refused = cli("trainer", f"resume={run_dir}", "optimizer.lr=0.1")
    assert refused.returncode == 2 and "optimizer.lr=0.1" in refused.stderr
    resume(run_dir, "trainer.max_epochs=2")
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # The default cosine, planned for 1 epoch, is re-planned for 2: half the rate in epoch 2 (not its end value, 0).
    assert float(rows[1]["lr"]) == pytest.approx(float(rows[0]["lr"]) / 2)
    assert read_json(run_dir / "summary.json")["epochs_run"] == 2
    missing = cli("trainer", f"resume={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and "nowhere" in missing.stderr


class NaNAt:
    """Cross-entropy that returns NaN at one chosen step of one chosen epoch."""

    def __init__(self, loss_fn, engine_ref, epoch, step):
        self.loss_fn, self.engine_ref, self.epoch, self.step, self.calls = loss_fn, engine_ref, epoch, step, 0

    def to(self, device):
        return self

    def __call__(self, logits, targets):
        loss = self.loss_fn(logits, targets)
        engine = self.engine_ref[0]
        if torch.is_grad_enabled():
            self.calls += 1
            if engine.epoch + 1 == self.epoch and self.calls == self.step + (self.epoch - 1) * 23:
                return loss * float("nan")
        return loss


def engine_with_nan(tmp_path, *overrides):
    cfg = compose_train("trainer.max_epochs=3", *overrides)
    engine, train_loader, val_loader = assembly.assemble(cfg, run_dir=str(tmp_path))
    ref = [engine]
    engine.loss_fn = NaNAt(engine.loss_fn, ref, epoch=2, step=5)
    return engine, train_loader, val_loader


def test_nonfinite_loss_stops_the_run_and_spares_best(tmp_path):
    engine, train_loader, val_loader = engine_with_nan(tmp_path)
    with pytest.raises(NonFiniteLoss, match="epoch 2, step 5 of 23"):
        engine.fit(train_loader, val_loader)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in best["model"].values() if t.is_floating_point())
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "failed" and "epoch 2, step 5" in summary["error"]


def test_nonfinite_loss_can_be_skipped_and_counted(tmp_path):
    engine, train_loader, val_loader = engine_with_nan(tmp_path, "trainer.on_nonfinite=skip")
    summary = engine.fit(train_loader, val_loader)
    assert summary["status"] == "completed" and summary["skipped_nonfinite_steps"] == 1
    assert summary["final"]["val/accuracy"] > 0.9


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path, cli):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"model": {}, "config": Payload()}, evil)
    for module, arg in (("trainer.evaluate", f"ckpt_path={evil}"), ("trainer", f"resume={evil}"), ("trainer", f"model.weights={evil}")):
        result = cli(module, arg, f"hydra.run.dir={tmp_path / 'run'}" if module == "trainer" else "progress=false")
        assert result.returncode == 2, result.stderr
        assert "refusing to load" in result.stderr and "evil.ckpt" in result.stderr
        assert not marker.exists()


def test_weights_of_another_architecture_are_named(trained_run, cli, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    result = cli("trainer", f"model.weights={ckpt}", "model.width=16", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "do not fit this model" in result.stderr and "shape mismatches" in result.stderr
    assert "file (32, 1, 3, 3) vs model (16, 1, 3, 3)" in result.stderr


# keys the schema gained after checkpoints of earlier versions were written
ADDED_LATER = {"trainer": ("val_every_n_epochs", "val_check_interval", "max_steps", "log_every_n_steps"),
               "data": ("cache", "cache_dir")}


def test_a_stored_config_gets_only_the_keys_it_lacks():
    from trainer.config.schema import with_current_defaults

    stored = {"data": {"name": "image_folder", "root": "/d", "batch_size": 7}, "trainer": {"max_epochs": 3},
              "checkpoint": {"save_top_k": 2}, "seed": 5}
    filled = with_current_defaults(stored)
    assert filled["data"]["cache"] == "auto" and filled["data"]["cache_dir"] is None and filled["data"]["batch_size"] == 7
    assert filled["trainer"]["max_steps"] is None and filled["trainer"]["max_epochs"] == 3
    assert filled["checkpoint"] == {"save_top_k": 2, "every_n_steps": None, "every_minutes": None} and filled["seed"] == 5
    assert stored["data"] == {"name": "image_folder", "root": "/d", "batch_size": 7}  # the stored dict is not changed


def test_a_checkpoint_of_an_earlier_version_still_evaluates_and_resumes(trained_run, tmp_path):
    """A checkpoint written before keys were added to the schema is not refused for lacking them."""
    import shutil

    run_dir = tmp_path / "old_run"
    shutil.copytree(trained_run, run_dir)
    for name in ("best.ckpt", "last.ckpt"):
        path = run_dir / "checkpoints" / name
        ckpt = torch.load(path, weights_only=True)
        for section, keys in ADDED_LATER.items():
            for key in keys:
                ckpt["config"][section].pop(key, None)
        torch.save(ckpt, path)
    evaluated = run_module("trainer.evaluate", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    resumed = run_module("trainer", f"resume={run_dir}", "trainer.max_epochs=4", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [int(row["epoch"]) for row in read_csv(run_dir / "metrics.csv")] == [1, 2, 3, 4]


def test_a_cnn_saved_before_model_pools_keeps_the_layout_it_was_trained_with(tmp_path):
    """The built-in cnn's default gained a pool (model.pools=2); a checkpoint whose config has no `pools` was
    trained with one pool, and must be rebuilt that way: evaluated, it reproduces its own metrics.csv."""
    from trainer.config.schema import with_current_defaults

    assert with_current_defaults({"model": {"name": "cnn", "width": 8}})["model"] == {"name": "cnn", "width": 8, "pools": 1}
    assert with_current_defaults({"model": {"name": "cnn", "pools": 2}})["model"]["pools"] == 2
    assert "pools" not in with_current_defaults({"model": {"name": "resnet18"}})["model"]

    run_dir = tmp_path / "run"
    trained = run_module("trainer", "trainer.max_epochs=1", "model.pools=1", "model.width=8", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    ckpt_path = run_dir / "checkpoints" / "best.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["config"]["model"]["pools"]
    torch.save(ckpt, ckpt_path)
    evaluated = run_module("trainer.evaluate", f"ckpt_path={ckpt_path}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    written = read_json(run_dir / "checkpoints" / "best.metrics.json")["metrics"]
    assert written["val/accuracy"] == pytest.approx(float(read_csv(run_dir / "metrics.csv")[0]["val/accuracy"]), abs=1e-9)
