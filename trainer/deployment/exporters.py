"""A trained model as a file to deploy: ONNX (torch.onnx's exporter, the torch.export-based one) or
TorchScript (torch.jit.trace), the check of that file against PyTorch, and the JSON a deployer reads.

Both files take one input, `image` (batch, channels, size, size) float32, with a dynamic batch axis,
and give `logits` (batch, classes), or `prediction` (batch, 1) for task=regression.
"""

import math
import os
import traceback
import warnings
from typing import Any, Callable, Dict, Iterable, List

import torch

from trainer.data.transforms import resolve_input
from trainer.deployment.inference_model import EXPORT_EXTRA, head
from trainer.errors import UserError
from trainer.run.checks import INPUT_KEYS, plain

ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
INPUT_NAME = "image"


def output_name(regression: bool) -> str:
    return "prediction" if regression else "logits"


def require_onnx_packages() -> None:
    """format=onnx needs the exporter's packages, which are an extra: one message naming it."""
    import importlib

    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UserError(f"format=onnx needs the packages {', '.join(ONNX_PACKAGES)} ({name} is missing or broken: "
                            f"{err}): {EXPORT_EXTRA}") from None


def exporter_reason(err: BaseException) -> str:
    """The exporter's own reason in one line: the innermost exception of the chain (torch.onnx wraps the
    real one in errors whose text is advice on filing a bug), where it was raised if it says nothing."""
    first = strip_ansi(str(err)).strip().split("\n")[0]
    step = first.split(". ")[0].rstrip(".") if first else type(err).__name__
    root, seen = err, {id(err)}
    while True:
        inner = root.__cause__ or root.__context__
        if inner is None or id(inner) in seen:
            break
        root = inner
        seen.add(id(inner))
    text = strip_ansi(str(root)).strip().split("\n")[0]
    if not text:
        frames = traceback.extract_tb(root.__traceback__)
        text = f"raised in {frames[-1].filename}:{frames[-1].lineno}" if frames else "(no message)"
    reason = f"{type(root).__name__}: {text}"
    return reason if root is err else f"{step}: {reason}"


def strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str, regression: bool, model_name: str) -> None:
    """torch.onnx.export with dynamo=True (torch's recommended exporter, offline), weights inside the file."""
    import logging

    # The exporter's graph passes log each step at INFO, which the command's stdout logging would show.
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's notes on its own internals
            torch.onnx.export(model, (example,), path, dynamo=True, verbose=False, external_data=False,
                              input_names=[INPUT_NAME], output_names=[output_name(regression)],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as err:  # the exporter raises many types; each is this model's reason
        raise UserError(f"model {model_name} cannot be exported to ONNX by torch {torch.__version__.split('+')[0]}: "
                        f"{exporter_reason(err)} (format=torchscript may work)") from None


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: str, model_name: str) -> None:
    """torch.jit.trace: records the operations of one forward pass, which any model of this trainer is
    (no data-dependent control flow at inference); the check then runs other batch sizes. The tracer's
    warnings that a recorded Python value might not generalise are left unsaid: the check is what tells."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, example)
            torch.jit.save(traced, path)
    except Exception as err:
        raise UserError(f"model {model_name} cannot be traced to TorchScript: {exporter_reason(err)}") from None


def max_difference(reference: torch.nn.Module, exported: Callable[[torch.Tensor], torch.Tensor],
                   batches: Iterable[torch.Tensor], regression: bool) -> tuple:
    """(largest |difference| of probabilities, or values, between PyTorch and the exported model; images compared)."""
    worst, images = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            expected, got = head(reference(batch), regression), head(exported(batch), regression)
            if got.shape != expected.shape:
                raise UserError(f"the exported model gave outputs of shape {tuple(got.shape)} for a batch of "
                                f"{len(batch)}, PyTorch {tuple(expected.shape)}")
            difference = (expected.double() - got.double()).abs().max().item()
            worst = difference if math.isnan(difference) else max(worst, difference)
            images += len(batch)
            if math.isnan(worst):
                break
    return worst, images


def input_settings(run_cfg, data, model_name: str) -> Dict[str, Any]:
    """What an image must go through before the model, as the run's evaluation transform does it."""
    from trainer.run.checks import INPUT_KEYS

    settings = run_cfg.data
    if "channels" in settings:  # image files: timm's evaluation transform
        spec = resolve_input(model_name, settings.channels, *(settings[key] for key in INPUT_KEYS))
        size, resized = spec["image_size"], math.floor(spec["image_size"] / spec["crop_pct"])
        mode = "RGB" if spec["channels"] == 3 else "L"
        steps = (f"convert to {mode}; resize the shorter side to {resized} ({spec['interpolation']}); center-crop "
                 f"{size}x{size}; scale pixel values to [0, 1]; subtract mean and divide by std, per channel")
        return dict(image_size=size, channels=spec["channels"], color_mode=mode, mean=list(spec["mean"]),
                    std=list(spec["std"]), interpolation=spec["interpolation"], crop_pct=spec["crop_pct"],
                    preprocess=steps)
    # digits: scikit-learn's 8x8 arrays of 0..16, normalised by the training split's statistics
    size = int(settings.get("image_size", 8))
    mean, std = data.tensor_normalisation or (None, None)
    resize = "" if size == 8 else f"resize to {size}x{size} (bilinear, align_corners=False); "
    steps = f"scikit-learn digits arrays (8x8, values 0..16): divide by 16; {resize}subtract mean and divide by std"
    return dict(image_size=size, channels=data.in_chans, color_mode="L", mean=[mean], std=[std],
                interpolation="bilinear" if size != 8 else None, crop_pct=None, preprocess=steps)


