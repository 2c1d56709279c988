"""A Hydra sweeper whose jobs are the trials of an Optuna study (ask, launch, tell).

The study lives in an Optuna storage (SQLite in the sweep directory by default) and is loaded if
it exists, so running the same command again with the same storage and study name continues the
search: `n_trials` is the study's total, and only the missing trials run. Each trial's job
directory is named by its trial number, so a continued search never writes into an earlier
trial's directory. A job that fails (NaN or an error) is told to Optuna as a failed trial; a
trial cut short by Ctrl-C is failed too but marked `interrupted`, and a rerun replaces it. With
`pruner=median|hyperband` a job reports each validation to its trial and stops when the pruner says
so (pruning.py); such a trial is told to Optuna as PRUNED.
"""

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction

from hydra_plugins.trainer_optuna_sweeper.pruning import PRUNED_AT, check_pruner_name, make_pruner, study_storage
from hydra_plugins.trainer_optuna_sweeper.search_space import as_override, split_search_space

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # user attribute of a trial cut short by Ctrl-C: it does not count towards n_trials


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError(
            "hparams_search=optuna needs the optuna package: pip install optuna (or pip install 'trainer[optuna]')"
        ) from None
    return optuna


def study_direction(direction: Optional[str], job_config: DictConfig) -> str:
    """`hydra.sweeper.direction`, or the direction the job itself optimises (`mode`, else by `monitor`)."""
    if direction is not None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={direction} is not valid; use maximize, minimize, or null")
        return direction
    mode = job_config.get("mode")
    if mode is None:
        from trainer.evaluation.metrics import default_mode

        mode = default_mode(job_config.get("monitor", "val/loss"))
    return "maximize" if mode == "max" else "minimize"


def counted_trials(study) -> int:
    """Finished trials that count towards n_trials: complete, pruned, or failed on their own (not by Ctrl-C)."""
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return sum(1 for t in finished if not t.user_attrs.get(INTERRUPTED))


