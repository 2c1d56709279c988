"""`python -m trainer resume=<run dir or checkpoint>`: continue a run in its own directory, with its stored config."""

import os
from typing import Any, Dict, Sequence, Tuple

from trainer.config.schema import with_current_defaults
from trainer.engine.place import current_place
from trainer.errors import UserError

# Overrides that may accompany resume=: they change how or how long the run goes, not what it computes.
RESUMABLE_OVERRIDES = ("trainer.max_epochs", "trainer.device", "progress", "data.num_workers", "data.cache", "data.cache_dir")


def checkpoint_of(target: str) -> str:
    return os.path.join(target, "checkpoints", "last.ckpt") if os.path.isdir(target) else target


def run_dir_of(checkpoint: str) -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))


def load_resume_state(cfg, task_overrides: Sequence[str], run_dir: str) -> Tuple[Any, Dict[str, Any]]:
    """The stored config (with the allowed overrides applied) and the checkpoint to continue from."""
    from omegaconf import OmegaConf

    from trainer.checkpointing.checkpoint import read_checkpoint

    checkpoint = checkpoint_of(cfg.resume)
    state = read_checkpoint(checkpoint, what="checkpoint to resume")
    needed = ("config", "model", "optimizer", "scheduler", "epoch", "history", "rng")
    missing = [key for key in needed if not (isinstance(state, dict) and key in state)]
    if missing:
        raise UserError(f"'{checkpoint}' cannot be resumed: it lacks {', '.join(missing)} (not a trainer checkpoint?)")
    if state.get("mid_epoch"):  # a best or top-k checkpoint of a validation inside an epoch (val_check_interval)
        raise UserError(
            f"'{checkpoint}' was saved at a validation inside epoch {state['epoch'] + 1} (optimizer step "
            f"{state.get('optimizer_steps')}); a run resumes from the end of an epoch: resume={run_dir_of(checkpoint)} "
            "continues from its checkpoints/last.ckpt"
        )
    if os.path.abspath(run_dir) != run_dir_of(checkpoint):
        raise UserError(
            f"resume={cfg.resume} continues the run in its own directory {run_dir_of(checkpoint)}; "
            f"don't set hydra.run.dir or -m together with resume"
        )
    given = {}
    for override in task_overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "resume":
            continue
        if key not in RESUMABLE_OVERRIDES:
            raise UserError(
                f"{override} would change the meaning of the resumed run; with resume= only these may be set: "
                f"{', '.join(RESUMABLE_OVERRIDES)}"
            )
        given[key] = OmegaConf.select(cfg, key)
    stored = OmegaConf.create(with_current_defaults(state["config"]))
    for key, value in given.items():
        OmegaConf.update(stored, key, value)
    stored.resume = cfg.resume
    if stored.trainer.max_epochs < state["epoch"]:
        raise UserError(
            f"trainer.max_epochs={stored.trainer.max_epochs} is below the {state['epoch']} epochs already run"
        )
    # Epoch checkpoints written after last.ckpt (a crash between the two writes) are redone on resume;
    # temporary files are what a crash in the middle of a write leaves.
    kept = {entry["file"] for entry in state.get("top_k", [])}
    directory = os.path.dirname(os.path.abspath(checkpoint))
    for name in os.listdir(directory) if current_place().is_main else []:
        stale_epoch = name.startswith("epoch-") and name.endswith(".ckpt") and name not in kept
        if stale_epoch or name.startswith(".tmp-"):
            os.unlink(os.path.join(directory, name))
    return stored, state
