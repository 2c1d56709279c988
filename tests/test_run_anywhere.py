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


SAME = ("model.dropout=0", "scheduler=none")  # a constant rate: a run of 1 epoch extended to 2 is a run of 2


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, no loader workers, global batch 16, 2 epochs; its image folder."""
    tmp_path = tmp_path_factory.mktemp("reference")
    folder = tmp_path / "images"
    write_image_folder(folder, per_class=9)
    return train(tmp_path, "one", folder, *SAME, "data.num_workers=0", "data.batch_size=16", "trainer.max_epochs=2"), folder


def train(tmp_path, name, folder, *overrides, nproc=None):
    run_dir = tmp_path / name
    args = [*FOLDER, f"data.root={folder}", f"hydra.run.dir={run_dir}", *overrides]
    if nproc is None:
        result = run_module("trainer", *args, cwd=tmp_path)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "trainer", *args]
        result = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return without_seconds(read_csv(run_dir / "metrics.csv"))


def without_seconds(rows):
    for row in rows:
        row.pop("seconds")
    return rows


@pytest.mark.slow
def test_two_processes_with_workers_train_as_one_at_the_same_global_batch(tmp_path, one_process):
    one, folder = one_process
    two = train(tmp_path, "two", folder, *SAME, "data.num_workers=2", "data.batch_size=8", "trainer.max_epochs=2", nproc=2)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert (a["epoch"], a["step"], a["lr"]) == (b["epoch"], b["step"], b["lr"])
        for key in ("train/loss", "val/loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), key
        for key in ("train/accuracy", "val/accuracy", "val/f1"):
            assert a[key] == b[key], key


@pytest.mark.slow
def test_workers_and_resuming_change_nothing(tmp_path, one_process):
    # (that the step's own draws, dropout, do not depend on where samples are loaded: tests/test_sampling.py)
    straight, folder = one_process
    train(tmp_path, "resumed", folder, *SAME, "data.num_workers=2", "data.batch_size=16", "trainer.max_epochs=1")
    result = run_module("trainer", f"resume={tmp_path / 'resumed'}", "trainer.max_epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = without_seconds(read_csv(tmp_path / "resumed" / "metrics.csv"))
    assert [row["epoch"] for row in resumed] == ["1", "2"]
    assert resumed == straight
