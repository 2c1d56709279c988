"""A model to predict with, and the settings its inputs need, from either of two sources:

    a trainer checkpoint   its stored config, class names and the weights it was chosen by
    an exported model      a file `python -m trainer.export` wrote (ONNX or TorchScript) and the
                           JSON beside it (`<model file>.json`: classes, input settings, task)

`load_inference_model(path, device)` tells them apart and returns an `InferenceModel`: what predict
needs to transform and name its inputs, and `load()`, which gives a function from a batch of
transformed images to probabilities (or regression values); the model is loaded only then, once
the inputs are known to be usable. The exported runners are also what `trainer.export` checks a new
file with, so the check runs exactly what predict will run.
"""

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import torch
from omegaconf import DictConfig, OmegaConf

from trainer.checkpointing.checkpoint import chosen_by_ema, chosen_weights, load_model_state, read_checkpoint
from trainer.config.schema import with_current_defaults
from trainer.errors import UserError
from trainer.parts.models import build_model
from trainer.run import checks

CHECKPOINT_KEYS = ("model", "config", "class_names")
EXPORT_FORMATS = ("onnx", "torchscript")
INFO_KEYS = ("format", "model", "task", "class_names", "training_data")
EXPORT_EXTRA = "pip install 'trainer[export]'"


@dataclass
class InferenceModel:
    # load() -> a function of a batch (N, C, H, W) giving probabilities (N, classes) or values (N, 1)
    load: Callable[[], Callable[[torch.Tensor], torch.Tensor]]
    class_names: List[str]
    regression: bool
    model_name: str
    data: DictConfig  # the training data's settings: name, channels, the input settings, a CSV's path_column/path_suffix
    described: str  # what predict's last line adds about the weights: "" or ", EMA weights: ..."


def info_path(model_path: str) -> str:
    """The JSON beside an exported model: its file name with `.json` appended."""
    return model_path + ".json"


def is_exported(path: str) -> bool:
    return path.lower().endswith(".onnx") or os.path.isfile(info_path(path))


def load_inference_model(path: str, device: torch.device) -> InferenceModel:
    if is_exported(path):
        return from_exported(path, device)
    return from_checkpoint(path, device)


def head(raw: torch.Tensor, regression: bool) -> torch.Tensor:
    """A model's raw outputs as predict writes them: the value of a regression model, else softmax probabilities."""
    raw = raw.float()
    return raw.reshape(-1, 1) if regression else torch.softmax(raw, dim=1)


def from_checkpoint(path: str, device: torch.device) -> InferenceModel:

    ckpt = read_checkpoint(path)
    missing = [key for key in CHECKPOINT_KEYS if not (isinstance(ckpt, dict) and key in ckpt)]
    if missing:
        raise UserError(f"'{path}' is not a trainer checkpoint (missing: {', '.join(missing)})")
    run_cfg = OmegaConf.create(with_current_defaults(ckpt["config"]))
    class_names = [str(name) for name in ckpt["class_names"]]
    regression = run_cfg.get("task", "classification") == "regression"

    def load():
        model = checkpoint_model(ckpt, run_cfg, path).to(device)
        return lambda batch: head(model(batch), regression)

    described = f", EMA weights: the run monitored {ckpt['monitor']}" if chosen_by_ema(ckpt) else ""
    return InferenceModel(load, class_names, regression, run_cfg.model.name, run_cfg.data, described)


def checkpoint_model(ckpt: Dict[str, Any], run_cfg: DictConfig, path: str) -> torch.nn.Module:
    """The checkpoint's architecture with the weights it was chosen by (its EMA when the run monitored an EMA
    metric), in eval mode on the CPU. No pretrained or original weights file is read: the checkpoint has them."""
    model_cfg = checks.plain(run_cfg.model)
    model_cfg["weights"] = None
    if "pretrained" in model_cfg:
        model_cfg["pretrained"] = False
    regression = run_cfg.get("task", "classification") == "regression"
    # A regression model has one output, the predicted value; a classifier one logit per class.
    # digits has no data.channels: its images have one.
    model = build_model(model_cfg, in_chans=run_cfg.data.get("channels", 1),
                        num_classes=1 if regression else len(ckpt["class_names"]))
    load_model_state(model, chosen_weights(ckpt), path)
    return model.eval()


def read_info(model_path: str) -> Dict[str, Any]:
    """The JSON `trainer.export` wrote beside the model, checked for what predict needs."""
    path = info_path(model_path)
    if not os.path.isfile(model_path):
        raise UserError(f"exported model '{model_path}' does not exist")
    if not os.path.isfile(path):
        raise UserError(f"'{model_path}' has no '{os.path.basename(path)}' beside it: python -m trainer.export writes "
                        "that file with the classes and input settings, and predict needs it")
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"'{path}' is not readable JSON: {err}") from None
    missing = [key for key in INFO_KEYS if not (isinstance(info, dict) and key in info)]
    if missing:
        raise UserError(f"'{path}' is not the JSON of an exported model (missing: {', '.join(missing)})")
    if info["format"] not in EXPORT_FORMATS:
        raise UserError(f"'{path}' names format {info['format']!r}; predict reads {' and '.join(EXPORT_FORMATS)}")
    return info


def from_exported(path: str, device: torch.device) -> InferenceModel:
    info = read_info(path)
    regression = info["task"] == "regression"

    def load():
        run = onnx_runner(path, device) if info["format"] == "onnx" else torchscript_runner(path, device)
        return lambda batch: head(run(batch), regression)

    described = f", {info['format']} model of the {info.get('weights', 'raw')} weights"
    return InferenceModel(load, [str(c) for c in info["class_names"]], regression, info["model"],
                          OmegaConf.create(info["training_data"]), described)


def onnx_runner(path: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """An onnxruntime session as a function of a torch batch (the outputs come back on the batch's device)."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"running an ONNX model needs onnxruntime: {EXPORT_EXTRA}") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = onnxruntime.InferenceSession(path, providers=providers)
    except Exception as err:  # onnxruntime raises its own types for unreadable or invalid files
        raise UserError(f"'{path}' is not a model onnxruntime can load: {str(err).splitlines()[0][:300]}") from None
    name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {name: batch.detach().to("cpu", torch.float32).contiguous().numpy()})[0]
        return torch.from_numpy(out).to(batch.device)

    return run


def torchscript_runner(path: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
            module = torch.jit.load(path, map_location=device)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"'{path}' is not a TorchScript file torch.jit.load can read: {str(err).splitlines()[0][:300]}") from None
    module.eval()

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(batch.to(device))

    return run
