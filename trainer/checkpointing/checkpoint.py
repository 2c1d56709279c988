"""Checkpoint files: atomic writes, safe reads, and the random-number state they carry.

A checkpoint is a dict of tensors and plain Python values, so `torch.load(weights_only=True)` can
read it: no pickled code is ever executed when loading one.
"""

import os
import pickle
import random
import tempfile
import zipfile
from typing import Any, Dict, Mapping

import numpy as np
import torch
from torch import nn

from trainer.errors import UserError


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`.

    A crash at any moment leaves either the previous file or the new one, never a partial file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def read_checkpoint(path: str, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; every failure becomes one message naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"{what} '{path}' does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not a checkpoint
        raise UserError(f"{what} '{path}' is not a readable PyTorch file (truncated, or not written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err)
        found = detail[detail.find("Unsupported global"):].split("\n")[0] if "Unsupported global" in detail else ""
        raise UserError(
            f"refusing to load {what} '{path}': it holds pickled objects other than tensors and plain values, "
            f"and loading them could run code. Only weights-only files are accepted. {found}".rstrip()
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(f"{what} '{path}' is not a readable PyTorch file (truncated or corrupt): {str(err)[:200]}") from None


def monitors_ema(monitor: str) -> bool:
    """A run whose monitor is an EMA metric (`val_ema/...`) chooses its checkpoints by the EMA weights."""
    return monitor.startswith("val_ema/")


def chosen_by_ema(ckpt: Mapping[str, Any]) -> bool:
    """Whether the run chose this checkpoint by its EMA weights: it monitored an EMA metric and kept an EMA."""
    return monitors_ema(str(ckpt.get("monitor") or "")) and ckpt.get("ema") is not None


def chosen_weights(ckpt: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The weights a checkpoint was chosen by, which every later use of it runs (evaluate, predict, reports):
    its EMA when the run monitored an EMA metric, else the raw model."""
    return ckpt["ema"] if chosen_by_ema(ckpt) else ckpt["model"]


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict load; a mismatch names every missing, unexpected and wrongly shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        def listed(title, items):
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:10]) + (" ..." if len(items) > 10 else "") if items else ""

        raise UserError(
            f"the weights in '{source}' do not fit this model (another architecture or class count?)"
            + listed("missing keys", missing)
            + listed("unexpected keys", unexpected)
            + listed("shape mismatches", shapes)
        )
    model.load_state_dict(state)


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch generator states as tensors and plain values (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
