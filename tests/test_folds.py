"""Cross-validation folds (trainer.data.folds): scikit-learn's (group) k-fold, seeded by the run's seed, and
every mistake with data.folds / data.fold / data.group_column refused with one message before training."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from conftest import compose_train
from image_files import write_csv_dataset, write_image_folder
from test_bad_input import assert_refused
from trainer.data.folds import check_fold_settings, fold_assignment, fold_split
from trainer.errors import UserError

NAMES = [str(c) for c in range(10)]


def test_folds_are_scikit_learns_stratified_k_fold_with_the_run_seed():
    labels = load_digits().target
    assignment = fold_assignment(labels, NAMES, 5, seed=3)
    for number, (_, held_out) in enumerate(StratifiedKFold(5, shuffle=True, random_state=3).split(labels, labels)):
        assert (np.flatnonzero(assignment == number) == held_out).all()
    train, val = fold_split(labels, NAMES, 5, 2, seed=3)
    assert (val == np.flatnonzero(assignment == 2)).all() and (train == np.flatnonzero(assignment != 2)).all()
    for c in range(10):  # stratified: each class's images spread over the folds within one
        counts = np.bincount(assignment[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert (fold_assignment(labels, NAMES, 5, seed=4) != assignment).any()  # the seed chooses the folds


def test_a_group_never_spans_two_folds():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 60, size=400)
    labels = (groups % 3 + rng.integers(0, 2, size=400)) % 3  # a group's images mostly share a class
    names = ["a", "b", "c"]
    assignment = fold_assignment(labels, names, 4, seed=7, groups=[f"g{g}" for g in groups])
    for group in np.unique(groups):
        assert len(set(assignment[groups == group])) == 1, group
    reference = StratifiedGroupKFold(4, shuffle=True, random_state=7).split(labels, labels, [f"g{g}" for g in groups])
    for number, (_, held_out) in enumerate(reference):
        assert (np.flatnonzero(assignment == number) == held_out).all()
    ungrouped = fold_assignment(labels, names, 4, seed=7)
    assert any(len(set(ungrouped[groups == g])) > 1 for g in np.unique(groups))  # without groups they do split


@pytest.mark.parametrize(
    "overrides, phrases",
    [
        (["data.folds=5", "data.fold=5"], ["data.fold=5 is not valid with data.folds=5", "0 to 4"]),
        (["data.folds=5", "data.fold=-1"], ["data.fold=-1 is not valid with data.folds=5", "0 to 4"]),
        (["data.folds=1", "data.fold=0"], ["data.folds=1 is not valid", ">= 2"]),
        (["data.fold=2"], ["data.fold=2 needs data.folds"]),
        (["data.folds=5"], ["data.folds=5 needs data.fold", "range(5)"]),
        (["data.folds=5", "data.fold=0", "data.val_fraction=0.3"], ["data.val_fraction=0.3 and data.folds=5"]),
        (["data=image_folder", "data.root=/r", "data.val_root=/v", "data.folds=3", "data.fold=0"],
         ["data.val_root=/v and data.folds=3"]),
        (["data=csv", "data.csv=t.csv", "data.val_csv=v.csv", "data.folds=3", "data.fold=0"],
         ["data.val_csv=v.csv and data.folds=3"]),
        (["data=csv", "data.csv=t.csv", "data.group_column=patient"], ["data.group_column=patient", "needs data.folds"]),
    ],
)
def test_fold_settings_are_checked_against_each_other(overrides, phrases):
    with pytest.raises(UserError) as error:
        check_fold_settings(compose_train(*overrides).data)
    for phrase in phrases:
        assert phrase in str(error.value)


def test_the_default_val_fraction_is_no_clash():
    check_fold_settings(compose_train("data.folds=5", "data.fold=4").data)
    check_fold_settings(compose_train("data=image_folder", "data.root=/r", "data.folds=2", "data.fold=1").data)


def test_bad_fold_is_refused_before_training(cli, tmp_path):
    result = cli("trainer", "data.folds=3", "data.fold=3", f"hydra.run.dir={tmp_path / 'run'}")
    assert_refused(result, "data.fold=3 is not valid with data.folds=3", "0 to 2")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_class_with_fewer_images_than_folds_is_refused(cli, tmp_path):
    write_image_folder(tmp_path / "images", classes=(0, 1), per_class=4)
    result = cli("trainer", "data=image_folder", f"data.root={tmp_path / 'images'}", "data.folds=5", "data.fold=0",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert_refused(result, "class '0' has 4 images", "data.folds=5 needs at least 5 per class")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_group_column_the_csv_lacks_is_refused(cli, tmp_path):
    csv_path, _ = write_csv_dataset(tmp_path / "data", {0: "zero", 1: "one"}, per_class=6)
    result = cli("trainer", "data=csv", f"data.csv={csv_path}", "data.folds=2", "data.fold=0",
                 "data.group_column=patient", f"hydra.run.dir={tmp_path / 'run'}")
    assert_refused(result, "data.group_column", "patient")
    assert not (tmp_path / "run" / "checkpoints").exists()
