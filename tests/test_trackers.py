"""logger=mlflow and logger=wandb, read back with the real clients: MlflowClient on the SQLite store, and the
offline W&B run files (decoded with W&B's own protobuf records). Real training runs in subprocesses, tiny."""

import glob
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env, compose_train, read_csv, read_json

TINY = ("trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "progress=false")
# never online: W&B offline without an account, no MLflow usage telemetry
OFFLINE = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "WANDB_SILENT": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}


def client_of(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")


def only_run(client, experiment: str = "trainer"):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [run.info.run_id for run in runs]
    return runs[0]


def history(client, run_id: str, key: str) -> list:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def csv_columns(run_dir: Path) -> dict:
    """metrics.csv as key -> [(step, value)] for every number: step = the row's optimizer step where metrics.csv
    has one (a `step` column), else its epoch."""
    rows = read_csv(run_dir / "metrics.csv")
    return {key: [(int(row.get("step") or row["epoch"]), float(row[key]) if row[key] != "" else math.nan) for row in rows]
            for key in rows[0] if key not in ("epoch", "step")}


def assert_history_is_metrics_csv(client, run_id: str, run_dir: Path) -> None:
    columns = csv_columns(run_dir)
    assert set(columns) <= set(client.get_run(run_id).data.metrics), columns.keys()
    for key, expected in columns.items():
        logged = history(client, run_id, key)
        assert [step for step, _ in logged] == [epoch for epoch, _ in expected], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-12, nan_ok=True), key


def flat(node, prefix=""):
    """The test's own flattening of .hydra/config.yaml, to compare the params with."""
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


# --- start-up: failures, extras, keys ------------------------------------------------------------
def test_unreachable_tracking_uri_stops_the_run_before_training(cli, tmp_path):
    uri = "http://127.0.0.1:9"  # the discard port: nothing listens
    result = cli("trainer", "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", *TINY, "hydra.run.dir=run", env_extra=OFFLINE)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and uri in lines[0], result.stderr
    assert "logger.mlflow.fail_on_error=false" in lines[0]
    assert not (tmp_path / "run" / "metrics.csv").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("logger, extra", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_extra_is_one_message_naming_it(monkeypatch, tmp_path, logger, extra):
    import importlib.util

    from trainer.errors import UserError
    from trainer.reporting.callbacks import run_callbacks

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == extra else real(name, *a))
    cfg = compose_train(f"logger=[tensorboard,{logger}]")
    with pytest.raises(UserError, match=rf"logger={logger} needs the {extra} package.*pip install -e '\.\[{extra}\]'"):
        run_callbacks(cfg, str(tmp_path))


def test_trackers_are_imported_only_when_chosen(tmp_path):
    code = (
        "import sys\nsys.path.insert(0, 'tests')\nfrom conftest import compose_train\n"
        "from trainer.reporting.callbacks import run_callbacks\n"
        f"for choice in ('logger=none', 'logger=tensorboard'):\n"
        f"    print(choice, [type(c).__name__ for c in run_callbacks(compose_train(choice), {str(tmp_path)!r})])\n"
        "print('LOADED', sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], env=cli_env(),
                         capture_output=True, text=True, timeout=120)
    assert "LOADED []" in out.stdout, out.stdout + out.stderr
    assert "logger=tensorboard ['EpochLog', 'CsvWriter', 'CurvesPlot', 'StepCsvWriter', 'TensorBoardWriter']" in out.stdout


def test_the_key_check_knows_each_loggers_own_keys_and_several_loggers_at_once():
    from trainer.config.schema import CONF_DIR
    from trainer.run.command_line import unknown_keys_problem

    def problem(*args):
        return unknown_keys_problem(["trainer", *args], CONF_DIR)

    assert problem("logger=[tensorboard,mlflow,wandb]", "logger.tensorboard.log_dir=tb", "logger.mlflow.tracking_uri=x",
                   "logger.wandb.mode=offline") is None
    assert "did you mean logger.mlflow.tracking_uri?" in problem("logger=[tensorboard,mlflow]", "logger.mlflow.trackin_uri=x")
    assert "did you mean logger.tensorboard.log_dir?" in problem("logger=tensorboard", "logger.log_dir=tb")  # the old key
    assert "logger.wandb.mode is not a key of logger=mlflow (only of logger=wandb)" in problem("logger=mlflow", "logger.wandb.mode=x")
    assert "logger.mlflow.tracking_uri is not a key of logger=[tensorboard,wandb]" in problem(
        "logger=[tensorboard,wandb]", "logger.mlflow.tracking_uri=x")


