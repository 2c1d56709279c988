"""The state of a run that an Engine saves and restores (checkpoints), and its summary (summary.json).

Kept beside the Engine, not in it: the loop reads top to bottom in engine.py, and what a checkpoint
holds is listed here, in one place. A checkpoint is a dict of tensors and plain values only.
"""

from typing import Any, Dict, Optional

from trainer.checkpointing.checkpoint import rng_state
from trainer.engine.distributed import unwrap


def state_of(engine) -> Dict[str, Any]:
    """What a checkpoint holds: weights, optimizer, schedule and the run's progress, as tensors and plain values."""
    return {
        "model": unwrap(engine.model).state_dict(),
        "optimizer": engine.optimizer.state_dict(),
        "scheduler": engine.schedule.state_dict(),
        "scaler": engine.scaler.state_dict(),
        "ema": None if engine.ema is None else engine.ema.module.state_dict(),
        "epoch": engine.epoch,
        "optimizer_steps": engine.optimizer_steps,
        "monitor": engine.loop.monitor,
        "mode": engine.loop.mode,
        "best_value": engine.best_value,
        "best_epoch": engine.best_epoch,
        "best_step": engine.best_step,
        "bad_epochs": engine.bad_epochs,
        "mid_epoch": engine.inside_epoch,  # inside an epoch: resumable only with its epoch_position (last.ckpt)
        "epoch_position": engine.position,  # a step checkpoint's place in its epoch (engine/step_checkpoints.py)
        "since_record": engine.since_record.state(),
        "skipped_steps": engine.skipped_steps,
        "top_k": engine.files.top_k,
        "history": engine.history,
        **own_rng(engine),
        "rank_rng": engine._rank_rng,
        **engine.run_info,
    }


def load_into(engine, state: Dict[str, Any]) -> None:
    """Continue from a checkpoint written by `state_of` (the model weights included)."""
    unwrap(engine.model).load_state_dict(state["model"])
    engine.optimizer.load_state_dict(state["optimizer"])
    engine.schedule.load_state_dict(state["scheduler"])
    engine.scaler.load_state_dict(state["scaler"])
    if engine.ema is not None and state.get("ema") is not None:
        engine.ema.module.load_state_dict(state["ema"])
    for key in ("epoch", "optimizer_steps", "best_value", "best_epoch", "bad_epochs", "skipped_steps", "history"):
        setattr(engine, key, state[key])
    engine.best_step = state.get("best_step")
    engine.position = state.get("epoch_position")  # the epoch continues from there
    engine.since_record.load(state.get("since_record"), engine.device)
    engine.files.top_k = state["top_k"]
    ranks = state.get("rank_rng") or []  # a rank the checkpoint lacks (more processes) keeps its fresh seeding
    own = state if engine.place.rank == 0 else ranks[engine.place.rank] if len(ranks) == engine.place.world_size else None
    # Checkpoints of earlier versions also hold "loader_rng", the loader generator's state: the training order
    # no longer draws from it (it is a function of the seed and the epoch), so it is not read.
    engine._resumed_rng = None if own is None else own["rng"]


def own_rng(engine) -> Dict[str, Any]:
    """This process's random streams: Python, numpy and torch (the training order is not one: trainer.data.sampling)."""
    return {"rng": rng_state()}


def summary_of(engine, status: str, error: Optional[str] = None) -> Dict[str, Any]:
    """summary.json: how the run ended and its best validation."""
    summary = {
        "status": status,
        "monitor": engine.loop.monitor,
        "mode": engine.loop.mode,
        "best_epoch": engine.best_epoch,
        "best_step": engine.best_step,
        "best_value": engine.best_value,
        "epochs_run": engine.epoch,
        "steps_run": engine.optimizer_steps,
        "final": engine.history[-1] if engine.history else {},
    }
    if engine.skipped_steps:
        summary["skipped_nonfinite_steps"] = engine.skipped_steps
    if status == "stopped_early":
        summary["reason"] = (
            f"{engine.loop.monitor} did not improve by more than {engine.loop.min_delta} for {engine.loop.patience} "
            "validations (trainer.patience counts validations, not epochs)"
        )
    elif engine.stop_reason is not None:
        summary["reason"] = engine.stop_reason
    if error is not None:
        summary["error"] = error
    return summary