def training_data(run_cfg) -> Dict[str, Any]:
    """The part of the run's data config predict reads: its name, and for image files the channels, the
    input settings and a CSV's path column and suffix (predict's defaults for CSV inputs)."""

    settings = plain(run_cfg.data)
    keep = ("name", "channels", *INPUT_KEYS) + (("path_column", "path_suffix") if settings.get("name") == "csv" else ())
    return {key: settings[key] for key in keep if key in settings}


def deployment_info(fmt: str, model_file: str, ckpt_path: str, ckpt: Dict[str, Any], run_cfg, data, model_name: str,
                    weights: str, check: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON beside the model: everything needed to feed it and read its outputs, and where it came from."""
    regression = run_cfg.get("task", "classification") == "regression"
    inputs = input_settings(run_cfg, data, model_name)
    classes = [str(name) for name in ckpt["class_names"]]
    output = ("the predicted value" if regression else
              "one logit per class, in the order of class_names; softmax over the last axis gives the probabilities")
    return {
        "format": fmt,
        "file": os.path.basename(model_file),
        "model": model_name,
        "task": "regression" if regression else "classification",
        "class_names": classes,
        "weights": weights,
        **{key: inputs[key] for key in ("image_size", "channels", "color_mode", "mean", "std", "interpolation",
                                         "crop_pct", "preprocess")},
        "input": {"name": INPUT_NAME, "shape": ["batch", inputs["channels"], inputs["image_size"], inputs["image_size"]],
                  "dtype": "float32"},
        "output": {"name": output_name(regression), "shape": ["batch", 1 if regression else len(classes)],
                   "meaning": output},
        "checkpoint": os.path.abspath(ckpt_path),
        "epoch": ckpt["epoch"],
        "monitor": ckpt.get("monitor"),
        "training_data": training_data(run_cfg),
        "check": check,
        "torch": torch.__version__,
    }


def first_batches(loader, count: int) -> List[torch.Tensor]:
    """The inputs of the loader's first `count` batches (float32, on the CPU)."""
    batches: List[torch.Tensor] = []
    for inputs, _ in loader:
        batches.append(inputs.float().cpu())
        if len(batches) == count:
            break
    return batches


def example_batch(batches: List[torch.Tensor]) -> torch.Tensor:
    """Two images to trace with: a batch of one would let the exporter treat the batch size as fixed."""
    first = batches[0]
    return first[:2] if len(first) >= 2 else torch.cat([first, first])
