"""oof_predictions.csv: a cross-validation fold's validation images with the chosen weights' predictions.

One row per validation image, in validation order: `path` (image data: relative to data.root, or the CSV's
path column as written) or `id` (digits: the index in scikit-learn's dataset), `label` (true class name),
`prediction` (class name), one probability column per class named by the class (`prob_<class>` for every class
should a class be called like another column), `fold`. A sweep's files concatenate those of its folds
(trainer.sweeps.cross_validation). Written through a temporary file, so a reader never sees half of one.
"""

import csv
import os
from typing import List, Sequence, Tuple

import numpy as np

OOF_CSV = "oof_predictions.csv"
FIXED_COLUMNS = ("path", "id", "label", "prediction", "fold")


def probability_columns(class_names: Sequence[str]) -> List[str]:
    names = [str(name) for name in class_names]
    if any(name in FIXED_COLUMNS for name in names):
        return [f"prob_{name}" for name in names]
    return names


def write_oof_rows(path: str, id_column: str, ids: Sequence[str], y_true: np.ndarray, prob: np.ndarray,
                   class_names: Sequence[str], folds: Sequence[int]) -> str:
    """Write the rows (probabilities in full precision: the sweep's metrics are computed from this file)."""
    names = [str(name) for name in class_names]
    predicted = np.asarray(prob).argmax(axis=1)
    temporary = f"{path}.tmp"
    with open(temporary, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([id_column, "label", "prediction", *probability_columns(names), "fold"])
        for row_id, label, guess, row, fold in zip(ids, y_true, predicted, prob, folds):
            writer.writerow([row_id, names[int(label)], names[int(guess)], *(repr(float(p)) for p in row), int(fold)])
    os.replace(temporary, path)
    return path


def read_oof_rows(path: str) -> Tuple[str, List[str], List[str], np.ndarray, np.ndarray, np.ndarray]:
    """(id column name, ids, class names, true labels (N,), probabilities (N, C), folds (N,)) of an OOF file."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    columns = header[3:-1]
    class_names = [name[5:] for name in columns] if columns and all(c.startswith("prob_") for c in columns) \
        and any(c[5:] in FIXED_COLUMNS for c in columns) else columns
    index = {name: i for i, name in enumerate(class_names)}
    ids = [row[0] for row in rows]
    y_true = np.asarray([index[row[1]] for row in rows], dtype=np.int64)
    prob = np.asarray([[float(v) for v in row[3:-1]] for row in rows], dtype=np.float64).reshape(len(rows), len(columns))
    folds = np.asarray([int(row[-1]) for row in rows], dtype=np.int64)
    return header[0], ids, class_names, y_true, prob, folds
