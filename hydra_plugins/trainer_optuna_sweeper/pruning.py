"""Pruned searches: `hydra.sweeper.pruner=median|hyperband` stops hopeless trials after a validation.

Both sides of a trial meet in the study's storage, so the job may run in the sweeper's process (Hydra's
basic launcher) or in another one (joblib, submitit):

- the sweeper gives each job its trial number as the hidden override `hydra.sweeper.trial=<number>`
  (a Hydra override: it is in the job's hydra.yaml, not in its overrides.yaml or the sweep table);
- the job loads the study from the same storage (`study_name`, `storage` or the sweep directory's
  optuna.db), rebuilds its trial, and the Engine asks `TrialPruning` after each validation: it reports
  the monitored value at step = the record's `step` if it has one, else its epoch (1, 2, ...), and asks
  the pruner; a trial to prune ends the run with status `pruned`, and is marked in the study (user
  attribute `pruned_at`) before the job returns;
- the sweeper then tells Optuna the trial is PRUNED (its value: the last reported one, Optuna's rule).

Optuna is imported only by a search that prunes.
"""

import logging
import os
from typing import Any, Dict, Optional, Tuple

log = logging.getLogger(__name__)

PRUNERS = ("none", "median", "hyperband")
PRUNED_AT = "pruned_at"  # the trial's user attribute a job sets when its run was pruned: the step it stopped at


def check_pruner_name(name: str) -> str:
    if name not in PRUNERS:
        raise ValueError(f"hydra.sweeper.pruner={name} is not valid; use one of: {', '.join(PRUNERS)}")
    return name


def make_pruner(name: str, median: Any, hyperband: Any):
    """Optuna's pruner for `hydra.sweeper.pruner` with its options (`hydra.sweeper.median.*`,
    `hydra.sweeper.hyperband.*`); Optuna's NopPruner for none. Optuna's own checks name a bad option."""
    import optuna

    check_pruner_name(name)
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=median.n_startup_trials, n_warmup_steps=median.n_warmup_steps,
                interval_steps=median.interval_steps, n_min_trials=median.n_min_trials,
            )
        if name == "hyperband":  # Optuna checks these only when it first prunes (a ZeroDivisionError, mid-search)
            if hyperband.min_resource < 1 or hyperband.reduction_factor < 2:
                raise ValueError(f"min_resource={hyperband.min_resource} and reduction_factor={hyperband.reduction_factor} "
                                 "must be integers >= 1 and >= 2")
            if hyperband.max_resource is not None and hyperband.max_resource < hyperband.min_resource:
                raise ValueError(f"max_resource={hyperband.max_resource} is below min_resource={hyperband.min_resource}")
            max_resource = "auto" if hyperband.max_resource is None else hyperband.max_resource
            return optuna.pruners.HyperbandPruner(
                min_resource=hyperband.min_resource, max_resource=max_resource,
                reduction_factor=hyperband.reduction_factor,
            )
    except ValueError as error:
        raise ValueError(f"hydra.sweeper.{name}: {error}") from None
    return optuna.pruners.NopPruner()


def default_storage(sweep_dir: str) -> str:
    return f"sqlite:///{os.path.abspath(os.path.join(sweep_dir, 'optuna.db'))}"


def study_storage(storage: Optional[str], sweep_dir: str, cwd: Optional[str] = None) -> str:
    """The storage URL of a search: `hydra.sweeper.storage`, else optuna.db in the sweep directory
    (a relative sweep directory is taken from `cwd`, the directory the command was started in)."""
    return storage or default_storage(os.path.join(cwd or os.getcwd(), sweep_dir))


# Studies loaded by this process, by (storage, study name, pruner): the jobs of a search run by the basic
# launcher share the sweeper's process and need not open the storage again for every trial.
_STUDIES: Dict[Tuple, Any] = {}


def load_study(storage: str, study_name: str, pruner_name: str, median: Any, hyperband: Any):
    import optuna

    key = (storage, study_name, pruner_name, repr(median), repr(hyperband))
    if key not in _STUDIES:
        # The job never samples: the random sampler spares the TPE sampler's work when the trial is rebuilt.
        _STUDIES[key] = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                                          pruner=make_pruner(pruner_name, median, hyperband))
    return _STUDIES[key]


def report_step(engine, record: Dict[str, Any]) -> int:
    """The step a validation is reported at: its epoch, so that n_warmup_steps and Hyperband's resources count
    epochs; the optimizer step where the run validates inside epochs (trainer.val_check_interval)."""
    validations = getattr(engine, "validations", None)
    return int(record["step"] if validations is not None and validations.inside_epochs else record["epoch"])


class TrialPruning:
    """A stop condition of the Engine (asked after every validation): reports the monitored value to the
    trial and answers ("pruned", reason) when the study's pruner says the trial is hopeless."""

    def __init__(self, trial, pruner_name: str):
        self.trial = trial
        self.pruner_name = pruner_name
        self.broken = False  # the storage failed once: the run goes on to its end without pruning

    def __call__(self, engine, record: Dict[str, Any]) -> Optional[Tuple[str, str]]:
        if self.broken:
            return None
        value, step = record[engine.monitor], report_step(engine, record)
        try:
            self.trial.report(value, step)  # NaN too: Optuna's pruners prune a trial whose value is NaN
            if not self.trial.should_prune():
                return None
            self.trial.set_user_attr(PRUNED_AT, step)  # before the job returns: the sweeper reads it
        except Exception as error:  # the storage went away (a lock, a lost database): train on, say so once
            self.broken = True
            log.warning(f"warning: trial {self.trial.number} could not report to its study or ask its pruner ({type(error).__name__}: "
                        f"{error}); this trial runs to its end without pruning")
            return None
        return "pruned", (f"Optuna's {self.pruner_name} pruner stopped trial {self.trial.number} at step {step} "
                          f"(epoch {record['epoch']}): {engine.monitor}={value:.6g}")


def trial_pruning(hydra_cfg, processes: int = 1) -> Optional[TrialPruning]:
    """The stop condition of a sweep job that is a trial of a pruned search (`hydra_cfg`: the job's
    HydraConfig), or None. A job that cannot reach its study's storage says so and trains without pruning."""
    sweeper = hydra_cfg.sweeper
    if sweeper.get("trial") is None or sweeper.get("pruner", "none") == "none":
        return None
    if processes > 1:  # every rank would have to take the pruner's decision at once
        log.warning(f"warning: trial {sweeper.trial} runs in {processes} processes (torchrun): it is not pruned")
        return None
    storage = study_storage(sweeper.storage, hydra_cfg.sweep.dir, hydra_cfg.runtime.cwd)
    try:
        import optuna

        study = load_study(storage, sweeper.study_name, sweeper.pruner, sweeper.median, sweeper.hyperband)
        # Optuna has no public lookup of a trial's id by its number; its storage API has
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, sweeper.trial)
        trial = optuna.trial.Trial(study, trial_id)
    except Exception as error:
        log.warning(
            f"warning: this job cannot reach trial {sweeper.trial} of study '{sweeper.study_name}' in {storage} "
            f"({type(error).__name__}: {error}); it trains without pruning. A launcher that runs jobs on other "
            "machines needs a storage they reach too (hydra.sweeper.storage: a database server, or a shared disk)"
        )
        return None
    return TrialPruning(trial, sweeper.pruner)
