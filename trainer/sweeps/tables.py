"""Rich tables of a sweep: its jobs best first, and its groups over seeds."""

from typing import Dict, Optional, Sequence

from rich.table import Table

from trainer.reporting.tables import number, titled_table
from trainer.sweeps.summary import JobResult, SeedGroup, varying_keys


STATUS_STYLE = {"completed": "green", "stopped_early": "green", "pruned": "cyan", "interrupted": "yellow", "failed": "red",
                "missing": "red"}


def short(text: str) -> str:
    """An override value for the eye: long floats (Optuna's suggestions) to 4 significant digits."""
    try:
        value = float(text)
    except ValueError:
        return text
    return text if "." not in text and "e" not in text.lower() else f"{value:.4g}"


def label(overrides: Dict[str, str], keys: Sequence[str]) -> str:
    return " ".join(f"{key}={short(overrides[key])}" for key in keys if key in overrides)


def common_caption(overrides: Sequence[Dict[str, str]], shown: Sequence[str]) -> Optional[str]:
    rest = [key for key in dict.fromkeys(k for o in overrides for k in o) if key not in shown]
    return f"in every job: {label(overrides[0], rest)}" if rest and overrides else None


def value_header(monitors: Sequence[Optional[str]], modes: Sequence[Optional[str]]) -> Optional[str]:
    """'val/f1 (max)' when every job monitors the same; None when they differ (a monitor column is shown)."""
    monitors, modes = set(filter(None, monitors)), set(filter(None, modes))
    if len(monitors) == 1 and len(modes) <= 1:
        return f"{monitors.pop()} ({modes.pop()})" if modes else monitors.pop()
    return None


def sweep_table(ranked: Sequence[JobResult], title: str) -> Table:
    keys = varying_keys([job.overrides for job in ranked])
    header = value_header([j.monitor for j in ranked], [j.mode for j in ranked])
    table = titled_table(title, caption=common_caption([j.overrides for j in ranked], keys))
    table.add_column("#", justify="right")
    table.add_column("job", justify="right")
    for key in keys:
        table.add_column(key)
    table.add_column("status")
    table.add_column("best epoch", justify="right")
    if header is None:
        table.add_column("monitor")
    table.add_column(header or "best", justify="right")
    errors = any(job.error for job in ranked)
    if errors:
        table.add_column("error", overflow="fold")
    for i, job in enumerate(ranked, 1):
        row = [str(i), job.job, *(short(job.overrides.get(key, "")) for key in keys)]
        status = f"{job.status} at epoch {job.epochs_run}" if job.pruned else job.status
        row += [f"[{STATUS_STYLE.get(job.status, 'yellow')}]{status}[/]", number(job.best_epoch)]
        row += [] if header is not None else [f"{job.monitor} ({job.mode})" if job.monitor else "-"]
        row.append(number(job.best_value))
        row += [job.error or ""] if errors else []
        table.add_row(*row, style="bold" if i == 1 and not job.failed else None)
    return table


def seeds_table(groups: Sequence[SeedGroup]) -> Table:
    keys = varying_keys([g.overrides for g in groups]) if len(groups) > 1 else list(groups[0].overrides)
    header = value_header([g.monitor for g in groups], [g.mode for g in groups]) or "best"
    table = titled_table(f"over seeds: mean and sample std of {header}")
    table.add_column("#", justify="right")
    for key in keys:
        table.add_column(key)
    for name in ("seeds", "n", "mean", "std", "failed"):
        table.add_column(name, justify="left" if name == "seeds" else "right")
    for i, g in enumerate(groups, 1):
        row = [str(i), *(short(g.overrides.get(key, "")) for key in keys)]
        row += [" ".join(g.seeds), str(len(g.values)), number(g.mean), number(g.std), str(g.failed)]
        table.add_row(*row, style="bold" if i == 1 and g.values else None)
    return table



def cv_table(recipes: Sequence, name: str, mode: str) -> Table:
    """Recipes of a cross-validation sweep (trainer.sweeps.cross_validation.Recipe), best OOF score first."""
    keys = varying_keys([r.overrides for r in recipes]) if len(recipes) > 1 else []
    others = [key for key in dict.fromkeys(k for r in recipes for k in r.oof) if key != name]
    table = titled_table(f"cross-validation: recipes by out-of-fold {name} ({mode})",
                         caption=common_caption([r.overrides for r in recipes], keys))
    table.add_column("#", justify="right")
    for key in keys:
        table.add_column(key)
    table.add_column("folds", justify="right")
    for header in (f"OOF {name}", "fold mean", "fold std", *(f"OOF {key}" for key in others)):
        table.add_column(header, justify="right")
    for i, r in enumerate(recipes, 1):
        row = [str(i), *(short(r.overrides.get(key, "")) for key in keys), f"{r.folds - len(r.missing)}/{r.folds}"]
        row += [number(r.oof.get(name)), number(r.fold_mean(name) if r.oof else None), number(r.fold_std(name) if r.oof else None)]
        row += [number(r.oof.get(key)) for key in others]
        table.add_row(*row, style="bold" if i == 1 and r.oof else None)
    return table
