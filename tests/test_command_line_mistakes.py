"""The command line's mistakes end in one line and exit 2, before anything is created: misspelt or added
keys, pretrained weights without a network, a SLURM launcher without SLURM. Also where lr_preview writes,
the CUDA_HOME notice of torch.compile on a CPU, sweep.png's axis for bounded metrics, and builders that
state no defaults of their own."""

import inspect
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import cli_env


def assert_one_line_refusal(result, *phrases):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


# --- keys -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, phrases", [
    # Hydra's own hint for the first one is "+trainer.max_epoch=3", which then trained with the key unused
    (["trainer.max_epoch=3"], ["trainer.max_epoch is not a config key", "did you mean trainer.max_epochs?"]),
    (["trainer.max_epochs=1", "+trainer.max_epoch=3"], ["trainer.max_epoch is not a config key", "did you mean trainer.max_epochs?", "+ and ++"]),
    (["trainer.max_epochs=1", "++trainer.max_epoch=3"], ["did you mean trainer.max_epochs?"]),
    (["-m", "trainer.max_epoch=1,2"], ["did you mean trainer.max_epochs?"]),
    (["-m", "trainer.max_epochs=1", "+trainer.max_epoch=1,2"], ["did you mean trainer.max_epochs?"]),
    (["trainer.max_epochs=1", "+max_epoch=3"], ["max_epoch is not a config key", "did you mean trainer.max_epochs?"]),
    (["trainer.max_epochs=1", "+trainer.lr=0.1"], ["did you mean optimizer.lr?"]),
    (["trainer.max_epochs=1", "+sed=1"], ["did you mean seed?"]),
    (["trainer.max_epochs=1", "+checkpoint.save_top=2"], ["did you mean checkpoint.save_top_k?"]),
    (["trainer.max_epochs=1", "+metric.name=[f1]"], ["did you mean metric.names?"]),
    (["trainer.max_epochs=1", "logger=tensorboard", "+logger.tensorboard.logdir=tb"], ["did you mean logger.tensorboard.log_dir?"]),
    (["trainer.max_epochs=1", "+loss.gama=1"], ["did you mean loss.gamma (a key of loss=focal)?"]),
    # the valid keys depend on the chosen options: those of the command line, and of task and experiment
    (["data=image_folder", "data.rot=x"], ["data.rot is not a config key", "did you mean data.root?"]),
    (["data.root=x"], ["data.root is not a key of data=digits", "(only of data=image_folder)"]),
    (["trainer.max_epochs=1", "+optimizer.momentum=0.5"], ["optimizer.momentum is not a key of optimizer=adamw", "optimizer=sgd"]),
    (["trainer.max_epochs=1", "task=regression", "+loss.delta=2"], ["loss.delta is not a key of loss=mse", "loss=huber"]),
    (["-m", "trainer.max_epochs=1", "loss=ce,focal", "loss.gamma=1"], ["loss.gamma is not a key of loss=ce,focal", "loss=focal"]),
    (["trainer.max_epochs=1", "+zzzz=1"], ["zzzz is not a config key", "the top-level keys are", "trainer"]),
])
def test_unknown_keys_are_refused_with_the_closest_valid_key(cli, tmp_path, args, phrases):
    result = cli("trainer", *args, timeout=120)
    assert_one_line_refusal(result, *phrases)
    assert not (tmp_path / "outputs").exists()  # refused before Hydra creates a run directory


def test_valid_keys_of_every_heading_are_accepted(cli):
    result = cli("trainer", "--cfg", "job", "data=image_folder", "data.root=x", "data.class_fraction={a: 0.5}",
                 "loss=focal", "loss.gamma=3", "optimizer.betas=[0.9,0.99]", "scheduler.t_max=3", "metric.names=[f1]",
                 "trainer.max_epochs=2", "checkpoint.save_top_k=1", "seed=3", "hydra.job.chdir=false",
                 "experiment=focal_cosine")
    assert result.returncode == 0, result.stderr
    assert "gamma: 3" in result.stdout and "root: x" in result.stdout
    # an experiment that picks loss=focal makes loss.gamma valid without loss=focal on the command line
    result = cli("trainer", "--cfg", "job", "experiment=focal_cosine", "loss.gamma=3")
    assert result.returncode == 0, result.stderr


def test_keys_of_a_sweepers_search_space_or_hydra_are_left_to_them():
    from trainer.config.schema import CONF_DIR
    from trainer.run.command_line import chosen_options, command_line_overrides, unknown_keys_problem

    argv = ["trainer", "-m", "hparams_search=optuna", "loss.gamma=1", "hydra.sweeper.n_trials=3", "+hydra.foo=1"]
    assert chosen_options(command_line_overrides(argv), CONF_DIR)["loss"] is None  # the search space picks it
    assert unknown_keys_problem(argv, CONF_DIR) is None
    completion = ["trainer", "-sc", "query=bash"]
    assert unknown_keys_problem(completion, CONF_DIR) is None


