"""A finished (or running) run read back from its directory: metrics.csv, summary.json, its table, curves.png redrawn."""

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf
from rich.console import Console

from trainer.reporting.plots import CURVES_PNG, draw_curves
from trainer.reporting.tables import make_console, number, run_table


def read_metrics(path: Path) -> List[Dict[str, float]]:
    """metrics.csv as numbers (an empty cell, written for NaN, reads back as NaN)."""
    with open(path, newline="") as f:
        return [{key: float(value) if value != "" else math.nan for key, value in row.items()} for row in csv.DictReader(f)]


def read_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


def run_monitor(run_dir: Path, summary: dict) -> str:
    """The run's monitor: from summary.json, else from the run's composed config."""
    if summary.get("monitor"):
        return summary["monitor"]
    config = run_dir / ".hydra" / "config.yaml"
    return OmegaConf.load(config).get("monitor", "val/loss") if config.is_file() else "val/loss"


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.csv").is_file() or (path / "summary.json").is_file()


def redraw_curves(run_dir: Path) -> Optional[List[Dict[str, float]]]:
    """curves.png from metrics.csv; None (and nothing drawn) when the run has no epoch yet."""
    metrics = run_dir / "metrics.csv"
    rows = read_metrics(metrics) if metrics.is_file() else []
    if rows:
        summary = read_summary(run_dir)
        draw_curves(rows, run_monitor(run_dir, summary), str(run_dir / CURVES_PNG), best_epoch=summary.get("best_epoch"),
                    best_step=summary.get("best_step"))
    return rows or None


def report_run(run_dir, console: Optional[Console] = None) -> None:
    run_dir = Path(run_dir)
    console = console or make_console()
    summary = read_summary(run_dir)
    monitor = run_monitor(run_dir, summary)
    rows = redraw_curves(run_dir)
    status = summary.get("status", "no summary.json: still running, or killed")
    title = f"{run_dir}: {status}"
    if summary.get("best_epoch") is not None:
        title += f", best {monitor} {number(summary.get('best_value'))} at epoch {summary['best_epoch']}"
    if rows:
        console.print(run_table(rows, summary, monitor, title))
        console.print(f"redrew {run_dir / CURVES_PNG}")
    else:
        console.print(f"{title}; no epoch finished")
    if summary.get("error"):
        console.print(f"[red]error:[/] {summary['error']}")
