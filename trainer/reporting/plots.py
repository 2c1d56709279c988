"""Pictures of a run and of a sweep, drawn with matplotlib's object API (no pyplot, no global backend).

    curves.png   loss, the monitored metric (train and val where both exist) and the learning rate per epoch
    sweep.png    each job's best monitored value, best first (or the mean and std over seeds)

The confusion matrix picture is not drawn here: trainer/class_reports.py draws it.
matplotlib is imported inside the functions: importing this module costs nothing. Files are
written to a temporary name and renamed, so a viewer never reads half a picture.
"""

import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from trainer.reporting.tables import format_value

CURVES_PNG = "curves.png"
SWEEP_PNG = "sweep.png"
COLORS = {"train": "C0", "val": "C1"}  # the same split has the same colour in every panel
MAX_ROWS = 40  # a sweep picture shows at most this many jobs (the best ones)
# Metrics whose every value lies in [0, 1] (trainer/metrics.py: scores of predicted classes, and of
# rankings; topN for any N): an axis past those bounds shows values no run can have.
UNIT_INTERVAL_METRICS = {"accuracy", "balanced_accuracy", "f1", "f1_weighted", "precision", "precision_weighted",
                         "recall", "recall_weighted", "roc_auc", "mrr", "ndcg", "map"}


def metric_bounds(monitor: str) -> Tuple[Optional[float], Optional[float]]:
    """The lowest and highest value the monitored metric can take (None: unbounded); r2 is at most 1."""
    name = monitor.split("/")[-1]
    if name in UNIT_INTERVAL_METRICS or re.fullmatch(r"top\d+", name):
        return 0.0, 1.0
    if name == "r2":
        return None, 1.0
    return None, None


def save_figure(fig, path: str) -> None:
    tmp = f"{path}.tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def series(rows: Sequence[Dict[str, float]], key: str) -> Optional[List[float]]:
    """The column `key` of the epoch rows (NaN where missing), or None when no epoch has a number."""
    values = [float(row.get(key, math.nan)) for row in rows]
    return values if any(math.isfinite(v) for v in values) else None


def curve_panel(ax, epochs, rows, keys: Sequence[str], title: str, best_epoch: Optional[int], xlabel: str = "epoch") -> None:
    for key in keys:
        values = series(rows, key)
        if values is not None:
            split = key.split("/")[0] if "/" in key else key
            ax.plot(epochs, values, marker="o", markersize=3, label=split, color=COLORS.get(split, "C2"))
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    if len(keys) > 1 and ax.lines:
        ax.legend()


def draw_curves(rows: Sequence[Dict[str, float]], monitor: str, path: str, best_epoch: Optional[int] = None,
                best_step: Optional[int] = None) -> None:
    """curves.png of a run's validations (rows as in metrics.csv); a dotted line marks the best one. Over epochs,
    or over optimizer steps when some epoch has several rows (trainer.val_check_interval)."""
    epochs = [int(row["epoch"]) for row in rows]
    by_step = len(set(epochs)) < len(rows) and all(math.isfinite(float(row.get("step", math.nan))) for row in rows)
    xlabel = "optimizer step" if by_step else "epoch"
    if by_step:
        epochs, best_epoch = [int(row["step"]) for row in rows], best_step
    metric = monitor.split("/")[-1]
    if metric == "loss":  # the loss has its own panel: show accuracy beside it instead
        metric = "accuracy"
    fig = new_figure(13, 3.6)
    loss_ax, metric_ax, lr_ax = fig.subplots(1, 3)
    curve_panel(loss_ax, epochs, rows, ["train/loss", "val/loss"], "loss", best_epoch, xlabel)
    curve_panel(metric_ax, epochs, rows, [f"train/{metric}", f"val/{metric}"], metric, best_epoch, xlabel)
    curve_panel(lr_ax, epochs, rows, ["lr"], "learning rate", best_epoch, xlabel)
    lrs = [v for v in (series(rows, "lr") or []) if v > 0]
    if lrs and max(lrs) / min(lrs) > 10:
        lr_ax.set_yscale("log")
    fig.suptitle(f"best {monitor} at {xlabel} {best_epoch}" if best_epoch is not None else f"monitor: {monitor}")
    save_figure(fig, path)


def draw_dots(labels: Sequence[str], values: Sequence[Optional[float]], errors: Optional[Sequence[Optional[float]]],
              xlabel: str, title: str, path: str, bounds: Tuple[Optional[float], Optional[float]] = (None, None)) -> None:
    """One dot per label, the first on top (a dot plot, so the axis may zoom on small differences
    honestly); error bars where given; a row without a value says so. The axis stays within `bounds`
    (those of the metric), which its margins and error bars would otherwise cross."""
    n = len(labels)
    fig = new_figure(9, 1.3 + 0.3 * n)
    ax = fig.subplots()
    ys = list(range(n))
    finite = [v for v in values if v is not None]
    left = min(finite) if finite else 0.0
    for y, value, error in zip(ys, values, errors or [None] * n):
        if value is None:
            ax.annotate("no value", (left, y), va="center", fontsize=8, color="C3")
            continue
        bar = ax.errorbar([value], [y], xerr=None if error is None else [error], fmt="o", color="C0", capsize=3)
        bar.lines[0].set_clip_on(False)  # a dot on the metric's bound (accuracy 1.0) is drawn whole; its bar is clipped
        ax.annotate(format_value(float(value)), (value, y), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=8)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_ylim(n - 0.5, -0.7)  # first row on top, room for its number
    ax.margins(x=0.08)
    low, high = ax.get_xlim()
    if bounds[0] is not None and low < bounds[0] < high:
        low = bounds[0]
    if bounds[1] is not None and low < bounds[1] < high:
        high = bounds[1]
    ax.set_xlim(low, high)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def draw_sweep(labels, values, errors, monitor: str, title: str, path: str) -> None:
    """sweep.png: at most MAX_ROWS rows, already ranked best first."""
    shown = slice(0, MAX_ROWS)
    if len(labels) > MAX_ROWS:
        title = f"{title} (best {MAX_ROWS} of {len(labels)})"
    draw_dots(labels[shown], values[shown], None if errors is None else errors[shown], f"best {monitor}", title, path,
              metric_bounds(monitor))
