"""The schema of a run and of the commands' own configs, and their registration in Hydra's ConfigStore.

The options of each config group have their schemas in `config.options`. This module imports neither
torch nor any other heavy library: `--help` stays fast.
"""

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from trainer.config.options import SCHEMAS, field_defaults


# The YAML config tree. An absolute path: Hydra resolves a relative one against the calling module,
# which differs between `python -m trainer` and the installed `trainer` command.
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf")


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
    patience: Optional[int] = None  # early stopping: validations (not epochs) without improvement of `monitor`
    min_delta: float = 0.0
    on_nonfinite: str = "stop"  # stop | skip: what a NaN or infinite training loss does
    limit_train_batches: Any = None  # int: that many batches; float in (0, 1]: that share of them
    limit_val_batches: Any = None
    fast_dev_run: bool = False  # one train and one val batch, one epoch, no checkpoints
    overfit_batches: int = 0  # train and validate on the same first N training batches
    # Each validation is a metrics.csv row (epoch, step); best.ckpt, top-k, patience and plateau count validations
    val_every_n_epochs: int = 1  # validate after every N-th epoch (and always after the run's last)
    val_check_interval: Any = None  # also inside those epochs: float in (0, 1] = share of an epoch, int = optimizer steps
    max_steps: Optional[int] = None  # stop after this many optimizer steps (or at max_epochs, whichever comes first)
    # every N-th optimizer step's train loss, lr and gradient norm to metrics_steps.csv (and TensorBoard, MLflow,
    # W&B when chosen), read from the device once per N steps; 0 or null: off
    log_every_n_steps: Optional[int] = 50
    # on this signal: last.ckpt at the next optimizer step, then exit with status 75 ("requeue me"); the same
    # command continues the run. SIGUSR1 (SLURM's --signal), SIGUSR2, SIGTERM, ...; null: off
    checkpoint_signal: Optional[str] = "SIGUSR1"


@dataclass
class CheckpointSettings:
    save_top_k: int = 0  # also keep the k best epochs as epoch-NNN_<monitor>-<value>.ckpt
    every_n_steps: Optional[int] = None  # also write last.ckpt inside epochs every N optimizer steps (resume= continues there)
    every_minutes: Optional[float] = None  # also write last.ckpt inside epochs every M minutes (rank 0's clock)


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
    progress: bool = True  # rich progress bar (only drawn on a terminal)
    resume: Optional[str] = None  # a run directory or checkpoint to continue; auto: hydra.run.dir's last.ckpt if any


@dataclass
class LrPreviewConfig(TrainConfig):
    output: Optional[str] = None  # the PNG's path; null: lr_schedule.png in the preview's own run directory


@dataclass
class EvaluateConfig:
    ckpt_path: str = MISSING  # required: a checkpoint of a run (best.ckpt, last.ckpt or an epoch file)
    device: str = "auto"  # auto (a CUDA GPU if there is one, else cpu) | cpu | cuda | cuda:N
    progress: bool = True  # accepted for symmetry with training; evaluate draws no progress bar
    output: Optional[str] = None  # the metrics JSON; null: <checkpoint stem>.metrics.json beside the checkpoint


@dataclass
class PredictConfig:
    ckpt_path: Any = MISSING  # required: a checkpoint or exported model, a run dir (its best.ckpt), a sweep dir (each job's best.ckpt) or a list '[a,b]': several = one ensemble
    input: str = MISSING  # required: a folder (every image under it), a CSV with a column of paths, or one image
    output: str = "predictions.csv"  # the CSV written (its folders are created)
    overwrite: bool = False  # an existing output file is refused unless true
    ensemble: str = "mean"  # mean | geometric (mean of log-probabilities, renormalised) of the models' probabilities, each after its TTA; regression: mean
    tta: str = "none"  # none | flip (+ mirror) | flip+shift (+ the image moved tta_shift px right, left, down, up, reflect-padded) | five_crop (FiveCrop after the resize)
    tta_shift: int = 4  # flip+shift: the translation in pixels of the model's input
    batch_size: int = 64  # images per forward pass
    num_workers: Optional[int] = None  # null: one per CPU core this process may use
    device: str = "auto"  # auto (a CUDA GPU if there is one, else cpu) | cpu | cuda | cuda:N
    path_column: Optional[str] = None  # CSV input: the column of paths (null: the training CSV's path_column, else "path")
    image_dir: Optional[str] = None  # CSV input: the paths are relative to it (null: the CSV's folder)
    path_suffix: Optional[str] = None  # CSV input: appended to each path (null: the training CSV's data.path_suffix, else none)
    skip_bad_files: bool = False  # true: leave out unreadable images with a warning instead of stopping
    # the submission format; rows follow a CSV input's order
    id_column: Optional[str] = None  # the id column's header; null: "path", the input CSV's path column, or input_id_column
    id_values: str = "path"  # path (as given) | name (file name) | stem (file name without extension) | column (the input CSV's input_id_column)
    input_id_column: Optional[str] = None  # id_values=column: the input CSV's column whose values are the ids
    label_column: Optional[str] = None  # the predicted label's header; null: "prediction"
    labels: str = "name"  # name (the class name) | index (the class index, 0-based)
    probabilities: bool = True  # one probability column per class after the label
    sample_submission: Optional[str] = None  # a CSV whose columns (ids, then a label and/or class columns) and row order the output takes


@dataclass
class ExportConfig:
    ckpt_path: str = MISSING  # required: a checkpoint of a run (best.ckpt, last.ckpt or an epoch file)
    format: str = "onnx"  # onnx (needs pip install 'trainer[export]') | torchscript
    output: Optional[str] = None  # the model file; null: beside the checkpoint, <stem>.onnx or <stem>.torchscript.pt
    overwrite: bool = False  # an existing model file (or its .json) is refused unless true
    check_batches: int = 4  # validation batches the exported model is compared with PyTorch on (and one single image)
    tolerance: float = 1e-4  # the largest |difference| of probabilities (regression: values) the check accepts


# The schema of each command's own config (conf/<name>.yaml), whose --help lists its settings.
COMMAND_SCHEMAS = {"evaluate": EvaluateConfig, "predict": PredictConfig, "export": ExportConfig}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="lr_preview_schema", node=LrPreviewConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="export_schema", node=ExportConfig)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(name=f"{group}_{name}_schema", node=node)



def with_current_defaults(stored: Dict[str, Any]) -> Dict[str, Any]:
    """A config stored in a checkpoint, with the keys added to the schema since it was written set to their
    defaults (a run saved before `data.cache` or `trainer.max_steps` existed still evaluates and resumes).
    Only keys the stored config lacks are filled; nothing it holds changes."""
    filled = dict(stored)
    sections = {"trainer": TrainerSettings, "checkpoint": CheckpointSettings}
    data = stored.get("data") or {}
    if data.get("name") in SCHEMAS["data"]:  # the data options are named by their option
        sections["data"] = SCHEMAS["data"][data["name"]]
    for key, schema in sections.items():
        filled[key] = {**field_defaults(schema), **(stored.get(key) or {})}
    model = stored.get("model") or {}
    if model.get("name") == "cnn" and "pools" not in model:  # saved before model.pools: the layout it was trained with
        filled["model"] = {**model, "pools": 1}
    return filled
