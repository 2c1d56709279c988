"""What the loop is told to do (`LoopSettings`, made from the config by run.assembly) and its one rule for
"better" (the monitored value against the best so far, in the run's mode, by more than min_delta)."""

import math
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class LoopSettings:
    max_epochs: int = 1
    accumulate: int = 1
    precision: str = "32"  # 32 | bf16 | fp16
    grad_clip_norm: Optional[float] = None
    grad_clip_value: Optional[float] = None
    channels_last: bool = False
    on_nonfinite: str = "stop"  # stop | skip
    monitor: str = "val/loss"
    mode: str = "min"
    patience: Optional[int] = None  # validations without improvement
    min_delta: float = 0.0
    save_top_k: int = 0
    save_checkpoints: bool = True
    val_every_n_epochs: int = 1
    val_check_interval: Any = None  # float: share of an epoch; int: optimizer steps; None: at epoch ends only
    max_steps: Optional[int] = None
    log_every_n_steps: Optional[int] = None  # per-step scalars (step_scalars.py); None or 0: off


def is_better(value: float, best: Optional[float], mode: str, min_delta: float = 0.0) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta
