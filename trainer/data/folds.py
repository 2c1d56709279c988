"""Cross-validation folds: `data.folds=K data.fold=i` holds out fold i of K as the validation set.

The folds are scikit-learn's StratifiedKFold (StratifiedGroupKFold with `data.group_column`), shuffled with
the run's seed, over the dataset's images after `data.class_fraction`: they depend on the dataset and the
seed only, so every recipe run with the same seed (another loss, model, schedule) sees the same folds.
The settings are checked before any data is read (`check_fold_settings`), the data's own conditions
(images per class, the group column) when the data is listed.
"""

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from trainer.config.options import SCHEMAS, field_defaults
from trainer.errors import UserError


def check_fold_settings(data: Any) -> None:
    """`data.folds`, `data.fold` and `data.group_column` against each other and the other validation settings;
    `data` is the run's data config (any mapping with attribute access)."""
    folds, fold = data.get("folds"), data.get("fold")
    group_column = data.get("group_column")
    if folds is None:
        if fold is not None:
            raise UserError(f"data.fold={fold} needs data.folds (the number of folds, e.g. data.folds=5 data.fold={fold})")
        if group_column is not None:
            raise UserError(f"data.group_column={group_column} keeps groups together across cross-validation folds; "
                            "it needs data.folds and data.fold (e.g. data.folds=5 data.fold=0)")
        return
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise UserError(f"data.folds={folds} is not valid; use an integer >= 2 (the number of folds), or null for no folds")
    if fold is None:
        raise UserError(f"data.folds={folds} needs data.fold, the fold held out for validation: 0 to {folds - 1} "
                        f"(all of them: python -m trainer -m data.folds={folds} 'data.fold=range({folds})')")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise UserError(f"data.fold={fold} is not valid with data.folds={folds}; use an integer from 0 to {folds - 1}")
    for key in ("val_root", "val_csv"):
        if data.get(key) is not None:
            raise UserError(f"data.{key}={data.get(key)} and data.folds={folds} both choose the validation set; "
                            f"with folds, fold data.fold is the validation set: drop data.{key} or data.folds")
    # a fold replaces val_fraction's split: only a val_fraction the user changed from its schema's default clashes
    schema = SCHEMAS["data"].get(data.get("name"))
    default = field_defaults(schema).get("val_fraction") if schema else data.get("val_fraction")
    if data.get("val_fraction") is not None and data.get("val_fraction") != default:
        raise UserError(f"data.val_fraction={data.val_fraction} and data.folds={folds} both choose the validation set; "
                        f"with folds each fold holds 1/{folds} of the images: drop data.val_fraction or data.folds")


def fold_split(labels: np.ndarray, class_names: Sequence[str], folds: int, fold: int, seed: int,
               groups: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices) of fold `fold` of `folds`, stratified by class, seeded, and
    with `groups` never split across folds. Both index arrays are sorted."""
    assignment = fold_assignment(labels, class_names, folds, seed, groups)
    if not (assignment == fold).any():  # StratifiedGroupKFold with a few large groups can leave a fold empty
        raise UserError(f"fold {fold} of data.folds={folds} holds no image: the groups of data.group_column are too "
                        "few or too uneven for that many folds; use fewer folds")
    return np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)


def fold_assignment(labels: np.ndarray, class_names: Sequence[str], folds: int, seed: int,
                    groups: Optional[Sequence[str]] = None) -> np.ndarray:
    """The fold (0 .. folds-1) of every image."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(class_names))
    for name, count in zip(class_names, counts):
        if count < folds:
            raise UserError(f"class '{name}' has {count} image{'s' if count != 1 else ''}; data.folds={folds} needs at "
                            f"least {folds} per class (one in each fold): use fewer folds or add images")
    index = np.zeros(len(labels))
    if groups is None:
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(index, labels)
    else:
        distinct = len(set(groups))
        if distinct < folds:
            raise UserError(f"data.group_column has {distinct} distinct groups; data.folds={folds} needs at least "
                            f"{folds} (each fold holds whole groups): use fewer folds")
        splits = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(index, labels, np.asarray(groups))
    assignment = np.full(len(labels), -1, dtype=np.int64)
    for number, (_, held_out) in enumerate(splits):
        assignment[held_out] = number
    return assignment


def csv_groups(csv_path: str, group_column: str, paths: Sequence[str], listed: Sequence[str]) -> list:
    """The group of each of `paths` (the checked subset of `listed`, the CSV's image paths in row order),
    from the CSV's `group_column`."""
    from trainer.data.images import csv_column, read_csv_rows, require_column

    rows, columns = read_csv_rows(csv_path, "data.csv")
    require_column(columns, group_column, csv_path, "data.group_column")
    group_of = dict(zip(listed, csv_column(rows, group_column, csv_path)))
    return [group_of[path] for path in paths]
