"""A sweep read back from its job directories: ranked, written as CSV files and sweep.png, printed as tables."""

from pathlib import Path
from typing import Optional

from rich.console import Console

from trainer.errors import UserError
from trainer.reporting.plots import SWEEP_PNG, draw_sweep
from trainer.reporting.run_report import redraw_curves
from trainer.reporting.tables import make_console
from trainer.sweeps.cross_validation import CV_JSON, monitored, report_cross_validation
from trainer.sweeps.summary import SEEDS_CSV, SWEEP_CSV, rank, read_sweep, seed_groups, varying_keys, write_seeds_csv, write_sweep_csv
from trainer.sweeps.tables import cv_table, label, seeds_table, sweep_table


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
    recipes = report_cross_validation(sweep_dir, ranked)  # a sweep over data.fold: its out-of-fold scores
    if recipes:
        console.print(cv_table(recipes, *monitored(ranked)))
        written.append(CV_JSON + " and the out-of-fold files")
    console.print(f"wrote {', '.join(written)} in {sweep_dir}" + (" and each job's curves.png" if redraw_runs else ""))
    return ranked
