"""torchrun: two CPU processes (gloo) against one, resume, what the ranks draw, what the records and
reports of a multi-process run are of, and its end."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env, read_csv, read_json, run_module
from image_files import write_identical_images, write_image_folder

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

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
    # a constant learning rate, so that extending the run from 2 to 3 epochs changes nothing before epoch 3;
    # dropout, so that each rank must go on with its own random streams, not rank 0's
    same = ("data.batch_size=32", "scheduler=none", "model.dropout=0.5")
    torchrun(2, tmp_path / "straight", *same, "trainer.max_epochs=3")
    torchrun(2, tmp_path / "resumed", *same, "trainer.max_epochs=2")
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


def launch(cwd, *args, nproc=2, timeout=300):
    cmd = [*TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_each_process_draws_its_own_augmentation_and_dropout(tmp_path):
    root = tmp_path / "same"
    write_identical_images(root)  # every image the same: batches differ by their augmentation alone
    script = str(Path(__file__).with_name("rank_draws.py"))
    overrides = ["data=image_folder", f"data.root={root}", "data.num_workers=2", "data.batch_size=8", "model.dropout=0.5",
                 "trainer.device=cpu"]
    draws = {}
    for name in ("first", "again", "single"):
        out = tmp_path / name
        out.mkdir()
        if name == "single":
            result = subprocess.run([sys.executable, script, str(out), *overrides], cwd=tmp_path, env=cli_env(),
                                    capture_output=True, text=True, timeout=300)
        else:
            result = launch(tmp_path, script, str(out), *overrides)
        assert result.returncode == 0, result.stderr[-3000:]
        draws[name] = [torch_load(path) for path in sorted(out.glob("rank*.pt"))]
    (rank0, rank1), single = draws["first"], draws["single"][0]
    assert not rank0["batch"].equal(rank1["batch"]), "both processes drew the same augmentations"
    assert not rank0["dropout"].equal(rank1["dropout"]), "both processes drew the same dropout masks"
    for first, again in zip(draws["first"], draws["again"]):  # reproducible, rank by rank
        assert first["batch"].equal(again["batch"]) and first["dropout"].equal(again["dropout"])
    # rank 0 draws with the run's seed, as a single process does
    assert single["batch"].equal(rank0["batch"]) and single["dropout"].equal(rank0["dropout"])


def torch_load(path):
    import torch

    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_two_processes_record_what_their_checkpoints_score(tmp_path):
    """BatchNorm (the default CNN), accumulation, loader workers and an EMA chosen by: metrics.csv's rows, the
    checkpoints and the end-of-run report must all be of one model, the one evaluate rebuilds."""
    root = tmp_path / "digits"
    write_image_folder(root, per_class=12)
    run_dir = tmp_path / "run"
    result = launch(tmp_path, "-m", "trainer", "data=image_folder", f"data.root={root}", "data.num_workers=2",
                    "data.batch_size=16", "trainer.accumulate=2", "trainer.ema_decay=0.9", "monitor=val_ema/accuracy",
                    "trainer.max_epochs=3", "progress=false", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_csv(run_dir / "metrics.csv")
    best_epoch = read_json(run_dir / "summary.json")["best_epoch"]
    for name, epoch in (("best", best_epoch), ("last", 3)):
        ckpt = run_dir / "checkpoints" / f"{name}.ckpt"
        evaluated = run_module("trainer.evaluate", f"ckpt_path={ckpt}", cwd=tmp_path)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        metrics = read_json(run_dir / "checkpoints" / f"{name}.metrics.json")["metrics"]
        row = rows[epoch - 1]
        assert {key for key in metrics} == {key for key in row if "/" in key and not key.startswith("train/")}
        for key, value in metrics.items():
            if key.endswith("/loss"):
                assert abs(value - float(row[key])) <= 1e-6, (name, key, value, row[key])
            else:
                assert value == float(row[key]), (name, key, value, row[key])
    # the end-of-run report is evaluate's report of best.ckpt's chosen (EMA) weights
    assert read_json(run_dir / "per_class.json") == read_json(run_dir / "checkpoints" / "best.per_class.json")
    assert (run_dir / "confusion_matrix.csv").read_text() == (run_dir / "checkpoints" / "best.confusion_matrix.csv").read_text()


@pytest.mark.slow
def test_two_process_runs_end_cleanly_under_load(tmp_path):
    """The end of a run (report, loader workers, process group) under a busy CPU, several times over."""
    root = tmp_path / "digits"
    write_image_folder(root, per_class=6)
    images = ["data=image_folder", f"data.root={root}", "data.num_workers=2", "data.batch_size=8"]  # persistent workers
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for attempt in range(4):
            run_dir = tmp_path / f"run{attempt}"
            data = images if attempt % 2 else []
            result = launch(tmp_path, "-m", "trainer", *data, "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                            "progress=false", f"hydra.run.dir={run_dir}")
            assert result.returncode == 0, f"attempt {attempt}: " + result.stdout[-2000:] + result.stderr[-3000:]
            assert (run_dir / "confusion_matrix.png").is_file(), attempt
    finally:
        busy.kill()
        busy.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_machines_without_a_shared_disk(tmp_path):
    """Two torchrun agents, each with its own working directory: the relative run directory rank 0 chooses
    is a different folder for rank 1, as on a second machine. Only rank 0 may need the files it wrote."""
    port = str(free_port())
    agents = []
    for node in (0, 1):
        cwd = tmp_path / f"machine{node}"
        cwd.mkdir()
        cmd = [*TORCHRUN, "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
               f"--master_port={port}", "-m", "trainer", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
               "progress=false", "hydra.run.dir=run"]
        agents.append(subprocess.Popen(cmd, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [agent.communicate(timeout=300) for agent in agents]
    for agent, (out, err) in zip(agents, outputs):
        assert agent.returncode == 0, out[-2000:] + err[-3000:]
    main_run = tmp_path / "machine0" / "run"
    assert read_json(main_run / "summary.json")["status"] == "completed"
    assert (main_run / "confusion_matrix.png").is_file() and (main_run / "checkpoints" / "best.ckpt").is_file()
    assert not (tmp_path / "machine1" / "run" / "checkpoints").exists()  # rank 1 wrote nothing
