"""A cross-validation sweep end to end (real subprocesses): every fold job writes its out-of-fold predictions,
the sweep joins them per recipe, scores them (cv_summary.json) and ranks the recipes; trainer.report redraws it."""

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold

from conftest import read_csv, read_json, run_module
from image_files import write_csv, write_image, write_image_folder

pytestmark = pytest.mark.slow
NAMES = [str(c) for c in range(10)]


def oof_table(path):
    rows = read_csv(path)
    ids = [row.get("id", row.get("path")) for row in rows]
    folds = {i: int(row["fold"]) for i, row in zip(ids, rows)}
    return rows, ids, folds


def test_five_folds_of_two_recipes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_module("trainer", "-m", "experiment=cv5", "loss=ce,focal", "trainer.max_epochs=2",
                        "data.batch_size=32", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    target = load_digits().target
    reference = {}  # the folds as scikit-learn makes them from the dataset and the run's seed (0) alone
    for number, (_, held_out) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(target, target)):
        reference.update({str(i): number for i in held_out})
    summary = read_json(sweep_dir / "cv_summary.json")
    assert {r["overrides"]["loss"] for r in summary["recipes"]} == {"ce", "focal"}
    scores = [r["oof"]["f1"] for r in summary["recipes"]]
    assert scores == sorted(scores, reverse=True)  # ranked by the monitor, val/f1 (max)
    for recipe in summary["recipes"]:
        path = sweep_dir / recipe["oof_predictions"]
        assert path.parent.parent == sweep_dir / "cv"  # each recipe its own directory
        rows, ids, folds = oof_table(path)
        assert sorted(ids, key=int) == [str(i) for i in range(len(target))]  # every image exactly once
        assert folds == reference  # the same folds for both recipes
        assert all(row["label"] == str(target[int(row["id"])]) for row in rows)
        y_true = np.array([int(row["label"]) for row in rows])
        prob = np.array([[float(row[name]) for name in NAMES] for row in rows])
        assert (np.array([int(row["prediction"]) for row in rows]) == prob.argmax(1)).all()
        assert skm.accuracy_score(y_true, prob.argmax(1)) >= 0.97
        assert recipe["oof"]["accuracy"] == pytest.approx(skm.accuracy_score(y_true, prob.argmax(1)), abs=1e-6)
        assert recipe["oof"]["f1"] == pytest.approx(skm.f1_score(y_true, prob.argmax(1), average="macro"), abs=1e-6)
        assert recipe["oof"]["loss"] == pytest.approx(skm.log_loss(y_true, prob, labels=range(10)), rel=1e-4)
        per_fold = [skm.f1_score(y_true[f == fold], prob[f == fold].argmax(1), average="macro")
                    for f in [np.array([int(row["fold"]) for row in rows])] for fold in range(5)]
        assert recipe["fold_mean"]["f1"] == pytest.approx(np.mean(per_fold), abs=1e-6)
        assert recipe["fold_std"]["f1"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-6)
        matrix = np.loadtxt(path.parent / "oof_confusion_matrix.csv", delimiter=",", skiprows=1, usecols=range(1, 11))
        assert (matrix == skm.confusion_matrix(y_true, prob.argmax(1), labels=range(10))).all()
    table = result.stdout[result.stdout.index("cross-validation"):]
    assert table.index(f"{summary['recipes'][0]['oof']['f1']:.4f}") < table.index(f"{summary['recipes'][1]['oof']['f1']:.4f}")

    # trainer.report redraws the summary and the OOF confusion matrix from the job directories
    best = sweep_dir / summary["recipes"][0]["oof_predictions"]
    (sweep_dir / "cv_summary.json").unlink()
    (best.parent / "oof_confusion_matrix.png").unlink()
    redrawn = run_module("trainer.report", str(sweep_dir), cwd=tmp_path)
    assert redrawn.returncode == 0, redrawn.stdout + redrawn.stderr
    assert read_json(sweep_dir / "cv_summary.json") == summary
    assert (best.parent / "oof_confusion_matrix.png").stat().st_size > 0
    assert "cross-validation" in redrawn.stdout


def test_folds_of_an_image_folder_and_a_csv_with_groups(tmp_path):
    root = tmp_path / "images"
    files = write_image_folder(root, classes=(0, 1, 2), per_class=6)
    sweep_dir = tmp_path / "folder_sweep"
    result = run_module("trainer", "-m", "data=image_folder", f"data.root={root}", "data.folds=3", "data.fold=0,1,2",
                        "trainer.max_epochs=1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows, ids, folds = oof_table(sweep_dir / "oof_predictions.csv")
    written = sorted(str(p.relative_to(root)) for paths in files.values() for p in paths)
    assert sorted(ids) == written  # every image once, named by its path under data.root
    for label in ("0", "1", "2"):  # stratified: two of each class's six in each fold
        assert sorted(folds[r["path"]] for r in rows if r["label"] == label) == [0, 0, 1, 1, 2, 2]

    # a CSV whose images come in groups of three (one patient each): a group stays in one fold
    csv_rows = []
    for n in range(24):
        label = n % 2
        path = write_image(tmp_path / "csv" / "images" / f"{n:03d}", 100 + n, n)
        csv_rows.append((f"images/{path.name}", str(label), f"patient{n // 6 * 2 + label}"))
    csv_path = write_csv(tmp_path / "csv" / "train.csv", csv_rows, header=("image", "label", "patient"))
    sweep_dir = tmp_path / "csv_sweep"
    result = run_module("trainer", "-m", "data=csv", f"data.csv={csv_path}", "data.group_column=patient",
                        "data.folds=2", "data.fold=0,1", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows, ids, folds = oof_table(sweep_dir / "oof_predictions.csv")
    assert sorted(ids) == sorted(row[0] for row in csv_rows)
    group_of = {row[0]: row[2] for row in csv_rows}
    for group in set(group_of.values()):
        assert len({folds[i] for i in ids if group_of[i] == group}) == 1, group
    assert set(folds.values()) == {0, 1}
