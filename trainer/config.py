"""Schemas of every config group, stored in Hydra's ConfigStore.

Each YAML option in conf/<group>/ extends one of these dataclasses (`- /schema/<group>/<name>@_here_`),
so a misspelt key or a value of the wrong type fails when Hydra composes the config, before any
heavy import. This module imports neither torch nor any other heavy library: `--help` stays fast.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


# --- data -----------------------------------------------------------------------------------
@dataclass
class DigitsData:
    name: str = "digits"
    batch_size: int = 64
    val_fraction: float = 0.2
    image_size: int = 8  # upsampled once in memory when larger (e.g. 32 for a timm resnet)
    num_workers: int = 0  # in-memory tensors: worker processes only add overhead


# --- model ----------------------------------------------------------------------------------
@dataclass
class CnnModel:
    name: str = "cnn"
    width: int = 32
    dropout: float = 0.1
    weights: Optional[str] = None


@dataclass
class TimmModel:
    name: str = "resnet18"
    pretrained: bool = False
    weights: Optional[str] = None
    drop_rate: float = 0.0


# --- loss -----------------------------------------------------------------------------------
@dataclass
class CrossEntropyLoss:
    name: str = "ce"
    label_smoothing: float = 0.0
    weights: Any = None  # null, "balanced", or one float per class


@dataclass
class FocalLoss:
    name: str = "focal"
    gamma: float = 2.0
    weights: Any = None


@dataclass
class LabelSmoothingLoss:
    name: str = "label_smoothing"
    smoothing: float = 0.1
    weights: Any = None


@dataclass
class F1Loss:
    name: str = "f1"
    epsilon: float = 1e-7


# --- optimizer ------------------------------------------------------------------------------
@dataclass
class SgdOptimizer:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False


@dataclass
class AdamWOptimizer:
    name: str = "adamw"
    lr: float = 3e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    decay_norm_and_bias: bool = False


@dataclass
class AdamOptimizer:
    name: str = "adam"
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = False


@dataclass
class RmspropOptimizer:
    name: str = "rmsprop"
    lr: float = 1e-3
    alpha: float = 0.99
    momentum: float = 0.0
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = False


# --- scheduler ------------------------------------------------------------------------------
@dataclass
class NoScheduler:
    name: str = "none"


@dataclass
class StepScheduler:
    name: str = "step"
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class CosineScheduler:
    name: str = "cosine"
    t_max: Optional[int] = None  # null: the run's length (trainer.max_epochs)
    eta_min: float = 0.0


@dataclass
class PlateauScheduler:
    name: str = "plateau"
    factor: float = 0.1
    patience: int = 3
    threshold: float = 1e-4
    cooldown: int = 0
    min_lr: float = 0.0


# --- metrics --------------------------------------------------------------------------------
@dataclass
class MetricSet:
    names: List[str] = field(default_factory=lambda: ["accuracy", "f1"])


# --- the run --------------------------------------------------------------------------------
@dataclass
class TrainerSettings:
    max_epochs: int = 30
    accumulate: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    grad_clip_norm: Optional[float] = None
    patience: Optional[int] = None  # early stopping: epochs without improvement of `monitor`
    min_delta: float = 0.0


@dataclass
class TrainConfig:
    data: Any = MISSING
    model: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    metric: Any = MISSING
    logger: Any = MISSING
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    seed: int = 0
    monitor: str = "val/f1"
    mode: Optional[str] = None  # min | max; null picks min for losses, max for everything else
    progress: bool = True


@dataclass
class EvaluateConfig:
    ckpt_path: str = MISSING
    device: str = "auto"
    progress: bool = True
    output: Optional[str] = None  # JSON path; default: <checkpoint>.metrics.json beside it


SCHEMAS = {
    "data": {"digits": DigitsData},
    "model": {"cnn": CnnModel, "timm": TimmModel},
    "loss": {
        "ce": CrossEntropyLoss,
        "focal": FocalLoss,
        "label_smoothing": LabelSmoothingLoss,
        "f1": F1Loss,
    },
    "optimizer": {
        "sgd": SgdOptimizer,
        "adamw": AdamWOptimizer,
        "adam": AdamOptimizer,
        "rmsprop": RmspropOptimizer,
    },
    "scheduler": {
        "none": NoScheduler,
        "step": StepScheduler,
        "cosine": CosineScheduler,
        "plateau": PlateauScheduler,
    },
    "metric": {"set": MetricSet},
}


# --- logger: where per-epoch scalars go besides metrics.csv and curves.png -------------------
@dataclass
class NoLogger:
    name: str = "none"


@dataclass
class TensorBoardLogger:
    name: str = "tensorboard"
    log_dir: str = "tensorboard"  # relative to the run directory


SCHEMAS["logger"] = {"none": NoLogger, "tensorboard": TensorBoardLogger}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(name=f"{group}_{name}_schema", node=node)
