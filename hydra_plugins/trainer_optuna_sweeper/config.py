"""The sweeper's options (`hydra.sweeper.*`), registered as `hydra/sweeper: trainer_optuna`."""

from dataclasses import dataclass, field
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class MedianPrunerConf:
    """Optuna's MedianPruner: stop a trial whose best value so far is worse than the median of the
    finished trials' values at the same step (step = epoch, or the validation's step when it has one)."""

    n_startup_trials: int = 5  # no pruning until this many trials have completed
    n_warmup_steps: int = 0  # no trial is pruned at a step below this
    interval_steps: int = 1  # the pruner decides every this many steps (after n_warmup_steps)
    n_min_trials: int = 1  # completed trials that must have reported the step for it to be compared


@dataclass
class HyperbandPrunerConf:
    """Optuna's HyperbandPruner (successive halving in brackets over the steps a trial trains)."""

    min_resource: int = 1  # steps every trial gets before it may be pruned
    max_resource: Optional[int] = None  # a trial's most steps (e.g. trainer.max_epochs); null: Optuna's auto
    reduction_factor: int = 3  # each rung keeps 1 trial in this many


@dataclass
class TrainerOptunaSweeperConf:
    _target_: str = "hydra_plugins.trainer_optuna_sweeper.sweeper.TrainerOptunaSweeper"
    study_name: str = "trainer"
    storage: Optional[str] = None  # an Optuna storage URL; null: sqlite:///<sweep dir>/optuna.db
    n_trials: int = 20  # the study's total of finished trials; a rerun adds only the missing ones
    n_jobs: int = 1  # trials handed to the launcher at once (the basic launcher runs them one by one)
    direction: Optional[str] = None  # maximize | minimize; null: from the job's `mode` and `monitor`
    sampler: str = "tpe"  # tpe | random
    seed: Optional[int] = None  # the sampler's seed
    params: Dict[str, str] = field(default_factory=dict)  # key: Hydra override grammar (choice, interval, ...)
    pruner: str = "none"  # none | median | hyperband: stop hopeless trials after a validation
    median: MedianPrunerConf = field(default_factory=MedianPrunerConf)
    hyperband: HyperbandPrunerConf = field(default_factory=HyperbandPrunerConf)
    trial: Optional[int] = None  # set by the sweeper in each job's config (the job's trial number); not an option


ConfigStore.instance().store(group="hydra/sweeper", name="trainer_optuna", node=TrainerOptunaSweeperConf, provider="trainer")