# --- W&B files, and all three loggers in one run ---------------------------------------------------
def wandb_records(path: Path) -> list:
    """The records of a .wandb file (W&B's LevelDB-style log: 32 KiB blocks of chunks, each with a 7-byte header
    crc32c, length, type FULL/FIRST/MIDDLE/LAST), decoded by W&B's own protobuf Record. wandb ships no reader."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(path: Path) -> list:
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def wandb_run_record(path: Path):
    return next(r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run")


def offline_runs(run_dir: Path, run_id: str) -> list:
    return sorted(Path(p) for p in glob.glob(str(run_dir / "wandb" / f"offline-run-*-{run_id}")))


def assert_wandb_history_is_metrics_csv(rows: list, run_dir: Path) -> None:
    columns = csv_columns(run_dir)
    for key, expected in columns.items():
        logged = [(row.get("step", row["epoch"]), row[key]) for row in rows if key in row and "step/" not in key]
        assert [step for step, _ in logged] == [step for step, _ in expected], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-12, nan_ok=True), key


def test_three_loggers_at_once_read_back_with_their_own_clients(cli, tmp_path):
    """One run with logger=[tensorboard,mlflow,wandb]: MLflow's run (params, metrics, tags, artifacts) read with
    MlflowClient from the default SQLite store; W&B's offline run (no account) read from its .wandb file."""
    import yaml

    run_dir = tmp_path / "run"
    overrides = ["logger=[tensorboard,mlflow,wandb]", *TINY]
    result = cli("trainer", *overrides, f"hydra.run.dir={run_dir}", env_extra=OFFLINE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    client = client_of(tmp_path)  # the default store: outputs/mlflow.db under the working directory
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert read_json(run_dir / "tracking.json")["mlflow"]["run_id"] == run.info.run_id
    # params: the resolved config, flattened
    with open(run_dir / ".hydra" / "config.yaml") as f:
        config = flat({key: value for key, value in yaml.safe_load(f).items() if key != "resume"})
    params = run.data.params
    assert set(params) == set(config)
    assert params["trainer.max_epochs"] == "2" and params["optimizer.name"] == "adamw"
    assert params["logger.tensorboard.log_dir"] == "tensorboard" and params["data.class_fraction"] == "null"
    assert float(params["optimizer.lr"]) == config["optimizer.lr"]
    # metrics: every column of metrics.csv, one value per epoch at step = epoch
    assert_history_is_metrics_csv(client, run.info.run_id, run_dir)
    # tags: the overrides as given (Hydra's own left out), each key's value, the run directory
    tags = run.data.tags
    assert tags["overrides"] == " ".join(overrides)
    assert tags["override.trainer.max_epochs"] == "2" and tags["override.logger"] == "[tensorboard,mlflow,wandb]"
    assert tags["run_dir"] == str(run_dir) and tags["status"] == "completed"
    assert tags["mlflow.runName"] == "run"
    # artifacts: the run's pictures, reports and summary; no checkpoint unless asked for
    names = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "summary.json", "metrics.csv", "confusion_matrix.png", "confusion_matrix.csv",
            "per_class.csv", "per_class.json"} <= names
    assert "checkpoints" not in names
    downloaded = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
    assert read_json(Path(downloaded)) == read_json(run_dir / "summary.json")
    assert Path(run.info.artifact_uri.replace("file://", "")).is_relative_to(tmp_path / "outputs")

    # W&B, offline without an account: the run id of tracking.json, the history equal to metrics.csv
    run_id = read_json(run_dir / "tracking.json")["wandb"]["id"]
    (folder,) = offline_runs(run_dir, run_id)
    assert f"wandb sync run/wandb/{folder.name}" in result.stdout  # how to upload it later
    log_file = folder / f"run-{run_id}.wandb"
    assert_wandb_history_is_metrics_csv(wandb_history(log_file), run_dir)
    wandb_run = wandb_run_record(log_file)
    assert wandb_run.run_id == run_id and wandb_run.project == "trainer" and wandb_run.display_name == "run"
    assert set(wandb_run.tags) == set(overrides)
    config = {item.key: json.loads(item.value_json) for item in wandb_run.config.update}
    assert config["trainer"]["max_epochs"] == 2 and config["logger"]["wandb"]["mode"] is None
    saved = {p.name for p in (folder / "files").iterdir()}
    assert {"curves.png", "summary.json", "metrics.csv", "confusion_matrix.png"} <= saved


