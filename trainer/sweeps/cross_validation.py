"""A cross-validation sweep read back: the folds of each recipe joined into its out-of-fold (OOF) predictions and scored.

A recipe is the jobs whose overrides are equal but for `data.fold`, among the jobs whose config holds out a fold
(`data.folds`). Its jobs' oof_predictions.csv are concatenated in fold order and scored with the project's metrics
(`evaluation.metrics.epoch_metrics`) over all of them, and per fold (mean and sample std over folds). `loss` is
the cross-entropy of the OOF probabilities, whatever loss trained them. Files, in the sweep directory:

    cv_summary.json          every recipe, best OOF score first (the run's monitor and mode)
    oof_predictions.csv      the recipe's OOF rows (trainer.reporting.oof_predictions)
    oof_per_class.csv/json, oof_confusion_matrix.csv/png    their per-class report and confusion matrix

one recipe: those beside cv_summary.json; several (e.g. loss=ce,focal): each in cv/<its overrides>/.
torch and scikit-learn are imported only when a sweep has folds.
"""

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from trainer.reporting.oof_predictions import OOF_CSV, read_oof_rows, write_oof_rows
from trainer.sweeps.summary import JobResult, natural_key, rank_key, varying_keys

CV_JSON = "cv_summary.json"
CV_DIR = "cv"
FOLD_KEY = "data.fold"


@dataclass
class Recipe:
    overrides: Dict[str, str]  # every override but data.fold
    folds: int
    jobs: List[JobResult] = field(default_factory=list)
    metric_names: List[str] = field(default_factory=list)
    directory: Optional[Path] = None
    oof: Dict[str, float] = field(default_factory=dict)  # metric -> value over all OOF predictions
    per_fold: Dict[int, Dict[str, float]] = field(default_factory=dict)  # fold -> metric -> value
    missing: List[int] = field(default_factory=list)  # folds without oof_predictions.csv (failed, not run)
    images: int = 0

    def fold_mean(self, name: str) -> Optional[float]:
        values = [v[name] for v in self.per_fold.values() if not math.isnan(v[name])]
        return statistics.fmean(values) if values else None

    def fold_std(self, name: str) -> Optional[float]:
        values = [v[name] for v in self.per_fold.values() if not math.isnan(v[name])]
        return statistics.stdev(values) if len(values) >= 2 else None


def job_config(sweep_dir: Path, job: JobResult):
    path = sweep_dir / job.job / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def recipes_of(sweep_dir: Path, jobs: Sequence[JobResult]) -> List[Recipe]:
    """The sweep's fold jobs grouped into recipes (empty when no job holds out a fold)."""
    recipes: Dict[tuple, Recipe] = {}
    for job in sorted(jobs, key=lambda j: natural_key(j.job)):
        config = job_config(sweep_dir, job)
        if config is None or OmegaConf.select(config, "data.folds") is None:
            continue
        rest = {key: value for key, value in job.overrides.items() if key != FOLD_KEY}
        recipe = recipes.setdefault(tuple(sorted(rest.items())), Recipe(rest, int(config.data.folds)))
        recipe.jobs.append(job)
        recipe.metric_names = recipe.metric_names or list(OmegaConf.select(config, "metric.names") or [])
    return list(recipes.values())


def slug(overrides: Dict[str, str], keys: Sequence[str]) -> str:
    text = ",".join(f"{key}={overrides.get(key, '')}" for key in keys) or "all"
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", text)


