"""The same answer however a run is run: one process or two at the same global batch, loader workers or
none, straight through or resumed. Real runs on an image folder with augmentation on (random crops, flips,
colour jitter), whose every draw comes from the sample's position in the run (trainer.data.sampling)."""

import subprocess
import sys

import pytest

from conftest import cli_env, read_csv, run_module
from image_files import write_image_folder

# 90 images, 25 for validation: 65 to train on, so an epoch's last global batch of 16 holds 1 image: one of two
# processes has none and loads a stand-in weighted 0, the other's loss weighs double (trainer.data.sampling).
# GroupNorm, so that nothing in the model depends on how a global batch is split.
FOLDER = ["data=image_folder", "data.image_size=16", "data.channels=1", "data.val_fraction=0.275", "model.norm=group",
          "trainer.deterministic=true", "trainer.device=cpu", "progress=false"]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, per_class=9)
    return root


def train(tmp_path, name, folder, *overrides, nproc=None):
    run_dir = tmp_path / name
    args = [*FOLDER, f"data.root={folder}", f"hydra.run.dir={run_dir}", *overrides]
    if nproc is None:
        result = run_module("trainer", *args, cwd=tmp_path)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "trainer", *args]
        result = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_csv(run_dir / "metrics.csv")
    for row in rows:
        row.pop("seconds")
    return rows


@pytest.mark.slow
def test_two_processes_with_workers_train_as_one_at_the_same_global_batch(tmp_path, folder):
    same = ("model.dropout=0", "data.num_workers=2", "trainer.max_epochs=2")
    one = train(tmp_path, "one", folder, *same, "data.batch_size=16")
    two = train(tmp_path, "two", folder, *same, "data.batch_size=8", nproc=2)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert (a["epoch"], a["step"], a["lr"]) == (b["epoch"], b["step"], b["lr"])
        for key in ("train/loss", "val/loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), key
        for key in ("train/accuracy", "val/accuracy", "val/f1"):
            assert a[key] == b[key], key


@pytest.mark.slow
def test_workers_and_resuming_change_nothing(tmp_path, folder):
    # dropout: the training step's own draws must not depend on whether samples are loaded in this process;
    # a constant learning rate, so that a run of 1 epoch extended to 2 is the same run as one of 2
    same = ("model.dropout=0.3", "scheduler=none", "data.batch_size=16")
    straight = train(tmp_path, "straight", folder, *same, "data.num_workers=0", "trainer.max_epochs=2")
    train(tmp_path, "resumed", folder, *same, "data.num_workers=2", "trainer.max_epochs=1")
    result = run_module("trainer", f"resume={tmp_path / 'resumed'}", "trainer.max_epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = read_csv(tmp_path / "resumed" / "metrics.csv")
    for row in resumed:
        row.pop("seconds")
    assert [row["epoch"] for row in resumed] == ["1", "2"]
    assert resumed == straight
