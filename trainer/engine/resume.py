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


def auto_resume_target(run_dir: str):
    """resume=auto: the run directory when it holds checkpoints/last.ckpt (continue it), else None (start there)."""
    return run_dir if os.path.isfile(os.path.join(run_dir, "checkpoints", "last.ckpt")) else None


def _differs(given: Any, stored: Any) -> bool:
    """A value of the command line against the resumed run's stored one (paths are stored absolute; a group's
    option by its name)."""
    if isinstance(stored, dict) and "name" in stored:  # a group's option: data=image_folder
        return str(given) != str(stored["name"])
    if hasattr(given, "__len__") and not isinstance(given, str):  # a DictConfig or ListConfig: as plain values
        from omegaconf import OmegaConf

        given = OmegaConf.to_container(given, resolve=True)
    if isinstance(given, str) and isinstance(stored, str) and os.path.isabs(stored):
        return os.path.abspath(os.path.expanduser(given)) != stored
    return given != stored and str(given) != str(stored)


def load_resume_state(cfg, task_overrides: Sequence[str], run_dir: str, auto: bool = False) -> Tuple[Any, Dict[str, Any]]:
    """The stored config (with the allowed overrides applied) and the checkpoint to continue from. `auto`
    (resume=auto): the command line is the one that started the run, so its settings may be given again as
    they were; one that differs from the stored run's is refused as with resume=<dir>."""
    from omegaconf import OmegaConf

    from trainer.checkpointing.checkpoint import read_checkpoint

    checkpoint = checkpoint_of(cfg.resume)
    state = read_checkpoint(checkpoint, what="checkpoint to resume")
    needed = ("config", "model", "optimizer", "scheduler", "epoch", "history", "rng")
    missing = [key for key in needed if not (isinstance(state, dict) and key in state)]
    if missing:
        raise UserError(f"'{checkpoint}' cannot be resumed: it lacks {', '.join(missing)} (not a trainer checkpoint?)")
    if state.get("mid_epoch") and state.get("epoch_position") is None:  # best or top-k of a validation inside an epoch
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
    stored_config = with_current_defaults(state["config"])
    for override in task_overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "resume":
            continue
        if auto and key not in RESUMABLE_OVERRIDES:
            stored_value = OmegaConf.select(OmegaConf.create(stored_config), key)
            stored_value = OmegaConf.to_container(stored_value) if hasattr(stored_value, "items") else stored_value
            given_value = value if isinstance(stored_value, dict) else OmegaConf.select(cfg, key)
            if not _differs(given_value, stored_value):
                continue
            shown = stored_value.get("name") if isinstance(stored_value, dict) else stored_value
            raise UserError(
                f"resume=auto: {run_dir} holds a run with {key}={shown}, not {value}; the same command "
                f"continues it (only {', '.join(RESUMABLE_OVERRIDES)} may change), or choose a new hydra.run.dir"
            )
        if key not in RESUMABLE_OVERRIDES:
            raise UserError(
                f"{override} would change the meaning of the resumed run; with resume= only these may be set: "
                f"{', '.join(RESUMABLE_OVERRIDES)}"
            )
        given[key] = OmegaConf.select(cfg, key)
    stored = OmegaConf.create(stored_config)
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
