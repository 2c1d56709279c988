"""Sweeps over cross-validation folds, end to end: each fold job's oof_predictions.csv joined per recipe in the
sweep directory, cv_summary.json scored as scikit-learn scores that file, the table, and trainer.report's redraw."""

import csv
from collections import defaultdict

import numpy as np
import pytest

from conftest import read_csv, read_json, run_module
from image_files import write_csv, write_csv_dataset, write_image_folder

CLASSES = [str(c) for c in range(10)]


@pytest.mark.slow
def test_five_fold_digits_sweep_scores_every_image_once_and_as_scikit_learn(tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss, roc_auc_score

    sweep = tmp_path / "sweep"
    result = run_module("trainer", "-m", "experiment=cv5", "trainer.max_epochs=2", "data.batch_size=32",
                        "metric.names=[accuracy,balanced_accuracy,f1,roc_auc]", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(sweep / "oof_predictions.csv")
    assert list(rows[0]) == ["id", "label", "prediction", *CLASSES, "fold"]
    target = load_digits().target
    assert sorted(int(r["id"]) for r in rows) == list(range(len(target)))  # every image exactly once
    assert all(int(r["label"]) == target[int(r["id"])] for r in rows)
    y = np.array([int(r["label"]) for r in rows])
    prob = np.array([[float(r[c]) for c in CLASSES] for r in rows])
    folds = np.array([int(r["fold"]) for r in rows])
    assert np.bincount(folds).tolist() == [360, 360, 359, 359, 359]
    assert [int(r["prediction"]) for r in rows] == list(prob.argmax(1))
    summary = read_json(sweep / "cv_summary.json")
    assert summary["monitor"] == "f1" and summary["mode"] == "max" and len(summary["recipes"]) == 1
    recipe = summary["recipes"][0]
    assert recipe["missing_folds"] == [] and recipe["images"] == len(y)
    oof = recipe["oof"]
    assert oof["accuracy"] >= 0.97
    assert oof["accuracy"] == pytest.approx(accuracy_score(y, prob.argmax(1)), abs=1e-12)
    assert oof["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, prob.argmax(1)), abs=1e-12)
    assert oof["f1"] == pytest.approx(f1_score(y, prob.argmax(1), average="macro"), abs=1e-12)
    assert oof["roc_auc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr"), abs=1e-9)
    assert oof["loss"] == pytest.approx(log_loss(y, prob, labels=range(10)), rel=1e-6)
    per_fold = [f1_score(y[folds == f], prob[folds == f].argmax(1), average="macro") for f in range(5)]
    assert recipe["fold_mean"]["f1"] == pytest.approx(np.mean(per_fold), abs=1e-12)
    assert recipe["fold_std"]["f1"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-12)
    for fold, job in recipe["jobs"].items():  # each fold's rows are its best epoch's (its summary.json)
        assert read_json(sweep / job / "summary.json")["best_value"] == pytest.approx(per_fold[int(fold)], abs=1e-9)
    assert "cross-validation: recipes by out-of-fold f1" in result.stdout

    for name in ("cv_summary.json", "oof_predictions.csv", "oof_confusion_matrix.png", "oof_confusion_matrix.csv"):
        (sweep / name).unlink()
    report = run_module("trainer.report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert read_json(sweep / "cv_summary.json") == summary
    assert "cross-validation: recipes by out-of-fold f1" in report.stdout
    assert (sweep / "oof_confusion_matrix.png").stat().st_size > 0
    with open(sweep / "oof_confusion_matrix.csv", newline="") as f:
        counts = np.array([[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]])
    assert counts.sum() == len(y) and np.trace(counts) == (prob.argmax(1) == y).sum()


@pytest.mark.slow
def test_image_folder_folds_are_the_same_for_every_recipe(tmp_path):
    written = write_image_folder(tmp_path / "images", classes=range(3), per_class=4)
    sweep = tmp_path / "sweep"
    result = run_module("trainer", "-m", "data=image_folder", f"data.root={tmp_path / 'images'}", "data.folds=2",
                        "data.fold=0,1", "loss=ce,focal", "trainer.max_epochs=1", "data.batch_size=8",
                        "data.num_workers=0", "data.cache=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_json(sweep / "cv_summary.json")
    assert sorted(r["overrides"]["loss"] for r in summary["recipes"]) == ["ce", "focal"]
    ranked = [r["oof"]["f1"] for r in summary["recipes"]]
    assert ranked == sorted(ranked, reverse=True)
    expected = sorted(str(p.relative_to(tmp_path / "images")) for files in written.values() for p in files)
    assignments = []
    for recipe in summary["recipes"]:
        folder = f"cv/loss={recipe['overrides']['loss']}"
        assert recipe["oof_predictions"] == f"{folder}/oof_predictions.csv"
        assert (sweep / folder / "oof_confusion_matrix.png").is_file()
        rows = read_csv(sweep / recipe["oof_predictions"])
        assert sorted(r["path"] for r in rows) == expected  # every image exactly once
        assert all(r["label"] == r["path"].split("/")[0] for r in rows)
        assignments.append({r["path"]: r["fold"] for r in rows})
        assert sorted(set(assignments[-1].values())) == ["0", "1"]
    assert assignments[0] == assignments[1]


@pytest.mark.slow
def test_a_csv_group_stays_in_one_fold(tmp_path):
    _, rows = write_csv_dataset(tmp_path, {0: "zero", 1: "one"}, per_class=8)
    groups = {path: f"p{i // 2}" for i, (path, _) in enumerate(rows)}  # two images per patient
    write_csv(tmp_path / "train.csv", [(path, label, groups[path]) for path, label in rows], header=("image", "label", "patient"))
    sweep = tmp_path / "sweep"
    result = run_module("trainer", "-m", "data=csv", f"data.csv={tmp_path / 'train.csv'}", "data.group_column=patient",
                        "data.folds=2", "data.fold=0,1", "trainer.max_epochs=1", "data.batch_size=8",
                        "data.num_workers=0", "data.cache=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    oof = read_csv(sweep / "oof_predictions.csv")
    assert sorted(r["path"] for r in oof) == sorted(groups)  # the CSV's path column as written
    folds_of = defaultdict(set)
    for r in oof:
        folds_of[groups[r["path"]]].add(r["fold"])
    assert all(len(f) == 1 for f in folds_of.values()) and len(set().union(*folds_of.values())) == 2
