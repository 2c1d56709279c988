"""logger=wandb: one Weights & Biases run per training run.

Offline unless configured: without an API key (WANDB_API_KEY or ~/.netrc) or without a network, the run is
written to <run dir>/wandb/offline-run-*/ for `wandb sync` later; `logger.wandb.mode=online` (or an API key
and a reachable server) logs online. The W&B run id is kept in tracking.json: a resumed run continues it
(offline, its continuation is a second offline-run-* directory of the same id; `wandb sync` uploads both
in order). config: the resolved config; history: every record the Engine delivers, with its epoch (and
optimizer step) as the x-axis; tags: the overrides; group: the sweep; files when the run ends.
"""

import logging
import netrc
import os
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

from trainer.errors import UserError
from trainer.reporting.tracking import RunContext, Tracker, numbers, read_state, require, run_files, step_numbers, unreachable, write_state

log = logging.getLogger("trainer")
MODES = ("online", "offline", "disabled")
TAG_LENGTH = 64  # W&B's limit on a tag


def api_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (how `wandb login` stores it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_mode(setting: Optional[str]) -> str:
    """The mode a run gets: the setting; else WANDB_MODE; else online with an API key and a server that
    answers (one TCP connection, 3 s), offline otherwise."""
    mode = setting or os.environ.get("WANDB_MODE")
    if mode is not None:
        if mode in ("dryrun",):
            return "offline"
        if mode not in MODES:
            raise UserError(f"logger.wandb.mode={mode} is not a W&B mode; choose one of: {', '.join(MODES)} "
                            "(or null: online with an API key and a network, else offline)")
        return mode
    if not api_key_configured():
        log.info("W&B: no API key (WANDB_API_KEY or `wandb login`): logging offline, upload later with `wandb sync`")
        return "offline"
    reason = unreachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    if reason is not None:
        log.info(f"W&B: the server cannot be reached ({reason}): logging offline, upload later with `wandb sync`")
        return "offline"
    return "online"


class WandbTracker(Tracker):
    def __init__(self, settings, cfg, context: RunContext):
        require("wandb", "wandb")
        self.settings, self.cfg, self.context = settings, cfg, context
        stored = read_state(context.run_dir).get("wandb") if context.resumed else None
        self.stored: Optional[Dict[str, Any]] = stored if isinstance(stored, dict) else None
        self.mode = choose_mode(settings.mode)
        self.run = None
        self.broken: Optional[str] = None
        self.summary: Optional[Dict[str, Any]] = None
        self.x_axis: Optional[str] = None  # what W&B draws the numbers over (not its own step counter)

    def on_fit_start(self, engine, train_batches, val_batches) -> None:
        try:
            self.run = self._init(self.mode)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            if self.settings.fail_on_error:
                hint = ("check the API key and the network, set logger.wandb.mode=offline, or "
                        if self.mode == "online" else "")
                raise UserError(f"logger=wandb could not start its {self.mode} run in {self.context.run_dir} ({reason}); "
                                f"{hint}set logger.wandb.fail_on_error=false to train on without it") from error
            if self.mode != "online":
                log.warning(f"W&B: the {self.mode} run could not start ({reason}); training goes on without W&B")
                return
            log.warning(f"W&B: the online run could not start ({reason}); logging offline instead")
            self.mode = "offline"
            try:
                self.run = self._init("offline")
            except Exception as again:
                log.warning(f"W&B: the offline run could not start either ({type(again).__name__}: {again}); "
                            "training goes on without W&B")
                return
        write_state(self.context.run_dir, "wandb", {"id": self.run.id, "project": self.settings.project,
                                                    "entity": self.settings.entity})
        where = os.path.dirname(os.path.abspath(self.run.dir))  # <run dir>/wandb/<offline-run-...>/files -> its folder
        hint = f"; upload with: wandb sync {os.path.relpath(where, self.context.cwd)}" if self.mode == "offline" else ""
        log.info(f"W&B: {'continuing ' if self.stored else ''}run {self.run.id} ({self.mode}) in {where}{hint}")

    def _init(self, mode: str):
        import wandb
        from omegaconf import OmegaConf

        tags = [tag[:TAG_LENGTH] for tag in self.context.overrides if not tag.startswith("resume=")]
        group = os.path.relpath(self.context.sweep_dir, self.context.cwd) if self.context.sweep_dir else None
        run_id = (self.stored or {}).get("id")
        run = wandb.init(
            project=self.settings.project, entity=self.settings.entity, mode=mode, dir=self.context.run_dir,
            id=run_id, resume="allow" if run_id else None,
            name=self.settings.name or self.context.name, group=group, job_type="train",
            tags=None if run_id else tags, config=None if run_id else OmegaConf.to_container(self.cfg, resolve=True),
            reinit="finish_previous",  # a sweep's jobs run in one process: one W&B run each
            settings=wandb.Settings(console="off", quiet=True),  # the trainer's own log and progress bar stay as they are
        )
        return run

    def on_epoch_end(self, engine, record, improved) -> None:
        values = {"epoch": record["epoch"], **numbers(record)}
        if "step" in record:
            values["step"] = record["step"]
        self._guarded(f"logging epoch {record['epoch']}", lambda: self._log([values]))

    def on_train_steps(self, engine, rows) -> None:
        """Per-step numbers (where the run logs them) as step/train_loss, step/lr, ... with their step and epoch."""
        values = [{"step": row["step"], "epoch": row["epoch"], **step_numbers(row)} for row in rows]
        if values:
            self._guarded("logging optimizer steps", lambda: self._log(values))

    def _log(self, rows) -> None:
        if not self.x_axis:  # the optimizer step where the run's numbers carry it, else the epoch
            self.x_axis = "step" if "step" in rows[0] else "epoch"
            self.run.define_metric("*", step_metric=self.x_axis)
        for values in rows:
            self.run.log(values)

    def on_fit_end(self, engine, summary) -> None:
        self.summary = summary

    def on_run_end(self, engine) -> None:
        """After the end-of-run reports: the run's files and summary, then the W&B run is finished."""
        if self.run is None:
            return
        summary = self.summary or {"status": "failed"}

        def save_files():
            for name in run_files(self.context.run_dir, self.settings.log_checkpoint):
                self.run.save(os.path.join(self.context.run_dir, name), base_path=self.context.run_dir, policy="now")
            self.run.summary.update({key: summary.get(key) for key in ("status", "best_epoch", "best_value", "monitor")})

        self._guarded("saving the run's files", save_files)
        run, self.run = self.run, None
        try:
            run.finish(exit_code=0 if summary["status"] in ("completed", "stopped_early") else 1)
        except Exception as error:
            log.warning(f"W&B: finishing run {run.id} failed ({type(error).__name__}: {error}); the run's own files "
                        f"in {self.context.run_dir} are complete")

    def _guarded(self, what: str, action) -> None:
        if self.broken or self.run is None:
            return
        try:
            action()
        except Exception as error:
            self.broken = f"{type(error).__name__}: {error}"
            log.warning(f"W&B: {what} failed ({self.broken}); the run goes on without W&B, and its own files in "
                        f"{self.context.run_dir} are complete")
