"""Schemas of every config group, stored in Hydra's ConfigStore.

Each YAML option in conf/<group>/ extends one of these dataclasses (`- /schema/<group>/<name>@_here_`),
so a misspelt key or a value of the wrong type fails when Hydra composes the config, before any
heavy import. This module imports neither torch nor any other heavy library: `--help` stays fast.
"""

import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# The YAML config tree. An absolute path: Hydra resolves a relative one against the calling module,
# which differs between `python -m trainer` and the installed `trainer` command.
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


# --- data -----------------------------------------------------------------------------------
@dataclass
class DigitsData:
    name: str = "digits"
    batch_size: int = 64
    val_fraction: float = 0.2
    image_size: int = 8  # upsampled once in memory when larger (e.g. 32 for a timm resnet)
    num_workers: int = 0  # in-memory tensors: worker processes only add overhead
    sampler: str = "random"  # random | balanced (inverse class frequency, with replacement)
    # class name -> fraction of its images kept (seeded, before the split), e.g. {3: 0.1}; null keeps all.
    # Typed Any: Hydra cannot override a null Dict-typed node from the command line; the builder checks it.
    class_fraction: Any = None


# --- model ----------------------------------------------------------------------------------
@dataclass
class CnnModel:
    name: str = "cnn"
    width: int = 32
    dropout: float = 0.1
    norm: str = "batch"  # batch | group | none (group and none do not depend on the batch)
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


@dataclass
class MseLoss:
    name: str = "mse"


@dataclass
class L1Loss:
    name: str = "l1"


@dataclass
class HuberLoss:
    name: str = "huber"
    delta: float = 1.0


# --- optimizer ------------------------------------------------------------------------------
@dataclass
class SgdOptimizer:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False
    head_lr: Optional[float] = None  # a separate learning rate for the classifier head (fine-tuning)


@dataclass
class AdamWOptimizer:
    name: str = "adamw"
    lr: float = 3e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    decay_norm_and_bias: bool = False
    head_lr: Optional[float] = None  # a separate learning rate for the classifier head (fine-tuning)


@dataclass
class AdamOptimizer:
    name: str = "adam"
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = False
    head_lr: Optional[float] = None  # a separate learning rate for the classifier head (fine-tuning)


@dataclass
class RmspropOptimizer:
    name: str = "rmsprop"
    lr: float = 1e-3
    alpha: float = 0.99
    momentum: float = 0.0
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = False
    head_lr: Optional[float] = None  # a separate learning rate for the classifier head (fine-tuning)


# --- scheduler ------------------------------------------------------------------------------
# Lengths are in epochs whatever the interval; `interval: step` converts them to optimizer steps.
@dataclass
class SchedulerBase:
    interval: str = "epoch"  # epoch | step
    warmup_epochs: int = 0  # a linear ramp up to optimizer.lr in front of the schedule
    warmup_start_factor: float = 0.01


@dataclass
class NoScheduler(SchedulerBase):
    name: str = "none"


@dataclass
class StepScheduler(SchedulerBase):
    name: str = "step"
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class MultiStepScheduler(SchedulerBase):
    name: str = "multistep"
    milestones: List[int] = field(default_factory=lambda: [15, 25])
    gamma: float = 0.1


@dataclass
class ExponentialScheduler(SchedulerBase):
    name: str = "exponential"
    gamma: float = 0.9


@dataclass
class CosineScheduler(SchedulerBase):
    name: str = "cosine"
    t_max: Optional[int] = None  # null: the rest of the run after warmup
    eta_min: float = 0.0


@dataclass
class PlateauScheduler(SchedulerBase):
    name: str = "plateau"
    factor: float = 0.1
    patience: int = 3
    threshold: float = 1e-4
    cooldown: int = 0
    min_lr: float = 0.0


@dataclass
class OneCycleScheduler(SchedulerBase):
    name: str = "onecycle"
    interval: str = "step"
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal_strategy: str = "cos"


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
    precision: str = "32"  # 32 | bf16 | fp16 (a GradScaler is used only for fp16; on a CPU fp16 runs, slowly)
    grad_clip_norm: Optional[float] = None
    grad_clip_value: Optional[float] = None
    ema_decay: Optional[float] = None  # e.g. 0.999: also validate an EMA of the weights (val_ema/<metric>)
    channels_last: bool = False
    compile: bool = False
    sync_batchnorm: bool = False  # with torchrun on GPUs: batch statistics over all processes
    deterministic: bool = False
    patience: Optional[int] = None  # early stopping: epochs without improvement of `monitor`
    min_delta: float = 0.0
    on_nonfinite: str = "stop"  # stop | skip: what a NaN or infinite training loss does
    limit_train_batches: Any = None  # int: that many batches; float in (0, 1]: that share of them
    limit_val_batches: Any = None
    fast_dev_run: bool = False  # one train and one val batch, one epoch, no checkpoints
    overfit_batches: int = 0  # train and validate on the same first N training batches


@dataclass
class CheckpointSettings:
    save_top_k: int = 0  # also keep the k best epochs as epoch-NNN_<monitor>-<value>.ckpt


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
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    task: str = "classification"  # classification | regression (set by the task group)
    seed: int = 0
    monitor: str = "val/f1"
    mode: Optional[str] = None  # min | max; null picks min for losses, max for everything else
    progress: bool = True
    resume: Optional[str] = None  # a run directory or checkpoint to continue


