"""The schema of every option of every config group (data, model, loss, optimizer, scheduler, metric,
logger): its keys, their types and their defaults, stated here once. Each YAML option in conf/<group>/
only names its schema (`- /<group>_<option>_schema@_here_`), so a misspelt key or a value of the wrong
type fails when Hydra composes the config. Imports nothing heavy.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from trainer.config.loggers import LOGGER_SCHEMAS


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
    # cross-validation (trainer.data.folds): fold `fold` of `folds` stratified, seeded folds is the validation
    # set, in place of val_fraction; null: no folds. All folds: python -m trainer -m data.folds=5 'data.fold=range(5)'
    folds: Optional[int] = None
    fold: Optional[int] = None


# --- model ----------------------------------------------------------------------------------
@dataclass
class CnnModel:
    name: str = "cnn"
    width: int = 32
    dropout: float = 0.1
    norm: str = "batch"  # batch | group | none (group and none do not depend on the batch)
    pools: int = 2  # 2x2 max-pools between the three conv blocks: 2 (after the 1st and 2nd), 1 (after the 2nd), 0
    weights: Optional[str] = None  # a local state-dict file to start from


@dataclass
class TimmModel:
    name: str = "resnet18"  # any timm model by name: model=timm model.name=efficientnet_b0
    pretrained: bool = False  # timm downloads the weights (needs a network, or its local cache)
    weights: Optional[str] = None  # or a local weights file: model.weights=/path/to/weights.pth
    drop_rate: float = 0.0


# --- loss -----------------------------------------------------------------------------------
@dataclass
class CrossEntropyLoss:
    name: str = "ce"
    label_smoothing: float = 0.0  # torch's: s/C spread over all classes
    weights: Any = None  # null | balanced | [w0, w1, ...] (one float per class)


@dataclass
class FocalLoss:
    name: str = "focal"
    gamma: float = 2.0
    weights: Any = None  # per-class alpha: null | balanced | [w0, w1, ...]


@dataclass
class LabelSmoothingLoss:
    """The lecture formulation: the true class gets 1-s, every other class s/(C-1)."""

    name: str = "label_smoothing"
    smoothing: float = 0.1
    weights: Any = None


@dataclass
class F1Loss:
    """1 - soft macro F1 over the batch (differentiable)."""

    name: str = "f1"
    epsilon: float = 1e-7


@dataclass
class MseLoss:
    """Regression: mean squared error of (N,) or (N, 1) predictions against float targets."""

    name: str = "mse"


@dataclass
class L1Loss:
    """Regression: mean absolute error of (N,) or (N, 1) predictions against float targets."""

    name: str = "l1"


@dataclass
class HuberLoss:
    """Regression: squared error within `delta` of the target, absolute error beyond it."""

    name: str = "huber"
    delta: float = 1.0


# --- optimizer ------------------------------------------------------------------------------
@dataclass
class OptimizerBase:
    name: str = MISSING
    decay_norm_and_bias: bool = False  # false: no weight decay on biases and norm weights
    head_lr: Optional[float] = None  # a separate learning rate for the classifier head (fine-tuning)


@dataclass
class SgdOptimizer(OptimizerBase):
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4


@dataclass
class AdamWOptimizer(OptimizerBase):
    name: str = "adamw"
    lr: float = 3e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01


@dataclass
class AdamOptimizer(OptimizerBase):
    name: str = "adam"
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class RmspropOptimizer(OptimizerBase):
    name: str = "rmsprop"
    lr: float = 1e-3
    alpha: float = 0.99
    momentum: float = 0.0
    eps: float = 1e-8
    weight_decay: float = 0.0


# --- scheduler ------------------------------------------------------------------------------
# Lengths are in epochs whatever the interval; `interval: step` converts them to optimizer steps.
@dataclass
class SchedulerBase:
    name: str = MISSING
    interval: str = "epoch"  # epoch | step (lengths stay in epochs)
    # a linear ramp up to optimizer.lr in front of the schedule; a step or multistep decay that falls
    # within it takes effect when it ends (as in timm)
    warmup_epochs: int = 0
    warmup_start_factor: float = 0.01


@dataclass
class NoScheduler(SchedulerBase):
    name: str = "none"


@dataclass
class StepScheduler(SchedulerBase):
    name: str = "step"
    # epochs of the run between decays, counted from its start (warmup included):
    # the rate is lr * gamma ** (epochs done // step_size)
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class MultiStepScheduler(SchedulerBase):
    name: str = "multistep"
    # after this many epochs of the run (counted from its start, warmup included) the rate is
    # multiplied by gamma: [4] decays from the 5th epoch on
    milestones: List[int] = field(default_factory=lambda: [15, 25])
    gamma: float = 0.1


@dataclass
class ExponentialScheduler(SchedulerBase):
    name: str = "exponential"
    gamma: float = 0.9  # factor per epoch


@dataclass
class CosineScheduler(SchedulerBase):
    name: str = "cosine"
    t_max: Optional[int] = None  # null: the rest of the run after warmup
    eta_min: float = 0.0


@dataclass
class PlateauScheduler(SchedulerBase):
    """Follows `monitor` and `mode`."""

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
    pct_start: float = 0.3  # its own warmup: the share of the run spent rising
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal_strategy: str = "cos"


# --- metrics --------------------------------------------------------------------------------
@dataclass
class MetricSet:
    names: List[str] = field(default_factory=lambda: ["accuracy", "f1"])


@dataclass
class AllMetrics:
    names: List[str] = field(default_factory=lambda: [
        "accuracy", "balanced_accuracy", "f1", "f1_weighted", "precision", "precision_weighted", "recall",
        "recall_weighted", "roc_auc", "top3", "top5", "mrr", "ndcg", "map"])


@dataclass
class RankingMetrics:
    """mrr, ndcg: each image's classes ranked by probability, the true class the one relevant answer;
    map: each class's images ranked by that class's probability, its own images the relevant ones
    (average precision per class, averaged over the classes in the split)."""

    names: List[str] = field(default_factory=lambda: ["accuracy", "mrr", "ndcg", "map"])


@dataclass
class RegressionMetrics:
    names: List[str] = field(default_factory=lambda: ["mae", "rmse", "r2"])


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
    # training augmentation (trainer.data.batch_augment): small | light (pad, random crop, flips: in batches on
    # the training device) | imagenet (random-resized crop, flips, colour jitter, erasing, the settings below: in
    # batches on the training device; with auto_augment timm's per-image transforms) | none (the
    # evaluation transform); null: small for inputs up to 64 px, else imagenet (logged)
    augment: Optional[str] = None
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # imagenet: random-resized-crop area range
    ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # random-resized-crop aspect range
    # null: the recipe's own: 0.5 for imagenet; 0 for small and light, whose images are often digits or
    # letters, which a mirror turns into other symbols (photos such as CIFAR's: data.hflip=0.5)
    hflip: Optional[float] = None
    vflip: float = 0.0
    color_jitter: float = 0.4  # brightness, contrast, saturation factors in [max(0, 1-c), 1+c]; ignored with auto_augment
    auto_augment: Optional[str] = None  # timm string: rand-m9-mstd0.5 (RandAugment), rand-n1-m10-mstd101-p1, augmix-m5-w4-d2
    re_prob: float = 0.0  # random erasing probability
    re_mode: str = "pixel"  # const | rand | pixel
    re_count: int = 1  # erasing boxes per erased image: 1 to re_count (an integer >= 1)
    # mixup / cutmix on training batches (timm's Mixup, drawn by position): active when mixup > 0 or cutmix > 0
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
    # validation starts as many afresh each epoch (trainer.data.loaders.default_workers)
    num_workers: Optional[int] = None
    skip_bad_files: bool = False  # true: unreadable or missing images are left out with a warning
    # decoded images, kept as uint8 arrays at the size the transforms need (trainer.data.image_cache):
    # auto (memory when they fit in half the memory available, else none) | memory | disk | none
    cache: str = "auto"
    # the decoded-image files (data.cache=disk) and what the file check has verified;
    # null: $XDG_CACHE_HOME/trainer, or ~/.cache/trainer when XDG_CACHE_HOME is not set
    cache_dir: Optional[str] = None
    # cross-validation (trainer.data.folds): fold `fold` of `folds` stratified, seeded folds is the validation
    # set, in place of val_fraction; null: no folds. All folds: python -m trainer -m data.folds=5 'data.fold=range(5)'
    folds: Optional[int] = None
    fold: Optional[int] = None


@dataclass
class ImageFolderData(ImageData):
    name: str = "image_folder"
    root: str = MISSING  # one sub-folder per class; relative paths are stored absolute in the checkpoint
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
    # with data.folds: a column naming each image's group (patient, person, product); a group's images stay
    # in one fold (scikit-learn's StratifiedGroupKFold)
    group_column: Optional[str] = None


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
    "metric": {"default": MetricSet, "all": AllMetrics, "ranking": RankingMetrics, "regression": RegressionMetrics},
}


# --- logger: where a run's numbers go besides metrics.csv and curves.png (one key per option) ---
SCHEMAS["logger"] = LOGGER_SCHEMAS


def field_defaults(schema) -> Dict[str, Any]:
    """The defaults a schema dataclass states; keys it leaves MISSING (a dataset's root) are left out."""
    values = {}
    for f in dataclasses.fields(schema):
        if f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        elif f.default is not dataclasses.MISSING and f.default != MISSING:
            values[f.name] = f.default
    return values