def test_lr_preview_refuses_unknown_keys_too(cli, tmp_path):
    assert_one_line_refusal(cli("trainer.lr_preview", "trainer.max_epoch=3"), "did you mean trainer.max_epochs?")
    assert not (tmp_path / "outputs").exists()


# --- pretrained weights without a network -----------------------------------------------------------
def hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("env, phrases", [
    ({"HF_HUB_OFFLINE": "1"}, ["HF_HUB_OFFLINE is set"]),
    ({"HF_HUB_OFFLINE": None}, ["huggingface.co:443 cannot be reached"]),
])
def test_pretrained_weights_offline_fail_fast_in_one_line(tmp_path, env, phrases):
    if env["HF_HUB_OFFLINE"] is None and hub_reachable():
        pytest.skip("this machine reaches huggingface.co: the weights would be downloaded")
    run_env = dict(cli_env(), HF_HOME=str(tmp_path / "hf"))  # an empty cache
    for key, value in env.items():
        if value is None:
            run_env.pop(key, None)
        else:
            run_env[key] = value
    result = subprocess.run([sys.executable, "-m", "trainer", "model=timm", "model.name=resnet18", "model.pretrained=true",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=run_env, capture_output=True,
                            text=True, timeout=300)
    assert_one_line_refusal(result, "pretrained weights for 'resnet18'", "not in the local cache", "model.weights=", *phrases)
    assert "Retrying" not in result.stdout + result.stderr
    # No wall-clock bound here (imports and data dominate, and a busy machine stretches them): the builder's
    # own time, where huggingface_hub's retries would show, is checked below.


BUILD_PRETRAINED = """
import json, sys, time
from trainer.parts.models import timm_model
started = time.monotonic()
try:
    model = timm_model("resnet18", True, None, 0.0, in_chans=1, num_classes=10)
    outcome = {"built": True, "stem": model.conv1.weight.sum().item(), "layer4": model.layer4[1].conv2.weight.sum().item()}
except Exception as err:
    outcome = {"built": False, "error": str(err)}
outcome["seconds"] = time.monotonic() - started
print("OUTCOME", json.dumps(outcome))
"""


def build_pretrained(tmp_path, **env):
    run_env = dict(cli_env(), HF_HOME=str(tmp_path / "hf"), **env)
    run_env.pop("HF_HUB_OFFLINE")
    result = subprocess.run([sys.executable, "-c", BUILD_PRETRAINED], cwd=tmp_path, env=run_env, capture_output=True,
                            text=True, timeout=300)
    assert "OUTCOME" in result.stdout, result.stderr
    return json.loads(result.stdout.split("OUTCOME", 1)[1]), result


def test_the_builder_gives_up_at_once_when_the_hub_cannot_be_reached(tmp_path):
    outcome, result = build_pretrained(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens on port 9
    assert not outcome["built"] and "model.weights=" in outcome["error"]
    # the probe (connection refused) and a cache lookup: about 1 s on a quiet machine; huggingface_hub's
    # retries took 52 s, so the bound catches them and leaves room for a busy machine
    assert outcome["seconds"] < 40, outcome
    assert "Retrying" not in result.stderr


@pytest.mark.slow
def test_weights_in_the_cache_still_load_when_the_hub_cannot_be_reached(tmp_path):
    """Offline is not an error when timm's weights were downloaded before: they come from the cache."""
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", num_classes=1000)  # random weights stand in for the downloaded ones
    snapshot = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    outcome, result = build_pretrained(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert outcome["built"], outcome
    # timm sums an RGB stem over its channels for one input channel
    assert outcome["stem"] == pytest.approx(source.conv1.weight.sum(dim=1).sum().item(), rel=1e-5, abs=1e-5)
    assert outcome["layer4"] == pytest.approx(source.layer4[1].conv2.weight.sum().item(), rel=1e-5, abs=1e-5)


# --- SLURM ------------------------------------------------------------------------------------------
def test_slurm_launcher_without_slurm_is_one_line(cli, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = cli("trainer", "-m", "hydra/launcher=slurm", "loss=ce,focal", "trainer.max_epochs=1",
                 env_extra={"PATH": str(empty)})
    assert_one_line_refusal(result, "hydra/launcher=slurm", "sbatch and srun are not on PATH",
                            "leave out hydra/launcher=slurm", "torchrun")
    assert not (tmp_path / "outputs").exists()


def test_slurm_check_passes_where_slurm_is(tmp_path, monkeypatch):
    from trainer.run.command_line import slurm_problem

    for command in ("sbatch", "srun"):
        (tmp_path / command).write_text("#!/bin/sh\n")
        (tmp_path / command).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm_problem(["trainer", "-m", "hydra/launcher=slurm", "loss=ce,focal"]) is None
    (tmp_path / "srun").unlink()
    assert "srun is not on PATH" in slurm_problem(["trainer", "-m", "hydra/launcher=slurm"])
    assert slurm_problem(["trainer", "hydra/launcher=slurm"]) is None  # a single run does not use the launcher


# --- lr_preview's files -------------------------------------------------------------------------------
def test_lr_preview_writes_into_its_own_output_directory(cli, tmp_path):
    result = cli("trainer.lr_preview", "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # no lr_schedule.png, no train.log here
    pictures = list((tmp_path / "outputs" / "lr_preview").glob("*/*/lr_schedule.png"))
    assert len(pictures) == 1 and pictures[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    run_dir = pictures[0].parent
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "lr_schedule.png"]  # no empty log
    assert f"written: {pictures[0]}" in result.stdout


def test_lr_preview_writes_only_the_picture_asked_for(cli, tmp_path):
    result = cli("trainer.lr_preview", "trainer.max_epochs=2", "output=pictures/lr.png")
    assert result.returncode == 0, result.stderr
    assert [str(p.relative_to(tmp_path)) for p in sorted(tmp_path.rglob("*"))] == ["pictures", "pictures/lr.png"]
    assert "written: pictures/lr.png" in result.stdout


# --- torch.compile on a CPU -----------------------------------------------------------------------------
def no_gpu_env(tmp_path) -> dict:
    """nvcc on PATH and no usable GPU: what makes torch.utils.cpp_extension warn about CUDA_HOME."""
    bin_dir = tmp_path / "cuda" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "nvcc").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "nvcc").chmod(0o755)
    env = dict(cli_env(), CUDA_VISIBLE_DEVICES="", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key in ("CUDA_HOME", "CUDA_PATH"):
        env.pop(key, None)
    return env


def test_the_cuda_home_notice_is_dropped_and_nothing_else(tmp_path):
    code = ("import logging, trainer.parts.models, torch.utils.cpp_extension\n"
            "logging.getLogger('torch.utils.cpp_extension').warning('another warning stays')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=no_gpu_env(tmp_path), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "CUDA_HOME" not in result.stderr and "No CUDA runtime" not in result.stderr
    assert "another warning stays" in result.stderr


@pytest.mark.slow
def test_compile_on_a_cpu_prints_no_cuda_home_warning(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trainer", "trainer.compile=true", "trainer.device=cpu",
                             "trainer.fast_dev_run=true", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, env=no_gpu_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "CUDA_HOME" not in result.stdout + result.stderr


# --- sweep.png ----------------------------------------------------------------------------------------
def write_sweep(root, values, monitor):
    for job, value in enumerate(values):
        job_dir = root / str(job)
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={0.001 * (job + 1)}\n")
        summary = {"status": "completed", "monitor": monitor, "mode": "min" if monitor.endswith(("loss", "mae")) else "max",
                   "best_epoch": 1, "best_value": value, "epochs_run": 1, "final": {}}
        (job_dir / "summary.json").write_text(json.dumps(summary))


REPORT_AXES = """
import json, sys
from trainer import report
from trainer.reporting import plots
axes = {}
save = plots.save_figure
def recording(fig, path):
    axes[path.rsplit("/", 1)[-1]] = [list(ax.get_xlim()) for ax in fig.axes]
    save(fig, path)
plots.save_figure = recording
report.main([sys.argv[1]])
print("AXES", json.dumps(axes))
"""


@pytest.mark.parametrize("monitor, values, clamped", [
    ("val/accuracy", [1.0, 0.995, 0.99], True),
    ("val/top5", [1.0, 1.0, 0.98], True),
    ("val/r2", [1.0, 0.9], True),
    ("val/loss", [1.0, 0.99], False),  # a loss has no upper bound
])
def test_sweep_picture_axis_stays_within_the_metric_bounds(tmp_path, monitor, values, clamped):
    write_sweep(tmp_path / "sweep", values, monitor)
    result = subprocess.run([sys.executable, "-c", REPORT_AXES, str(tmp_path / "sweep")], cwd=tmp_path, env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (low, high), = json.loads(result.stdout.split("AXES", 1)[1])["sweep.png"]
    assert low < min(values)
    assert high == 1.0 if clamped else high > max(values)


def test_every_classification_metric_is_known_to_be_bounded():
    from trainer.evaluation.metrics import METRICS, REGRESSION_METRICS
    from trainer.reporting.plots import metric_bounds

    assert all(metric_bounds(f"val/{name}") == (0.0, 1.0) for name in METRICS.names())
    assert {name: metric_bounds(f"val/{name}") for name in REGRESSION_METRICS.names()} == {
        "mae": (None, None), "mse": (None, None), "rmse": (None, None), "r2": (None, 1.0)}


# --- builders ---------------------------------------------------------------------------------------
def test_model_builders_state_no_defaults():
    """Every default is stated once, in the schema (trainer/config.py); a builder only takes what it is given."""
    from trainer.parts.models import MODELS, SmallCNN, timm_model

    for builder in [MODELS.get(name) for name in MODELS.names()] + [timm_model, SmallCNN.__init__]:
        defaults = [p.name for p in inspect.signature(builder).parameters.values() if p.default is not inspect.Parameter.empty]
        assert defaults == [], (builder.__qualname__, defaults)


def test_built_in_cnn_builds_from_the_schema_defaults():
    import torch

    from trainer.config.registry import schema_defaults
    from trainer.parts.models import build_model

    model = build_model(schema_defaults("model", "cnn"), in_chans=1, num_classes=10)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
