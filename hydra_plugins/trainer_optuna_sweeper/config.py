"""The sweeper's options (`hydra.sweeper.*`), registered as `hydra/sweeper: trainer_optuna`."""

from dataclasses import dataclass, field
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore


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


ConfigStore.instance().store(group="hydra/sweeper", name="trainer_optuna", node=TrainerOptunaSweeperConf, provider="trainer")
