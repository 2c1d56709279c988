"""Per-class report and confusion matrix of one set of predictions: as rich tables and as files.

Every function takes the true labels (N,), the class probabilities (N, C) and, where it shows
them, the C class names. Every class gets its row and column, including one that the split lacks
(support 0), so reports of different runs line up. The numbers come from scikit-learn.
"""

import csv
import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np
from sklearn import metrics as skm

from trainer.reporting.tables import titled_table

REPORT_COLUMNS = ["class", "precision", "recall", "f1", "support"]
AVERAGES = ["macro", "weighted"]


def per_class_report(y_true: np.ndarray, prob: np.ndarray, class_names: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per class, then "macro avg" and "weighted avg" rows, each with the REPORT_COLUMNS.

    The averages run over all C classes, as scikit-learn's classification_report computes them
    with labels=range(C): a class that is neither a label nor a prediction counts as 0 here,
    whereas the `val/f1` metric leaves it out (and warns).
    """
    labels = np.arange(prob.shape[1])
    if len(class_names) != len(labels):
        raise ValueError(f"{len(class_names)} class names for {len(labels)} classes")
    pred = prob.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0
    )
    rows = [
        {"class": str(name), "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    ]
    for average in AVERAGES:
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, pred, labels=labels, average=average, zero_division=0)
        rows.append({"class": f"{average} avg", "precision": float(p), "recall": float(r), "f1": float(f), "support": int(support.sum())})
    return rows


def confusion(y_true: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """C x C counts: row = true class, column = predicted class (scikit-learn's convention)."""
    labels = np.arange(prob.shape[1])
    return skm.confusion_matrix(y_true, prob.argmax(axis=1), labels=labels)


# --- the console -----------------------------------------------------------------------------
def print_reports(console, y_true: np.ndarray, prob: np.ndarray, class_names: Sequence[str]) -> None:
    """Two rich tables on `console`: the per-class report and the confusion matrix."""

    report = titled_table("per-class report")
    for column in REPORT_COLUMNS:
        report.add_column(column, justify="left" if column == "class" else "right")
    rows = per_class_report(y_true, prob, class_names)
    for i, row in enumerate(rows):
        report.add_row(
            row["class"], *(f"{row[key]:.4f}" for key in ("precision", "recall", "f1")), str(row["support"]),
            end_section=i == len(class_names) - 1,
        )
    console.print(report)

    matrix = titled_table("confusion matrix: rows true, columns predicted")
    matrix.add_column("true \\ predicted")
    for name in class_names:
        # fold, never cut: a count shown as "…" would be worse than a wrapped one
        matrix.add_column(str(name), justify="right", overflow="fold")
    for name, counts in zip(class_names, confusion(y_true, prob)):
        matrix.add_row(str(name), *(str(int(n)) for n in counts))
    console.print(matrix)


# --- files -----------------------------------------------------------------------------------
def write_reports(
    directory: str, y_true: np.ndarray, prob: np.ndarray, class_names: Sequence[str], prefix: str = ""
) -> List[str]:
    """Write <prefix>per_class.csv, .json, <prefix>confusion_matrix.csv and .png into `directory`.

    Returns the four paths in that order.
    """
    if directory:  # "" is the working directory
        os.makedirs(directory, exist_ok=True)
    rows = per_class_report(y_true, prob, class_names)
    counts = confusion(y_true, prob)
    paths = [os.path.join(directory, prefix + name) for name in
             ("per_class.csv", "per_class.json", "confusion_matrix.csv", "confusion_matrix.png")]

    with open(paths[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(paths[1], "w") as f:
        json.dump(rows, f, indent=2)
    with open(paths[2], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, counts):
            writer.writerow([name, *(int(n) for n in row)])
    # bbox "tight": the canvas grows to fit long class names instead of cutting them off
    confusion_figure(counts, class_names).savefig(paths[3], bbox_inches="tight", pad_inches=0.2)
    return paths


def confusion_figure(counts: np.ndarray, class_names: Sequence[str]):
    """A matplotlib Figure: the counts annotated on a heat map coloured by each true class's share (its row)."""
    # Agg through the object API: no display needed, and pyplot's global backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = len(class_names)
    names = [str(n) for n in class_names]
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    # About 0.4 inch per cell, so a 3-digit count fits its cell up to ~30 classes.
    side = min(max(4.0, 0.4 * c + 2.5), 16.0)
    fontsize = max(6.0, min(10.0, 200.0 / c))
    slanted = c * max(len(n) for n in names) > 40  # horizontal tick labels would overlap

    figure = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(c)
    axes.set_xticks(ticks, names, rotation=45 if slanted else 0, ha="right" if slanted else "center", fontsize=fontsize)
    axes.set_yticks(ticks, names, fontsize=fontsize)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("confusion matrix")
    for i in range(c):
        for j in range(c):
            axes.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=fontsize,
                      color="white" if share[i, j] > 0.5 else "black")
    return figure
