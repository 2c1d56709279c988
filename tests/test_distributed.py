"""torchrun: two CPU processes (gloo) against one, and resume for a multi-process run."""

import subprocess
import sys

import pytest

from conftest import cli_env, read_csv, read_json

# GroupNorm and no dropout: nothing in the model depends on how the global batch is split.
SAME_MATH = ["model.norm=group", "model.dropout=0", "data.val_fraction=0.2005", "trainer.deterministic=true"]


def torchrun(nproc, run_dir, *overrides):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "trainer", *SAME_MATH, f"hydra.run.dir={run_dir}", *overrides]
    result = subprocess.run(cmd, cwd=run_dir.parent, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    torchrun(1, tmp_path / "one", "data.batch_size=64", "trainer.max_epochs=2")
    two = torchrun(2, tmp_path / "two", "data.batch_size=32", "trainer.max_epochs=2")
    assert "processes: 2" in two.stdout and "global batch: 64" in two.stdout
    one_rows, two_rows = read_csv(tmp_path / "one" / "metrics.csv"), read_csv(tmp_path / "two" / "metrics.csv")
    assert len(one_rows) == len(two_rows) == 2
    for a, b in zip(one_rows, two_rows):
        assert float(a["lr"]) == float(b["lr"])
        for key in ("train/loss", "val/loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-3), key
        for key in ("val/accuracy", "val/f1"):  # every validation image counted once, in both runs
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1 / 361 + 1e-9), key
    # rank 0 alone writes: one log line per epoch, one summary, no stray temporary files
    log = (tmp_path / "two" / "train.log").read_text()
    assert log.count("epoch 2/2") == 1
    assert read_json(tmp_path / "two" / "summary.json")["epochs_run"] == 2
    assert not list((tmp_path / "two" / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_resume_a_two_process_run(tmp_path):
    # a constant learning rate, so that extending the run from 2 to 3 epochs changes nothing before epoch 3
    torchrun(2, tmp_path / "straight", "data.batch_size=32", "scheduler=none", "trainer.max_epochs=3")
    torchrun(2, tmp_path / "resumed", "data.batch_size=32", "scheduler=none", "trainer.max_epochs=2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer",
           f"resume={tmp_path / 'resumed'}", "trainer.max_epochs=3"]
    result = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    straight, resumed = read_csv(tmp_path / "straight" / "metrics.csv"), read_csv(tmp_path / "resumed" / "metrics.csv")
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]
    for a, b in zip(straight, resumed):
        a.pop("seconds"), b.pop("seconds")
        assert a == b


def test_slurm_launcher_config_composes(cli):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = cli("trainer", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "loss=focal", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr
    launcher = result.stdout.split("  launcher:\n", 1)[1]
    for line in ("partition: gpu", "gpus_per_node: 1", "timeout_min: 240", "SlurmLauncher"):
        assert line in launcher, line
