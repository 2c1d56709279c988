"""`python -m trainer.report <run or sweep dir>`: a finished run's or sweep's table again, pictures redrawn.

    run dir    (metrics.csv or summary.json)   the per-epoch table; curves.png from metrics.csv
    sweep dir  (job dirs with .hydra/)          the jobs best first; sweep_summary.csv, sweep_seeds.csv
                                                when seeds repeat, sweep.png, and each job's curves.png

The same functions end every sweep (trainer.sweep_callback). Imports neither torch nor Hydra's app.
"""

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf
from rich.console import Console

from trainer.errors import UserError, reported_as_exit
from trainer.plots import CURVES_PNG, SWEEP_PNG, draw_curves, draw_sweep
from trainer.sweep_summary import SEEDS_CSV, SWEEP_CSV, rank, read_sweep, seed_groups, varying_keys, write_seeds_csv, write_sweep_csv
from trainer.tables import label, make_console, number, run_table, seeds_table, sweep_table


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
        draw_curves(rows, run_monitor(run_dir, summary), str(run_dir / CURVES_PNG), best_epoch=summary.get("best_epoch"))
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


def report_sweep(sweep_dir, console: Optional[Console] = None, redraw_runs: bool = True) -> list:
    """Rank the sweep's jobs, write its CSV files and sweep.png, print its tables; returns the ranked jobs."""
    sweep_dir = Path(sweep_dir)
    console = console or make_console()
    ranked = rank(read_sweep(sweep_dir))
    if not ranked:
        raise UserError(f"'{sweep_dir}' holds no job directories (<job>/.hydra/overrides.yaml)")
    write_sweep_csv(ranked, sweep_dir / SWEEP_CSV)
    written = [SWEEP_CSV]
    groups = seed_groups(ranked)
    keys = varying_keys([job.overrides for job in ranked])
    monitor = next((job.monitor for job in ranked if job.monitor), "best value")
    if groups:
        write_seeds_csv(groups, sweep_dir / SEEDS_CSV)
        written.append(SEEDS_CSV)
        seedless = [key for key in keys if key != "seed"]
        draw_sweep([f"{label(g.overrides, seedless) or 'all'} (n={len(g.values)})" for g in groups],
                   [g.mean for g in groups], [g.std for g in groups], monitor,
                   f"{sweep_dir.name}: mean and std over seeds", str(sweep_dir / SWEEP_PNG))
    else:
        draw_sweep([f"{job.job}: {label(job.overrides, keys)}" + (f" ({job.status})" if job.failed or job.pruned else "") for job in ranked],
                   [None if job.failed else job.best_value for job in ranked], None, monitor,
                   f"{sweep_dir.name}: best first", str(sweep_dir / SWEEP_PNG))
    written.append(SWEEP_PNG)
    if redraw_runs:
        for job in ranked:
            redraw_curves(sweep_dir / job.job)
    console.print(sweep_table(ranked, f"sweep {sweep_dir}: {len(ranked)} jobs, best first"))
    if groups:
        console.print(seeds_table(groups))
    console.print(f"wrote {', '.join(written)} in {sweep_dir}" + (" and each job's curves.png" if redraw_runs else ""))
    return ranked


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.report",
        description="Print a finished run's or sweep's table again and redraw its pictures.",
    )
    parser.add_argument("directory", help="a run directory (outputs/<date>/<time>) or a sweep directory (outputs/multirun/<date>/<time>)")
    args = parser.parse_args(argv)
    path = Path(args.directory)
    with reported_as_exit():
        if not path.is_dir():
            raise UserError(f"'{path}' is not a directory")
        if is_run_dir(path):
            report_run(path)
        elif any(path.rglob("overrides.yaml")):
            report_sweep(path)
        else:
            raise UserError(
                f"'{path}' is neither a run directory (metrics.csv, summary.json) "
                "nor a sweep directory (job directories with .hydra/overrides.yaml)"
            )


if __name__ == "__main__":
    main()