# --- slow: resume, sweeps, failures ----------------------------------------------------------------
@pytest.mark.slow
def test_a_resumed_run_continues_the_same_mlflow_run(cli, tmp_path):
    run_dir = tmp_path / "run"
    first = cli("trainer", "logger=mlflow", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", env_extra=OFFLINE)
    assert first.returncode == 0, first.stdout + first.stderr
    client = client_of(tmp_path)
    run_id = only_run(client).info.run_id
    resumed = cli("trainer", f"resume={run_dir}", "trainer.max_epochs=2", env_extra=OFFLINE)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = only_run(client)  # still one run
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert_history_is_metrics_csv(client, run_id, run_dir)
    assert len(history(client, run_id, "val/f1")) == 2
    assert run.data.params["trainer.max_epochs"] == "1"  # a param never changes in MLflow
    assert run.data.tags["resumed.trainer.max_epochs"] == "2" and run.data.tags["resumed.at_epoch"] == "1"


@pytest.mark.slow
def test_a_sweeps_jobs_are_runs_of_one_experiment_tagged_with_the_sweep(cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = cli("trainer", "-m", "logger=mlflow", "logger.mlflow.experiment_name=lrs", "optimizer.lr=0.01,0.003",
                 *TINY, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep_dir}", env_extra=OFFLINE)
    assert result.returncode == 0, result.stdout + result.stderr
    client = client_of(tmp_path)
    experiment = client.get_experiment_by_name("lrs")
    runs = sorted(client.search_runs([experiment.experiment_id]), key=lambda run: run.data.tags["sweep.job"])
    assert [run.data.tags["sweep.job"] for run in runs] == ["0", "1"]
    assert {run.data.tags["sweep"] for run in runs} == {str(sweep_dir)}
    assert [run.data.params["optimizer.lr"] for run in runs] == ["0.01", "0.003"]
    for job, run in enumerate(runs):
        assert run.info.status == "FINISHED"
        assert_history_is_metrics_csv(client, run.info.run_id, sweep_dir / str(job))


@pytest.mark.slow
def test_an_unreachable_tracking_uri_only_warns_with_fail_on_error_false(cli, tmp_path):
    uri = "http://127.0.0.1:9"
    result = cli("trainer", "logger=[mlflow,tensorboard]", f"logger.mlflow.tracking_uri={uri}",
                 "logger.mlflow.fail_on_error=false", *TINY, "hydra.run.dir=run", env_extra=OFFLINE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"logger=mlflow cannot use the tracking URI {uri}" in result.stdout
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "completed"
    assert len(read_csv(tmp_path / "run" / "metrics.csv")) == 2


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_wandb_run(cli, tmp_path):
    run_dir = tmp_path / "run"
    first = cli("trainer", "logger=wandb", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
                env_extra=OFFLINE)
    assert first.returncode == 0, first.stdout + first.stderr
    run_id = read_json(run_dir / "tracking.json")["wandb"]["id"]
    resumed = cli("trainer", f"resume={run_dir}", "trainer.max_epochs=2", env_extra=OFFLINE)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert read_json(run_dir / "tracking.json")["wandb"]["id"] == run_id
    folders = offline_runs(run_dir, run_id)  # offline, a continuation is a second folder of the same run id
    assert len(folders) == 2
    parts = [wandb_history(folder / f"run-{run_id}.wandb") for folder in folders]
    assert [[row["epoch"] for row in part] for part in parts] == [[1], [2]]
    assert all(wandb_run_record(folder / f"run-{run_id}.wandb").run_id == run_id for folder in folders)
    assert_wandb_history_is_metrics_csv(parts[0] + parts[1], run_dir)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_tracking_server_lost_mid_run_costs_the_run_nothing(tmp_path):
    """A real MLflow server, stopped after the first epoch: the run trains to its end with a warning, its own
    files complete, and what reached the server is the first epochs of metrics.csv."""
    import signal
    import time
    import urllib.request

    port, database = free_port(), tmp_path / "server.db"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{database}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--artifacts-destination", str(tmp_path / "served")],
        cwd=tmp_path, env=dict(cli_env(), **OFFLINE), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    trainer = None
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        env = dict(cli_env(), **OFFLINE, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
        run_dir = tmp_path / "run"
        trainer = subprocess.Popen(
            [sys.executable, "-m", "trainer", "logger=mlflow", f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}",
             *TINY, "trainer.max_epochs=4", f"hydra.run.dir={run_dir}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while not ((run_dir / "metrics.csv").exists() and len(read_csv(run_dir / "metrics.csv")) >= 1):
            assert trainer.poll() is None, trainer.stdout.read()
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        output, _ = trainer.communicate(timeout=600)
    finally:
        for process in (server, trainer):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL) if process is server else process.kill()
    assert trainer.returncode == 0, output
    assert "the run goes on without MLflow" in output, output
    assert read_json(run_dir / "summary.json")["status"] == "completed"
    assert len(read_csv(run_dir / "metrics.csv")) == 4
    assert (run_dir / "checkpoints" / "best.ckpt").exists() and (run_dir / "curves.png").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{database}")  # what the server had stored
    run = only_run(client)
    logged = history(client, run.info.run_id, "val/loss")
    expected = csv_columns(run_dir)["val/loss"][:len(logged)]
    assert 1 <= len(logged) < 4 and logged == expected


@pytest.mark.slow
def test_per_step_numbers_go_to_mlflow_at_their_optimizer_step(tmp_path, monkeypatch):
    """on_train_steps (the per-step train loss, lr and gradient norm, where the run logs them) and records that
    carry their optimizer step: MLflow gets them at that step, the per-step ones as step/<name>."""
    from types import SimpleNamespace

    from trainer.reporting.mlflow_tracker import MlflowTracker
    from trainer.reporting.tracking import RunContext

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'steps.db'}"
    cfg = compose_train("logger=mlflow", f"logger.mlflow.tracking_uri={uri}")
    context = RunContext(str(tmp_path), str(tmp_path), ["logger=mlflow"], None, None, False)
    tracker = MlflowTracker(cfg.logger.mlflow, cfg, context)
    engine = SimpleNamespace(history=[], epoch=0, monitor="val/f1")
    tracker.on_fit_start(engine, 4, 1)
    rows = [{"step": step, "epoch": 1, "train/loss": 1.0 / step, "lr": 0.01, "grad_norm": 2.0 * step} for step in (2, 4)]
    tracker.on_train_steps(engine, rows)
    tracker.on_epoch_end(engine, {"epoch": 1, "step": 4, "lr": 0.01, "val/f1": 0.5, "seconds": 1.0}, True)
    tracker.on_fit_end(engine, {"status": "completed", "best_epoch": 1, "best_value": 0.5})
    tracker.on_run_end(engine)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = read_json(tmp_path / "tracking.json")["mlflow"]["run_id"]
    assert history(client, run_id, "step/train_loss") == [(2, 0.5), (4, 0.25)]
    assert history(client, run_id, "step/grad_norm") == [(2, 4.0), (4, 8.0)]
    assert history(client, run_id, "step/lr") == [(2, 0.01), (4, 0.01)]
    assert history(client, run_id, "val/f1") == [(4, 0.5)]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_per_step_numbers_go_to_wandb_over_the_optimizer_step(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from trainer.reporting.tracking import RunContext
    from trainer.reporting.wandb_tracker import WandbTracker

    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    cfg = compose_train("logger=wandb")
    context = RunContext(str(tmp_path), str(tmp_path), ["logger=wandb"], None, None, False)
    tracker = WandbTracker(cfg.logger.wandb, cfg, context)
    engine = SimpleNamespace(history=[], epoch=0, monitor="val/f1")
    tracker.on_fit_start(engine, 4, 1)
    tracker.on_train_steps(engine, [{"step": step, "epoch": 1, "train/loss": 1.0 / step, "lr": 0.01, "grad_norm": 2.0 * step}
                                    for step in (2, 4)])
    tracker.on_epoch_end(engine, {"epoch": 1, "step": 4, "lr": 0.01, "val/f1": 0.5, "seconds": 1.0}, True)
    tracker.on_fit_end(engine, {"status": "completed", "best_epoch": 1, "best_value": 0.5})
    tracker.on_run_end(engine)
    import wandb

    wandb.teardown()  # W&B's service writes the file: stopped, it has written all (a process's exit does the same)
    run_id = read_json(tmp_path / "tracking.json")["wandb"]["id"]
    (folder,) = offline_runs(tmp_path, run_id)
    rows = wandb_history(folder / f"run-{run_id}.wandb")
    assert [(row["step"], row["step/train_loss"], row["step/grad_norm"]) for row in rows if "step/train_loss" in row] == [
        (2, 0.5, 4.0), (4, 0.25, 8.0)], rows
    assert [(row["step"], row["epoch"], row["val/f1"]) for row in rows if "val/f1" in row] == [(4, 1, 0.5)]