def objective_value(job: JobReturn) -> Optional[float]:
    """The job's returned monitored value, or None when it failed or gave no finite number."""
    if job.status != JobStatus.COMPLETED:
        return None
    value = job.return_value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class TrainerOptunaSweeper(Sweeper):
    def __init__(
        self,
        study_name: str,
        storage: Optional[str],
        n_trials: int,
        n_jobs: int,
        direction: Optional[str],
        sampler: str,
        seed: Optional[int],
        params: Optional[Dict[str, str]] = None,
        pruner: str = "none",
        median: Optional[DictConfig] = None,
        hyperband: Optional[DictConfig] = None,
        trial: Optional[int] = None,  # only in a job's config: its trial number
    ) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials} and n_jobs={n_jobs} must be >= 1")
        if sampler not in ("tpe", "random"):
            raise ValueError(f"hydra.sweeper.sampler={sampler} is not valid; use tpe or random")
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.direction, self.sampler_name, self.seed = direction, sampler, seed
        self.params = dict(params or {})
        self.pruner_name = check_pruner_name(pruner)
        self.median, self.hyperband = median, hyperband
        if pruner != "none":  # a bad option of the pruner is named now, in Hydra's one message
            make_pruner(pruner, median, hyperband)
        self.reported_nothing = False  # a pruned search whose jobs could not report (warned once)
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> List[Sequence[JobReturn]]:
        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        optuna = import_optuna()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        # YAML params first, so the command line's value of the same key wins
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        space, fixed = split_search_space(overrides)
        if not space:
            raise ValueError("the search space is empty: set hydra.sweeper.params or give e.g. optimizer.lr='interval(1e-4,1e-1)'")

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        storage = study_storage(self.storage, str(sweep_dir))
        direction = study_direction(self.direction, self.config)
        pruner = make_pruner(self.pruner_name, self.median, self.hyperband)  # the jobs build their own (pruning.py)
        study = optuna.create_study(study_name=self.study_name, storage=storage, direction=direction, load_if_exists=True)
        study = optuna.load_study(study_name=self.study_name, storage=storage, sampler=self.make_sampler(len(study.trials)),
                                  pruner=pruner)
        if study.direction.name.lower() != direction:
            raise ValueError(
                f"study '{self.study_name}' in {storage} was created to {study.direction.name.lower()}, "
                f"not {direction}; choose another hydra.sweeper.study_name or storage"
            )
        done = counted_trials(study)
        log.info(f"Optuna study '{self.study_name}' ({direction}) in {storage}: {done} of {self.n_trials} trials done"
                 + ("" if self.pruner_name == "none" else f"; {self.pruner_name} pruner"))
        log.info(f"watch it with: optuna-dashboard {storage}")

        returns: List[Sequence[JobReturn]] = []
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            returns.append(self.run_trials(study, trials, fixed))
            done = counted_trials(study)
        self.report_best(study, storage, sweep_dir, fixed)
        return returns

    def make_sampler(self, trials_so_far: int):
        """The sampler, its seed offset by the study's trial count: a continued study with a fixed seed
        would otherwise draw the same random startup trials again."""
        import optuna

        seed = None if self.seed is None else self.seed + trials_so_far
        return (optuna.samplers.TPESampler if self.sampler_name == "tpe" else optuna.samplers.RandomSampler)(seed=seed)

    def run_trials(self, study, trials: list, fixed: List[str]) -> Sequence[JobReturn]:
        """Launch one batch of trials as jobs numbered by trial number, then tell Optuna each outcome."""
        from optuna.trial import TrialState

        batch = [fixed + [as_override(key, value) for key, value in trial.params.items()] for trial in trials]
        if self.pruner_name != "none":  # the job finds its trial by number (a Hydra override: not in overrides.yaml)
            batch = [overrides + [f"hydra.sweeper.trial={trial.number}"] for overrides, trial in zip(batch, trials)]
        try:
            self.validate_batch_is_legal(batch)
            results: List[JobReturn] = []
            numbers = [trial.number for trial in trials]
            if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
                results += self.launcher.launch(batch, initial_job_idx=numbers[0])
            else:  # another process shares the study: launch one by one to keep directory = trial number
                for number, overrides in zip(numbers, batch):
                    results += self.launcher.launch([overrides], initial_job_idx=number)
        except BaseException as error:
            for trial in trials:
                if isinstance(error, KeyboardInterrupt):
                    trial.set_user_attr(INTERRUPTED, True)
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        for trial, result in zip(trials, results):
            value = objective_value(result)
            stored = trial.storage.get_trial(trial._trial_id)  # as the job left it (Trial caches what it wrote itself)
            if value is None:
                study.tell(trial, state=TrialState.FAIL)
            elif PRUNED_AT in stored.user_attrs:  # the job stopped when the pruner said so (read from the storage)
                study.tell(trial, state=TrialState.PRUNED)  # Optuna's value of a pruned trial: its last report
            else:
                self.check_reported(trial.number, stored.intermediate_values)
                study.tell(trial, value)
        return results

    def check_reported(self, number: int, reported: dict) -> None:
        """A pruned search whose job ran to its end without reporting could not reach the study: say so, once."""
        if self.pruner_name == "none" or self.reported_nothing or reported:
            return
        self.reported_nothing = True
        log.warning(
            f"warning: trial {number} reported nothing to study '{self.study_name}', so no trial can be pruned: "
            "its job could not reach the study's storage (see the job's log). A launcher that runs jobs on other "
            "machines needs a storage they reach too (hydra.sweeper.storage: a database server, or a shared disk)"
        )

    def report_best(self, study, storage: str, sweep_dir: Path, fixed: List[str]) -> None:
        """Log the best trial and write it to best_trial.yaml (its overrides reproduce it as a single run)."""
        try:
            best = study.best_trial
        except ValueError:  # no trial completed
            log.warning(f"no trial of study '{self.study_name}' completed")
            return
        # hparams_search=... only chose this sweeper: a single run of the best trial needs the rest
        fixed = [o for o in fixed if not o.startswith("hparams_search=")]
        overrides = fixed + [as_override(key, value) for key, value in best.params.items()]
        log.info(f"best trial {best.number}: {best.value} with {' '.join(overrides)}")
        OmegaConf.save(
            OmegaConf.create(
                {"study_name": self.study_name, "storage": storage, "direction": study.direction.name.lower(),
                 "trial": best.number, "value": best.value, "overrides": overrides}
            ),
            sweep_dir / "best_trial.yaml",
        )
