"""Schemas of the `logger` group: where a run's numbers go besides metrics.csv and curves.png.

Several loggers may be picked at once (`logger=[tensorboard,mlflow]`, Hydra's multi-select), so each
option's settings live under its own key (`logger.tensorboard.log_dir`, `logger.mlflow.tracking_uri`),
as in lightning-hydra-template; `logger=none` leaves `logger` empty. Nothing heavy is imported here.
"""

from dataclasses import dataclass
from typing import Optional


@dataclass
class TensorBoardLogger:
    log_dir: str = "tensorboard"  # relative to the run directory


@dataclass
class MlflowLogger:
    # null: sqlite:///<working directory>/outputs/mlflow.db (artifacts in outputs/mlartifacts/ beside it);
    # any MLflow tracking URI otherwise (http://host:5000, sqlite:///path/to.db, databricks)
    tracking_uri: Optional[str] = None
    experiment_name: str = "trainer"  # a sweep's jobs are runs of this experiment, tagged with the sweep
    run_name: Optional[str] = None  # null: the run directory, relative to the working directory
    log_checkpoint: bool = False  # also upload checkpoints/best.ckpt as an artifact
    # true: a tracking URI that cannot be reached stops the run before training; false: it trains on with a
    # warning. Failures during training never end a run: they are warned about once, the run's files stay.
    fail_on_error: bool = True


@dataclass
class WandbLogger:
    project: str = "trainer"
    entity: Optional[str] = None  # null: the API key's default entity
    # online | offline | disabled; null: WANDB_MODE if set, else online when an API key is configured
    # (WANDB_API_KEY or ~/.netrc) and the server answers, else offline (files under <run>/wandb/ for `wandb sync`)
    mode: Optional[str] = None
    name: Optional[str] = None  # the run's display name; null: the run directory, relative to the working directory
    log_checkpoint: bool = False  # also save checkpoints/best.ckpt with the run's files
    # true: an online run that cannot start stops the run before training; false: it goes on offline with a warning
    fail_on_error: bool = True


LOGGER_SCHEMAS = {"tensorboard": TensorBoardLogger, "mlflow": MlflowLogger, "wandb": WandbLogger}