@dataclass
class LrPreviewConfig(TrainConfig):
    output: Optional[str] = None  # the PNG's path; null: lr_schedule.png in the preview's own run directory


@dataclass
class EvaluateConfig:
    ckpt_path: str = MISSING
    device: str = "auto"
    progress: bool = True  # accepted for symmetry with training; evaluate draws no progress bar
    output: Optional[str] = None  # JSON path; default: <checkpoint>.metrics.json beside it


@dataclass
class PredictConfig:
    ckpt_path: str = MISSING
    input: str = MISSING  # a folder (every image under it), a CSV with a column of paths, or one image
    output: str = "predictions.csv"
    overwrite: bool = False
    tta: str = "none"  # none | flip (average the probabilities, or regression values, with the horizontal mirror's)
    batch_size: int = 64
    num_workers: Optional[int] = None  # null: one loader process per CPU core this process may use
    device: str = "auto"
    path_column: Optional[str] = None  # CSV input: null = the training CSV's column, else "path"
    image_dir: Optional[str] = None  # CSV input: paths are relative to it; null: the CSV's folder
    path_suffix: Optional[str] = None  # CSV input: appended to each path; null: the training CSV's data.path_suffix
    skip_bad_files: bool = False


# --- data: datasets of image files ---------------------------------------------------------
@dataclass
class ImageData:
    """What every dataset of image files shares: loading, input size, augmentation, mixing, sampling."""

    name: str = MISSING
    batch_size: int = 32
    val_fraction: float = 0.2  # stratified, seeded split when no separate validation set is given
    channels: int = 3  # 1 (grayscale) or 3 (RGB); every image is converted to it
    # null: the model's own default (timm's pretrained config; for the built-in cnn 32 px, mean = std = 0.5)
    image_size: Optional[int] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    interpolation: Optional[str] = None  # bilinear | bicubic | nearest | ...
    crop_pct: Optional[float] = None  # evaluation: resize to image_size / crop_pct, then center-crop
    # training augmentation, by timm.data.create_transform
    augment: bool = True  # false: training images get the evaluation transform
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # random-resized-crop area range
    ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # random-resized-crop aspect range
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.4  # ignored by timm when auto_augment is set
    auto_augment: Optional[str] = None  # timm string: rand-m9-mstd0.5 (RandAugment), rand-n1-m10-mstd101-p1, augmix-m5-w4-d2
    re_prob: float = 0.0  # random erasing probability
    re_mode: str = "pixel"  # const | rand | pixel
    re_count: int = 1
    # mixup / cutmix on training batches (timm.data.Mixup): active when mixup > 0 or cutmix > 0
    mixup: float = 0.0  # mixup alpha
    cutmix: float = 0.0  # cutmix alpha
    mixup_prob: float = 1.0  # probability of mixing a batch (or element, by mixup_mode)
    mixup_switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on
    mixup_mode: str = "batch"  # batch | pair | elem
    label_smoothing: float = 0.1  # of the mixed soft targets
    sampler: str = "random"  # random | balanced (inverse class frequency, with replacement)
    class_fraction: Any = None  # as for digits: {class name: fraction kept}
    # null: the CPU cores this process may use, shared with the other processes of a torchrun on this
    # machine (LOCAL_WORLD_SIZE), less one for the training loop; the training loader keeps its workers,
    # validation starts as many afresh each epoch (trainer.loaders.default_workers)
    num_workers: Optional[int] = None
    skip_bad_files: bool = False  # true: unreadable or missing images are left out with a warning
    # decoded images, kept as uint8 arrays at the size the transforms need (trainer.image_cache):
    # auto (memory when they fit in half the memory available, else none) | memory | disk | none
    cache: str = "auto"
    # the decoded-image files (data.cache=disk) and what the file check has verified;
    # null: $XDG_CACHE_HOME/trainer, or ~/.cache/trainer when XDG_CACHE_HOME is not set
    cache_dir: Optional[str] = None


@dataclass
class ImageFolderData(ImageData):
    name: str = "image_folder"
    root: str = MISSING  # one sub-folder per class
    val_root: Optional[str] = None  # same layout; when null, data.val_fraction of root is held out


@dataclass
class CsvData(ImageData):
    name: str = "csv"
    csv: str = MISSING  # one row per image: a path column and a label column
    image_dir: Optional[str] = None  # paths in the CSV are relative to it; null: the CSV's folder
    path_column: str = "image"
    label_column: str = "label"
    path_suffix: str = ""  # appended to every path, for CSVs of ids without extension (e.g. .jpg)
    val_csv: Optional[str] = None  # same columns and image_dir; when null, data.val_fraction is held out


SCHEMAS = {
    "data": {"digits": DigitsData, "image_folder": ImageFolderData, "csv": CsvData},
    "model": {"cnn": CnnModel, "timm": TimmModel},
    "loss": {
        "ce": CrossEntropyLoss,
        "focal": FocalLoss,
        "label_smoothing": LabelSmoothingLoss,
        "f1": F1Loss,
        "mse": MseLoss,
        "l1": L1Loss,
        "huber": HuberLoss,
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
        "multistep": MultiStepScheduler,
        "exponential": ExponentialScheduler,
        "cosine": CosineScheduler,
        "plateau": PlateauScheduler,
        "onecycle": OneCycleScheduler,
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
    cs.store(name="lr_preview_schema", node=LrPreviewConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(name=f"{group}_{name}_schema", node=node)