def score(names: Sequence[str], y_true, prob) -> Dict[str, float]:
    """`loss` (cross-entropy of `prob`) and each metric of `names`, by the project's metrics: the log-probabilities
    are the logits (log-softmax leaves them as they are)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from trainer.evaluation.metrics import epoch_metrics

    logits = torch.from_numpy(np.log(np.maximum(prob, np.finfo(np.float64).tiny)))
    values = epoch_metrics(names, logits, torch.from_numpy(y_true), F.cross_entropy, prefix="")
    return {key: float(value) for key, value in values.items()}


def join_folds(sweep_dir: Path, recipe: Recipe, directory: Path) -> Optional[list]:
    """Concatenate the recipe's fold files into `directory`/oof_predictions.csv, score them, write the reports."""
    import numpy as np

    from trainer.reporting.class_reports import write_reports

    parts, seen = [], set()
    for job in recipe.jobs:
        path = sweep_dir / job.job / OOF_CSV
        if job.failed or not path.is_file():
            continue
        part = read_oof_rows(str(path))
        fold = int(part[5][0]) if len(part[5]) else None
        if fold is None or fold in seen:
            continue
        seen.add(fold)
        parts.append((fold, part))
    recipe.missing = [fold for fold in range(recipe.folds) if fold not in seen]
    if not parts:
        return None
    parts.sort(key=lambda p: p[0])
    id_column, _, class_names = parts[0][1][:3]
    ids = [i for _, p in parts for i in p[1]]
    y_true = np.concatenate([p[3] for _, p in parts])
    prob = np.concatenate([p[4] for _, p in parts])
    folds = np.concatenate([p[5] for _, p in parts])
    directory.mkdir(parents=True, exist_ok=True)
    written = [write_oof_rows(str(directory / OOF_CSV), id_column, ids, y_true, prob, class_names, folds)]
    # scored from the file as written, so anyone recomputing from it gets the same numbers
    _, _, _, y_true, prob, folds = read_oof_rows(written[0])
    recipe.directory, recipe.images = directory, len(y_true)
    recipe.oof = score(recipe.metric_names, y_true, prob)
    recipe.per_fold = {int(f): score(recipe.metric_names, y_true[folds == f], prob[folds == f]) for f in sorted(set(folds))}
    written += write_reports(str(directory), y_true, prob, class_names, prefix="oof_")
    return written


def monitored(jobs: Sequence[JobResult]):
    """(metric name without `val/`, mode) the recipes are ranked by: the jobs' monitor."""
    monitor = next((job.monitor for job in jobs if job.monitor), "val/loss")
    mode = next((job.mode for job in jobs if job.mode), "min" if monitor.endswith("loss") else "max")
    return monitor.split("/", 1)[-1], mode


def plain_number(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else value


def report_cross_validation(sweep_dir, jobs: Sequence[JobResult]) -> List[Recipe]:
    """Join, score and rank the recipes of a sweep with folds; write their files and cv_summary.json.
    Returns the recipes best first (empty when no job holds out a fold)."""
    sweep_dir = Path(sweep_dir)
    recipes = recipes_of(sweep_dir, jobs)
    if not recipes:
        return []
    keys = varying_keys([r.overrides for r in recipes]) if len(recipes) > 1 else []
    for recipe in recipes:
        directory = sweep_dir if len(recipes) == 1 else sweep_dir / CV_DIR / slug(recipe.overrides, keys)
        join_folds(sweep_dir, recipe, directory)
    name, mode = monitored(jobs)
    recipes.sort(key=lambda r: rank_key(plain_number(r.oof.get(name)), mode, not r.oof, slug(r.overrides, keys)))
    summary = {
        "monitor": name, "mode": mode, "loss": "cross-entropy of the out-of-fold probabilities",
        "recipes": [recipe_summary(sweep_dir, recipe, i) for i, recipe in enumerate(recipes, 1)],
    }
    with open(sweep_dir / CV_JSON, "w") as f:
        json.dump(summary, f, indent=2)
    return recipes


def recipe_summary(sweep_dir: Path, recipe: Recipe, rank: int) -> dict:
    names = list(recipe.oof)
    return {
        "rank": rank,
        "overrides": recipe.overrides,
        "folds": recipe.folds,
        "jobs": {str(job.overrides.get(FOLD_KEY, "")): job.job for job in recipe.jobs},
        "missing_folds": recipe.missing,
        "images": recipe.images,
        "oof_predictions": str((recipe.directory / OOF_CSV).relative_to(sweep_dir)) if recipe.directory else None,
        "oof": {key: plain_number(recipe.oof[key]) for key in names},
        "fold_mean": {key: plain_number(recipe.fold_mean(key)) for key in names},
        "fold_std": {key: plain_number(recipe.fold_std(key)) for key in names},
        "per_fold": {str(f): {k: plain_number(v) for k, v in values.items()} for f, values in recipe.per_fold.items()},
    }
