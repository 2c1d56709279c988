"""logger=mlflow: one MLflow run per training run, through MlflowClient (no global active run, so the jobs
of a sweep in one process never share one).

params: the resolved config, flattened. metrics: every record the Engine delivers, at step = its epoch (or
its optimizer step, for a validation inside an epoch). tags: the command line's overrides, the run directory,
the sweep. artifacts when the run ends: curves.png, summary.json, metrics.csv, the per-class reports, and
best.ckpt with `log_checkpoint`. A resumed run reopens the MLflow run named in tracking.json.
"""

import logging
import os
import time
from typing import Any, Dict, Iterable, List, Optional

from trainer.errors import UserError
from trainer.reporting.tracking import RunContext, Tracker, flat_params, numbers, override_tags, read_state, record_step, require, run_files, step_numbers, unreachable, write_state

log = logging.getLogger("trainer")
# MLflow's limits per log_batch request, and on a param's value
BATCH_METRICS, BATCH_PARAMS, PARAM_LENGTH = 1000, 100, 6000
STATUS = {"completed": "FINISHED", "stopped_early": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


def default_tracking_uri(cwd: str) -> str:
    """A SQLite database under the working directory's outputs/ (the store MLflow recommends; its file store
    is deprecated), whatever directory the run itself is in."""
    return "sqlite:///" + os.path.join(os.path.abspath(cwd), "outputs", "mlflow.db")


def sqlite_path(uri: str) -> Optional[str]:
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None


class MlflowTracker(Tracker):
    def __init__(self, settings, cfg, context: RunContext):
        require("mlflow", "mlflow")
        self.settings, self.cfg, self.context = settings, cfg, context
        stored = read_state(context.run_dir).get("mlflow") if context.resumed else None
        self.stored: Optional[Dict[str, Any]] = stored if isinstance(stored, dict) else None
        # a resumed run continues where it was tracked, even when started from another directory
        self.uri: str = (self.stored or {}).get("tracking_uri") or settings.tracking_uri or default_tracking_uri(context.cwd)
        self.run_id: Optional[str] = None
        self.broken: Optional[str] = None
        self.summary: Optional[Dict[str, Any]] = None
        self.client = None
        self.experiment_id = None
        self._starting(self._connect)  # before any data is read: an unreachable store stops the run at once

    # --- start ---------------------------------------------------------------------------------
    def _starting(self, step) -> None:
        """A failure before training stops the run (fail_on_error) or turns the tracker off with a warning."""
        if self.broken:
            return
        try:
            step()
        except UserError:
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            message = f"logger=mlflow cannot use the tracking URI {self.uri} ({reason})"
            if self.settings.fail_on_error:
                raise UserError(f"{message}; start the tracking server or fix logger.mlflow.tracking_uri, or set "
                                "logger.mlflow.fail_on_error=false to train without MLflow") from error
            self.broken = reason
            log.warning(f"{message}; training goes on without MLflow (logger.mlflow.fail_on_error=false)")

    def _connect(self) -> None:
        reason = unreachable(self.uri)
        if reason is not None:
            raise ConnectionError(reason)
        database = sqlite_path(self.uri)
        if database is not None:
            os.makedirs(os.path.dirname(os.path.abspath(database)) or ".", exist_ok=True)
        logging.getLogger("alembic").setLevel(logging.WARNING)  # the database's schema migrations, line by line
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        stored_id, found = (self.stored or {}).get("experiment_id"), None
        if stored_id is not None:  # a resumed run: its own experiment, if the store still has it
            try:
                found = self.client.get_experiment(stored_id)
            except Exception:
                found = None  # gone, or the store is unreachable: the lookup by name below says which
        active = found is not None and found.lifecycle_stage == "active"
        self.experiment_id = found.experiment_id if active else self._experiment(self.settings.experiment_name)

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage != "active":
                raise UserError(f"MLflow experiment '{name}' at {self.uri} is deleted; restore it "
                                "(mlflow experiments restore) or choose another logger.mlflow.experiment_name")
            return found.experiment_id
        database = sqlite_path(self.uri)
        # artifacts beside a SQLite database, not in ./mlruns of whichever directory the run started from
        location = "file://" + os.path.join(os.path.dirname(os.path.abspath(database)), "mlartifacts") if database else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it meanwhile (the jobs of a parallel sweep)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def on_fit_start(self, engine, train_batches, val_batches) -> None:
        self._starting(lambda: self._open_run(engine))
        if self.run_id is not None and engine.history:  # epochs tracked before an interruption are not repeated
            self._guarded("logging the epochs before the resume", lambda: self._backfill(engine))

    def _open_run(self, engine) -> None:
        params = {key: value[:PARAM_LENGTH] for key, value in flat_params(self.cfg).items()}
        self.run_id = (self.stored or {}).get("run_id")
        if self.run_id is not None and self._reopen(self.run_id, params, engine.epoch):
            log.info(f"MLflow: continuing run {self.run_id} of experiment '{self.settings.experiment_name}' at {self.uri}")
            return
        self.run_id = None
        tags = {**override_tags(self.context.overrides), "run_dir": self.context.run_dir}
        if self.context.sweep_dir is not None:
            tags.update({"sweep": self.context.sweep_dir, "sweep.job": str(self.context.job)})
        run = self.client.create_run(self.experiment_id, run_name=self.settings.run_name or self.context.name, tags=tags)
        self.run_id = run.info.run_id
        write_state(self.context.run_dir, "mlflow", {
            "tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id})
        self._log_params(params)
        log.info(f"MLflow: run {self.run_id} of experiment '{self.settings.experiment_name}' at {self.uri}")

    def _reopen(self, run_id: str, params: Dict[str, str], epoch: int) -> bool:
        """Continue the stored run; False (with a warning) when the store no longer has it."""
        try:
            run = self.client.get_run(run_id)
        except Exception as error:
            log.warning(f"MLflow: run {run_id} of tracking.json is not at {self.uri} ({type(error).__name__}); "
                        "starting a new run")
            return False
        if run.info.lifecycle_stage != "active":
            log.warning(f"MLflow: run {run_id} was deleted; starting a new run")
            return False
        self.client.update_run(run_id, status="RUNNING")
        logged = run.data.params
        changed = {key: value for key, value in params.items() if key in logged and logged[key] != value}
        self._log_params({key: value for key, value in params.items() if key not in logged})
        # a param cannot change in MLflow: the settings a resume may change are kept as tags
        tags = {f"resumed.{key}": value for key, value in changed.items()}
        tags["resumed.at_epoch"] = str(epoch)
        tags.update({"resume.overrides": " ".join(self.context.overrides)})
        self._log_batch(tags=tags)
        return True

    def _backfill(self, engine) -> None:
        logged = {metric.step for metric in self.client.get_metric_history(self.run_id, engine.monitor)}
        missing = [record for record in engine.history if record_step(record) not in logged]
        self._log_records(missing)

    # --- during the run ------------------------------------------------------------------------
    def on_epoch_end(self, engine, record, improved) -> None:
        self._guarded(f"logging epoch {record.get('epoch')}", lambda: self._log_records([record]))

    def on_train_steps(self, engine, rows) -> None:
        """Per-step numbers (where the run logs them), at step = their optimizer step."""
        if rows:
            steps = [{"step": row["step"], **step_numbers(row)} for row in rows]
            self._guarded(f"logging steps {rows[0]['step']}-{rows[-1]['step']}", lambda: self._log_records(steps))

    def on_fit_end(self, engine, summary) -> None:
        self.summary = summary

    def on_run_end(self, engine) -> None:
        """After the end-of-run reports: upload the run's files and close the MLflow run with its status."""
        if self.run_id is None:
            return
        summary = self.summary or {"status": "failed"}
        self._guarded("uploading the run's files", self._upload)
        tags = {"status": str(summary["status"]), "best_epoch": str(summary.get("best_epoch")),
                "best_value": str(summary.get("best_value"))}
        self._guarded("closing the run", lambda: (
            self._log_batch(tags=tags),
            self.client.set_terminated(self.run_id, STATUS.get(summary["status"], "FAILED")),
        ))

    def _upload(self) -> None:
        for name in run_files(self.context.run_dir, self.settings.log_checkpoint):
            folder = os.path.dirname(name) or None
            self.client.log_artifact(self.run_id, os.path.join(self.context.run_dir, name), artifact_path=folder)

    # --- helpers -------------------------------------------------------------------------------
    def _guarded(self, what: str, action) -> None:
        """Run a call to MLflow; its first failure is warned about and ends the tracking, never the run."""
        if self.broken or self.run_id is None:
            return
        try:
            action()
        except Exception as error:
            self.broken = f"{type(error).__name__}: {error}"
            log.warning(f"MLflow: {what} failed ({self.broken}); the run goes on without MLflow, and its own "
                        f"files in {self.context.run_dir} are complete")

    def _log_records(self, records: Iterable[Dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, record_step(record))
                   for record in records for key, value in numbers(record).items()]
        for start in range(0, len(metrics), BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH_METRICS])

    def _log_params(self, params: Dict[str, str]) -> None:
        from mlflow.entities import Param

        items: List[Any] = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=items[start:start + BATCH_PARAMS])

    def _log_batch(self, tags: Dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, value) for key, value in tags.items()])
