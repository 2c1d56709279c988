"""Rich tables and number formatting shared by the run's reports: a run's epochs, titled tables, the console."""

import math
import os
import sys
from typing import Any, Dict, Sequence

from rich.console import Console
from rich.table import Table


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def titled_table(title: str, **options) -> Table:
    """A rich Table at least as wide as its title: a table narrower than its title (few columns, short
    values) would wrap the title mid-phrase."""
    return Table(title=title, min_width=len(title) + 4, **options)


def make_console() -> Console:
    """Rich's console; piped output (a log, CI) gets 160 columns rather than 80, so tables keep one line per row."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console()
    return Console(width=160)


def number(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format_value(value)


def run_table(rows: Sequence[Dict[str, float]], summary: Dict[str, Any], monitor: str, title: str) -> Table:
    """One row per validation as in metrics.csv; the best one in bold with a star (by its step when known)."""
    best_epoch, best_step = summary.get("best_epoch"), summary.get("best_step")
    keys = [key for key in (rows[0] if rows else {}) if key != "epoch"]
    table = titled_table(title)
    table.add_column("epoch", justify="right")
    for key in keys:
        table.add_column(key + (" *" if key == monitor else ""), justify="right")
    for row in rows:
        by_step = best_step is not None and row.get("step") is not None and math.isfinite(float(row["step"]))
        best = int(row["step"]) == best_step if by_step else int(row["epoch"]) == best_epoch
        cells = [f"{int(row['epoch'])}{' *' if best else ''}"] + [number(int(row[key]) if key == "step" and math.isfinite(float(row[key])) else row[key]) for key in keys]
        table.add_row(*cells, style="bold green" if best else None)
    return table
