"""Checkpoints inside an epoch (checkpoint.every_n_steps), resume=auto, trainer.checkpoint_signal and torchrun's
restarts: a run stopped anywhere continues exactly as if it had never stopped, reading no batch twice."""

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import cli_env, read_json, records_without_seconds
from image_files import write_image_folder

# Counts the images decoded for the loaders (calls of PIL.Image.open from trainer.data.images.load_image),
# in the main process and in loader workers, without product code for it: one line per read in READS_FILE.
# READ_DELAY slows each read, so that a test can stop the run in the middle of an epoch.
COUNT_READS = """
import os, sys, time
import PIL.Image
_open = PIL.Image.open
def _counted(fp, *args, **kwargs):
    if sys._getframe(1).f_code.co_name == "load_image" and os.environ.get("READS_FILE"):
        fd = os.open(os.environ["READS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (str(fp) + "\\n").encode())
        os.close(fd)
        time.sleep(float(os.environ.get("READ_DELAY", "0")))
    return _open(fp, *args, **kwargs)
PIL.Image.open = _counted
"""

BATCH = 4
# 8 images of each digit, 64 of them for training: 16 batches of 4 per epoch, a checkpoint every 5 steps
RUN = ["data=image_folder", "data.image_size=16", f"data.batch_size={BATCH}", "data.num_workers=2", "data.cache=none",
       "trainer.max_epochs=2", "checkpoint.every_n_steps=5", "trainer.deterministic=true", "progress=false",
       "resume=auto"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("step-ckpt")
    write_image_folder(root / "images", per_class=8)
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(COUNT_READS)
    return root


def env_of(images, reads, delay=0.0):
    env = cli_env()
    env.update(PYTHONPATH=os.pathsep.join([str(images / "site"), env["PYTHONPATH"]]), READS_FILE=str(reads),
               READ_DELAY=str(delay))
    return env


def command(images, run_dir):
    return [sys.executable, "-m", "trainer", *RUN, f"data.root={images / 'images'}", f"hydra.run.dir={run_dir}"]


def reads_of(path: Path) -> Counter:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def outcome(run_dir):
    """metrics.csv and summary.json without their seconds, and the final weights."""
    rows, summary = records_without_seconds(run_dir)
    return rows, summary, torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["model"]


def assert_same(run_dir, reference):
    rows, summary, weights = outcome(run_dir)
    assert rows == reference[0]
    assert summary == reference[1]
    assert weights.keys() == reference[2].keys()
    assert all(torch.equal(weights[key], reference[2][key]) for key in weights)


@pytest.fixture(scope="module")
def reference(images):
    run_dir = images / "reference"
    result = subprocess.run(command(images, run_dir), cwd=images, env=env_of(images, images / "reads-reference"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return outcome(run_dir), reads_of(images / "reads-reference")


def last_checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reads_no_batch_again(images, reference, tmp_path):
    run_dir, reads = tmp_path / "run", tmp_path / "reads-killed"
    proc = subprocess.Popen(command(images, run_dir), cwd=images, env=env_of(images, reads, delay=0.04),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # kill somewhere in epoch 1 after its first step checkpoint (step 5): the workers read up to 4 batches ahead
    kill_at = random.randint(11 * BATCH, 15 * BATCH)
    deadline = time.time() + 120
    while sum(reads_of(reads).values()) < kill_at:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
    state = last_checkpoint(run_dir)
    assert state["epoch"] == 0 and state["mid_epoch"] and state["epoch_position"] is not None
    done = state["epoch_position"]["batches_done"]
    assert done in (5, 10, 15) and state["optimizer_steps"] == done

    resumed_reads = tmp_path / "reads-resumed"
    result = subprocess.run([sys.executable, "-m", "trainer", f"resume={run_dir}"], cwd=images,
                            env=env_of(images, resumed_reads),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_same(run_dir, reference[0])
    # every image the uninterrupted run read, less those of the epoch's batches before the checkpoint: none twice
    skipped, extra = reference[1] - reads_of(resumed_reads), reads_of(resumed_reads) - reference[1]
    assert sum(extra.values()) == 0
    assert sum(skipped.values()) == done * BATCH


@pytest.mark.slow
def test_checkpoint_signal_writes_last_ckpt_exits_for_requeue_and_the_same_command_continues(images, reference, tmp_path):
    run_dir, reads = tmp_path / "run", tmp_path / "reads"
    proc = subprocess.Popen(command(images, run_dir), cwd=images, env=env_of(images, reads, delay=0.04),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while sum(reads_of(reads).values()) < 3 * BATCH:  # training has begun
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err  # REQUEUE_EXIT_STATUS
    state = last_checkpoint(run_dir)
    assert state["epoch_position"] is not None and state["epoch"] == 0
    assert 1 <= state["optimizer_steps"] < 16  # the next step boundary, not the epoch's end
    assert read_json(run_dir / "summary.json")["status"] == "interrupted"
    assert "requeue" in out + err and f"resume={run_dir}" in out + err

    result = subprocess.run(command(images, run_dir), cwd=images, env=env_of(images, tmp_path / "reads-2"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_same(run_dir, reference[0])


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# digits in memory; 2 processes x 16 = a global batch of 32: 45 steps per epoch, a checkpoint every 4
DIGITS = ["data.batch_size=16", "trainer.max_epochs=2", "checkpoint.every_n_steps=4", "trainer.deterministic=true",
          "progress=false", "resume=auto"]

# Each worker of torchrun's first attempt writes its pid to PIDS_DIR/<rank>, so that the test can kill one.
RECORD_PIDS = """
import os
if os.environ.get("PIDS_DIR") and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" and "RANK" in os.environ:
    with open(os.path.join(os.environ["PIDS_DIR"], os.environ["RANK"]), "w") as f:
        f.write(str(os.getpid()))
"""


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_ends_as_if_never_stopped(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(RECORD_PIDS)
    (tmp_path / "pids").mkdir()
    env = cli_env()
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), env["PYTHONPATH"]]), PIDS_DIR=str(tmp_path / "pids"))
    straight = subprocess.run([*TORCHRUN, "-m", "trainer", *DIGITS, f"hydra.run.dir={tmp_path / 'straight'}"],
                              cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run_dir = tmp_path / "restarted"
    proc = subprocess.Popen([*TORCHRUN, "--max-restarts=1", "-m", "trainer", *DIGITS, f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 200
    while True:  # a step checkpoint inside epoch 1, then rank 1 dies
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        try:
            position = last_checkpoint(run_dir).get("epoch_position")
        except Exception:  # not written yet
            position = None
        if position is not None:
            break
        time.sleep(0.05)
    os.kill(int((tmp_path / "pids" / "1").read_text()), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "exitcode: -9" in err  # torchrun saw the worker die, and restarted the group
    assert_same(run_dir, outcome(tmp_path / "straight"))


# --- bad input: one clear message each -------------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("checkpoint.every_n_steps=0", "checkpoint.every_n_steps=0 is not valid; use an integer >= 1"),
    ("checkpoint.every_minutes=-5", "checkpoint.every_minutes=-5.0 is not valid; use a number of minutes > 0"),
    ("trainer.checkpoint_signal=SIGFOO", "trainer.checkpoint_signal=SIGFOO is not valid; use one of: SIGUSR1"),
    ("resume=auto", "resume=auto continues the run of a fixed run directory"),
])
def test_bad_input_is_one_clear_message(cli, tmp_path, override, expected):
    result = cli("trainer", override, "trainer.max_epochs=1")
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))


def test_when_a_step_checkpoint_is_due():
    from trainer.engine.step_checkpoints import StepCheckpoints

    cpu = torch.device("cpu")
    counted = StepCheckpoints(every_n_steps=3)
    assert not StepCheckpoints().active
    assert [counted.due(step, cpu) for step in range(1, 8)] == [None, None, "save", None, None, "save", None]
    clock = StepCheckpoints(every_minutes=0.1 / 60)  # 0.1 s
    assert clock.due(1, cpu) is None
    time.sleep(0.15)
    assert clock.due(2, cpu) == "save"
    clock.saved()
    assert clock.due(3, cpu) is None
    before = signal.getsignal(signal.SIGUSR1)
    with clock.watching(signal.SIGUSR1):
        assert clock.active
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert clock.due(4, cpu) == "stop"
    assert signal.getsignal(signal.SIGUSR1) is before
