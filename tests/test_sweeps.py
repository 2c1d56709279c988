"""A real sweep ends with its table: every job listed best first, failed jobs last with their error,
the spread over seeds, and the pictures."""

import math
import re
import statistics

import pytest
from omegaconf import OmegaConf

from conftest import read_csv, read_json
from trainer.sweeps.summary import JobResult, rank, seed_groups

INVALID_LR = "optimizer.lr=-1.0 is not valid"


def table_rows(stdout: str) -> list:
    """(rank, job) of each row of the first rich table printed."""
    table = stdout.split("over seeds")[0]
    return [(int(m.group(1)), m.group(2)) for m in re.finditer(r"^│\s*(\d+)\s*│\s*(\S+)\s*│", table, re.MULTILINE)]


def assert_png(path, min_size=(300, 150)):
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size


def test_failing_jobs_do_not_stop_the_sweep(small_sweep):
    sweep_dir, _ = small_sweep
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == [str(i) for i in range(6)]
    for job in jobs:
        overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml")
        summary = read_json(job / "summary.json")
        if "optimizer.lr=-1" in overrides:
            assert summary["status"] == "failed"
            assert INVALID_LR in summary["error"]
            assert summary["best_value"] is None and summary["epochs_run"] == 0
            assert summary["monitor"] == "val/f1" and summary["mode"] == "max"
        else:
            assert summary["status"] == "completed" and "error" not in summary
            assert math.isfinite(summary["best_value"])


def test_sweep_table_lists_jobs_best_first_and_failed_last(small_sweep):
    sweep_dir, result = small_sweep
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert len(rows) == 6
    expected = []  # the order computed here from the job directories themselves
    for row in rows:
        job = sweep_dir / row["job"]
        summary = read_json(job / "summary.json")
        overrides = dict(line.split("=", 1) for line in OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        assert {key: row[key] for key in overrides} == overrides
        assert row["status"] == summary["status"]
        assert row["best_value"] == ("" if summary["best_value"] is None else repr(summary["best_value"]))
        expected.append((summary["status"] == "failed", -(summary["best_value"] or 0), int(row["job"])))
    assert [int(r["job"]) for r in rows] == [job for *_, job in sorted(expected)]
    assert [r["status"] for r in rows] == ["completed"] * 4 + ["failed"] * 2
    assert all(INVALID_LR in r["error"] for r in rows[4:]) and not any(r["error"] for r in rows[:4])
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    # the table on screen: the same rows in the same order, the failures with their error
    assert table_rows(result.stdout) == [(int(r["rank"]), r["job"]) for r in rows]
    assert result.stdout.count(INVALID_LR) >= 2


def test_seed_table_gives_mean_and_std_over_seeds(small_sweep):
    sweep_dir, result = small_sweep
    rows = read_csv(sweep_dir / "sweep_seeds.csv")
    assert [r["optimizer.lr"] for r in rows][2] == "-1"
    assert "seed" not in rows[0]
    for row in rows[:2]:
        values = []
        for job in read_csv(sweep_dir / "sweep_summary.csv"):
            if job["optimizer.lr"] == row["optimizer.lr"]:
                values.append(read_json(sweep_dir / job["job"] / "summary.json")["best_value"])
        assert row["seeds"] == "0 1" and row["n"] == "2" and row["failed"] == "0"
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert float(row["std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert float(rows[0]["mean"]) >= float(rows[1]["mean"])
    assert (rows[2]["n"], rows[2]["failed"], rows[2]["mean"]) == ("0", "2", "")
    assert "over seeds" in result.stdout


def test_sweep_and_job_pictures_are_pngs(small_sweep):
    sweep_dir, _ = small_sweep
    assert_png(sweep_dir / "sweep.png")
    for row in read_csv(sweep_dir / "sweep_summary.csv"):
        curves = sweep_dir / row["job"] / "curves.png"
        if row["status"] == "completed":
            assert_png(curves, min_size=(900, 250))
        else:  # failed before its first epoch: nothing to draw
            assert not curves.exists()


@pytest.mark.slow
def test_experiment_glob_runs_every_recipe(cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = cli("trainer", "-m", "experiment=glob(*,exclude=cv5)", "trainer.max_epochs=1", "trainer.patience=null", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert sorted(r["experiment"] for r in rows) == ["focal_cosine", "imbalanced_digits", "quick", "sgd_step"]
    assert all(r["status"] == "completed" and r["epochs_run"] == "1" for r in rows)
    configs = {r["experiment"]: OmegaConf.load(sweep_dir / r["job"] / ".hydra" / "config.yaml") for r in rows}
    assert configs["sgd_step"].optimizer.name == "sgd" and configs["sgd_step"].scheduler.name == "step"
    assert configs["focal_cosine"].loss.name == "focal" and configs["focal_cosine"].loss.weights == "balanced"
    assert configs["quick"].optimizer.name == "adamw"
    assert configs["imbalanced_digits"].data.class_fraction == {3: 0.1, 5: 0.1, 8: 0.1}


# --- ranking rules, without a sweep --------------------------------------------------------------
def job(name, value, mode="max", status="completed", **overrides):
    return JobResult(name, {key: str(v) for key, v in overrides.items()}, status, "m", mode, 1, value, 1)


def test_rank_puts_the_best_first_then_jobs_without_a_value_then_failures():
    jobs = [job("0", None, status="failed"), job("1", 0.5), job("2", 0.9), job("3", None), job("5", None, status="missing"),
            job("6", 0.9), job("7", 0.7, status="stopped_early")]
    assert [j.job for j in rank(jobs)] == ["2", "6", "7", "1", "3", "0", "5"]


def test_rank_of_minimised_jobs_puts_the_lowest_first():
    jobs = [job("0", 0.3, mode="min"), job("1", None, mode="min", status="failed"), job("2", 0.1, mode="min"), job("3", 0.2, mode="min")]
    assert [j.job for j in rank(jobs)] == ["2", "3", "0", "1"]


def test_jobs_sort_by_number_not_text():
    assert [j.job for j in rank([job("10", 0.5), job("9", 0.5), job("2", 0.5)])] == ["2", "9", "10"]


def test_seed_groups_need_two_jobs_differing_only_in_seed():
    assert seed_groups([job("0", 0.5, loss="ce"), job("1", 0.6, loss="focal")]) == []
    assert seed_groups([job("0", 0.5, seed=0, loss="ce"), job("1", 0.6, seed=0, loss="focal")]) == []
    groups = seed_groups([job("0", 0.5, seed=0, loss="ce"), job("1", 0.7, seed=1, loss="ce"),
                          job("2", 0.9, seed=0, loss="focal"), job("3", None, seed=1, loss="focal", status="failed")])
    assert [g.overrides for g in groups] == [{"loss": "focal"}, {"loss": "ce"}]
    assert groups[0].mean == 0.9 and groups[0].std is None and groups[0].failed == 1
    assert groups[1].mean == pytest.approx(0.6) and groups[1].std == pytest.approx(statistics.stdev([0.5, 0.7]))


def test_minimised_groups_rank_lowest_mean_first():
    groups = seed_groups([job(str(i), v, mode="min", seed=i % 2, lr=lr) for i, (v, lr) in enumerate([(3, 1), (3, 1), (1, 2), (2, 2)])])
    assert [g.overrides["lr"] for g in groups] == ["2", "1"]
