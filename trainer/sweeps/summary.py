"""A sweep's results, read back from its job directories, ranked best first.

Each job directory holds `.hydra/overrides.yaml` (what made the job different) and summary.json
(how it went). Jobs are ranked by their monitored best value in their own `mode`; trials an Optuna
pruner stopped (status `pruned`) follow by theirs, then jobs without a finite value; failed ones come last. Jobs that differ only in `seed` are grouped into the
mean and the sample standard deviation over seeds. Plain data and CSV only: tables.py and
plots.py draw them.
"""

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

SWEEP_CSV = "sweep_summary.csv"
SEEDS_CSV = "sweep_seeds.csv"
FAILED = ("failed", "missing")  # "missing": no summary.json (still running, or killed)
PRUNED = "pruned"  # a trial of a pruned Optuna search, stopped as hopeless: its best value is of a shorter run


@dataclass
class JobResult:
    job: str  # the job directory relative to the sweep directory ("0", "1", ...)
    overrides: Dict[str, str]  # key -> value, as given to Hydra
    status: str
    monitor: Optional[str] = None
    mode: Optional[str] = None
    best_epoch: Optional[int] = None
    best_value: Optional[float] = None
    epochs_run: Optional[int] = None
    error: Optional[str] = None

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    @property
    def pruned(self) -> bool:
        return self.status == PRUNED


@dataclass
class SeedGroup:
    overrides: Dict[str, str]  # every override but `seed`
    jobs: List[JobResult] = field(default_factory=list)

    @property
    def seeds(self) -> List[str]:
        return [job.overrides.get("seed", "") for job in self.jobs]

    @property
    def values(self) -> List[float]:
        return [job.best_value for job in self.jobs if not job.failed and job.best_value is not None]

    @property
    def failed(self) -> int:
        return sum(job.failed for job in self.jobs)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        """Sample standard deviation (n - 1); none for fewer than two values."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def monitor(self) -> Optional[str]:
        return next((job.monitor for job in self.jobs if job.monitor), None)

    @property
    def mode(self) -> Optional[str]:
        return next((job.mode for job in self.jobs if job.mode), None)


def natural_key(name: str) -> Tuple:
    """'2' before '10': job numbers sort as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in Path(name).parts)


def job_dirs(sweep_dir: Path) -> List[Path]:
    dirs = [p.parent.parent for p in Path(sweep_dir).rglob("overrides.yaml") if p.parent.name == ".hydra"]
    return sorted(dirs, key=lambda d: natural_key(str(d.relative_to(sweep_dir))))


def parse_overrides(lines: Sequence[str]) -> Dict[str, str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(lines))
    return {o.get_key_element(): o.get_value_element_as_str() for o in parsed}


def read_job(sweep_dir: Path, job_dir: Path) -> JobResult:
    overrides = parse_overrides(OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")))
    name = str(job_dir.relative_to(sweep_dir))
    try:
        with open(job_dir / "summary.json") as f:
            summary = json.load(f)
    except FileNotFoundError:
        return JobResult(name, overrides, "missing", error="no summary.json: the job is still running or was killed")
    return JobResult(
        name, overrides, summary.get("status", "missing"),
        monitor=summary.get("monitor"), mode=summary.get("mode"), best_epoch=summary.get("best_epoch"),
        best_value=summary.get("best_value"), epochs_run=summary.get("epochs_run"), error=summary.get("error"),
    )


def read_sweep(sweep_dir) -> List[JobResult]:
    sweep_dir = Path(sweep_dir)
    return [read_job(sweep_dir, d) for d in job_dirs(sweep_dir)]


def rank_key(value: Optional[float], mode: Optional[str], failed: bool, name: str, pruned: bool = False) -> Tuple:
    if failed:
        return (3, 0.0, natural_key(name))
    if value is None:
        return (2, 0.0, natural_key(name))
    return (1 if pruned else 0, value if mode == "min" else -value, natural_key(name))


def rank(jobs: Sequence[JobResult]) -> List[JobResult]:
    """Best first in each job's own mode; pruned trials next (as Optuna's best trial, the best is one that ran to
    its end); jobs without a value next; failed jobs last."""
    return sorted(jobs, key=lambda j: rank_key(j.best_value, j.mode, j.failed, j.job, j.pruned))


def varying_keys(overrides: Sequence[Dict[str, str]]) -> List[str]:
    """Override keys whose value is not the same in every job (all keys when none varies)."""
    keys = list(dict.fromkeys(key for o in overrides for key in o))
    varying = [key for key in keys if len({o.get(key) for o in overrides}) > 1]
    return varying or keys


def seed_groups(jobs: Sequence[JobResult]) -> List[SeedGroup]:
    """Jobs equal but for `seed`, ranked by their mean; empty when no two jobs differ only in seed."""
    groups: Dict[Tuple, SeedGroup] = {}
    for job in sorted(jobs, key=lambda j: natural_key(j.job)):
        rest = {key: value for key, value in job.overrides.items() if key != "seed"}
        groups.setdefault(tuple(sorted(rest.items())), SeedGroup(rest)).jobs.append(job)
    if not any("seed" in job.overrides for job in jobs) or all(len(g.jobs) < 2 for g in groups.values()):
        return []
    return sorted(groups.values(), key=lambda g: rank_key(g.mean, g.mode, not g.values, str(g.seeds)))


def cell(value) -> str:
    """CSV cell: floats in full precision, None empty."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_sweep_csv(ranked: Sequence[JobResult], path) -> None:
    keys = list(dict.fromkeys(key for job in ranked for key in job.overrides))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "job", *keys, "status", "monitor", "mode", "best_epoch", "best_value", "epochs_run", "error"])
        for i, job in enumerate(ranked, 1):
            writer.writerow([i, job.job, *(job.overrides.get(k, "") for k in keys), job.status, cell(job.monitor),
                             cell(job.mode), cell(job.best_epoch), cell(job.best_value), cell(job.epochs_run), cell(job.error)])


def write_seeds_csv(groups: Sequence[SeedGroup], path) -> None:
    keys = list(dict.fromkeys(key for g in groups for key in g.overrides))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", *keys, "seeds", "n", "mean", "std", "min", "max", "failed", "monitor", "mode"])
        for i, g in enumerate(groups, 1):
            values = g.values
            writer.writerow([i, *(g.overrides.get(k, "") for k in keys), " ".join(g.seeds), len(values), cell(g.mean),
                             cell(g.std), cell(min(values) if values else None), cell(max(values) if values else None),
                             g.failed, cell(g.monitor), cell(g.mode)])
