"""`python -m trainer.export`: real training runs exported by the real exporters (torch.onnx, torch.jit),
read back by onnxruntime and torch.jit.load, and `python -m trainer.predict` from the exported files."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, cli_env, read_csv, read_json, run_module
from image_files import write_image_folder

CHECK_LINE = re.compile(r"^check: (.+) vs PyTorch on (\d+) validation images .*max abs difference of (\w+) (\S+) "
                        r"\(tolerance (\S+)\)$", re.MULTILINE)


def digits_validation(ckpt):
    """The run's validation images and labels, rebuilt from its stored config."""
    from omegaconf import OmegaConf

    from trainer.run import assembly

    data = assembly.build_data(OmegaConf.create(ckpt["config"]), torch.device("cpu"))
    images, labels = zip(*data.val_loader)
    return torch.cat(images), torch.cat(labels)


def torch_probabilities(ckpt, state, images):
    """An independent reference: the run's architecture, `state` loaded as it is, in eval mode."""
    from trainer.parts.models import build_model

    model = build_model(dict(ckpt["config"]["model"], weights=None), in_chans=1, num_classes=10)
    model.load_state_dict(state)
    with torch.no_grad():
        return torch.softmax(model.eval()(images), dim=1).numpy()


def onnx_probabilities(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": images.numpy()})
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def test_onnx_export_of_an_ema_run_runs_the_ema_weights_and_describes_its_input(ema_run, tmp_path):
    ckpt_path = ema_run / "checkpoints" / "best.ckpt"
    result = run_module("trainer.export", f"ckpt_path={ckpt_path}", "format=onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    model, info_file = ema_run / "checkpoints" / "best.onnx", ema_run / "checkpoints" / "best.onnx.json"
    assert f"written: {model}" in result.stdout and f"written: {info_file}" in result.stdout
    runtime, checked, compared, difference, tolerance = CHECK_LINE.search(result.stdout).groups()
    assert runtime.startswith("onnxruntime ") and compared == "probabilities"
    assert 0 <= float(difference) <= 1e-4 and float(tolerance) == 1e-4
    assert int(checked) == 4 * 64 + 1  # check_batches=4 of data.batch_size=64, and one single image

    info = read_json(info_file)
    assert info["format"] == "onnx" and info["file"] == "best.onnx" and info["model"] == "cnn"
    assert info["task"] == "classification" and info["class_names"] == [str(d) for d in range(10)]
    assert info["weights"] == "ema" and info["epoch"] == 1 and info["monitor"] == "val_ema/f1"
    assert info["image_size"] == 8 and info["channels"] == 1 and info["input"]["shape"] == ["batch", 1, 8, 8]
    assert info["output"]["name"] == "logits" and info["check"]["max_abs_difference"] == pytest.approx(float(difference), rel=1e-2)
    # The mean and std are those the run normalised its digits by (the training split's, 80% of all): every
    # digit normalised by them has a mean near 0 and a spread near 1.
    from sklearn.datasets import load_digits

    normalised = (load_digits().images / 16 - info["mean"][0]) / info["std"][0]
    assert abs(normalised.mean()) < 0.02 and abs(normalised.std() - 1) < 0.02

    # onnxruntime, on every validation image in one batch of another size than the export's, gives the EMA's
    # probabilities, not the raw weights'.
    ckpt = torch.load(ckpt_path, weights_only=True)
    images, _ = digits_validation(ckpt)
    exported = onnx_probabilities(model, images)
    assert np.abs(exported - torch_probabilities(ckpt, ckpt["ema"], images)).max() <= 1e-4
    assert np.abs(exported - torch_probabilities(ckpt, ckpt["model"], images)).max() > 0.05


def compose_export(*overrides: str):
    from hydra import compose, initialize_config_dir

    from trainer.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("export", overrides=list(overrides))


def test_bad_requests_are_refused_in_one_line_and_nothing_is_overwritten(tmp_path):
    from trainer.errors import UserError
    from trainer.export import export

    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"not read: refused before")
    earlier = tmp_path / "model.onnx.json"
    earlier.write_text("an earlier export's")
    cases = [  # in process, on the config Hydra composes
        (("ckpt_path=missing/best.ckpt",), "checkpoint 'missing/best.ckpt' does not exist"),
        ((f"ckpt_path={ckpt}", "format=tflite"), "format=tflite is not valid; use one of: onnx, torchscript"),
        ((f"ckpt_path={ckpt}", "check_batches=0"), "check_batches=0 is not valid; use an integer >= 1"),
        ((f"ckpt_path={ckpt}", f"output={tmp_path}"), f"output={tmp_path} is a folder; name the model file"),
        ((f"ckpt_path={ckpt}", f"output={tmp_path / 'model.onnx'}"), f"{earlier} already exists; choose another output="),
    ]
    for args, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            export(compose_export(*args))

    existing = tmp_path / "best.onnx"  # the default output, beside the checkpoint: through the real command
    existing.write_bytes(b"an earlier export")
    result = run_module("trainer.export", f"ckpt_path={ckpt}", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"error: {existing} already exists; choose another output=, or set overwrite=true to replace it\n"
    assert existing.read_bytes() == b"an earlier export" and earlier.read_text() == "an earlier export's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "best.onnx", "model.onnx.json"]


def test_missing_onnx_packages_name_the_extra_to_install(tmp_path, monkeypatch):
    """As if onnxruntime were not installed (a None entry in sys.modules makes its import fail)."""
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"not read: refused before")
    code = ("import runpy, sys\nsys.modules['onnxruntime'] = None\n"
            f"sys.argv = ['trainer.export', 'ckpt_path={ckpt}', 'output={tmp_path / 'model.onnx'}']\n"
            "runpy.run_module('trainer.export', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "format=onnx needs the packages onnx, onnxruntime, onnxscript (onnxruntime is missing" in result.stderr
    assert "pip install 'trainer[export]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    from trainer.deployment.inference_model import onnx_runner
    from trainer.errors import UserError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # predict, given a .onnx file
    with pytest.raises(UserError, match=re.escape("running an ONNX model needs onnxruntime: pip install 'trainer[export]'")):
        onnx_runner(str(tmp_path / "model.onnx"), torch.device("cpu"))


# --- slow: TorchScript, a failed check, predict from exported files, an architecture the exporter fails on ---
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*torch.jit.load.* is deprecated:FutureWarning")
def test_torchscript_export_runs_the_ema_weights_and_a_failed_check_keeps_nothing(ema_run, tmp_path):
    ckpt_path = ema_run / "checkpoints" / "best.ckpt"
    output = tmp_path / "deploy" / "model.pt"
    result = run_module("trainer.export", f"ckpt_path={ckpt_path}", "format=torchscript", f"output={output}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    runtime, _, _, difference, _ = CHECK_LINE.search(result.stdout).groups()
    assert runtime.startswith("torch.jit.load") and float(difference) <= 1e-4
    info = read_json(tmp_path / "deploy" / "model.pt.json")
    assert info["format"] == "torchscript" and info["weights"] == "ema" and info["file"] == "model.pt"

    ckpt = torch.load(ckpt_path, weights_only=True)
    images, _ = digits_validation(ckpt)
    module = torch.jit.load(str(output))
    with torch.no_grad():
        exported = torch.softmax(module(images), dim=1).numpy()
    assert np.abs(exported - torch_probabilities(ckpt, ckpt["ema"], images)).max() <= 1e-4

    # No tolerance at all: onnxruntime's kernels differ from PyTorch's in the last bits, so the check fails,
    # says by how much in one line, and leaves no file behind.
    failed = run_module("trainer.export", f"ckpt_path={ckpt_path}", f"output={tmp_path / 'strict.onnx'}", "tolerance=0",
                        cwd=tmp_path)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    difference = float(CHECK_LINE.search(failed.stdout).group(4))
    assert difference > 0
    assert re.fullmatch(r"error: the exported model's probabilities differ from PyTorch's by up to \S+, more than "
                        r"tolerance=0; nothing was written \(raise tolerance= to keep it anyway\)", failed.stderr.strip())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]


TRAIN_ARGS = ("data=image_folder", "data.image_size=16", "data.num_workers=0", "data.batch_size=16", "model.width=8",
              "trainer.max_epochs=1", "progress=false")


@pytest.mark.slow
def test_predict_from_the_exported_files_writes_the_checkpoints_predictions(tmp_path):
    write_image_folder(tmp_path / "digits", per_class=8)
    result = run_module("trainer", *TRAIN_ARGS, "data.root=digits", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    for fmt in ("onnx", "torchscript"):
        exported = run_module("trainer.export", f"ckpt_path={ckpt}", f"format={fmt}", cwd=tmp_path)
        assert exported.returncode == 0, exported.stdout + exported.stderr
    info = read_json(tmp_path / "run" / "checkpoints" / "best.onnx.json")
    assert (info["image_size"], info["channels"], info["color_mode"], info["interpolation"], info["crop_pct"]) == \
        (16, 3, "RGB", "bilinear", 1.0)
    assert info["mean"] == [0.5] * 3 and info["std"] == [0.5] * 3 and info["weights"] == "raw"

    outputs = {}
    for name, source in (("checkpoint", ckpt), ("onnx", ckpt.with_suffix(".onnx")),
                         ("torchscript", ckpt.with_suffix(".torchscript.pt"))):
        result = run_module("trainer.predict", f"ckpt_path={source}", "input=digits", f"output={name}.csv", "num_workers=0",
                            "tta=flip", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert name == "checkpoint" or f"tta=flip, {name} model of the raw weights)" in result.stdout
        outputs[name] = read_csv(tmp_path / f"{name}.csv")
    classes = [str(d) for d in range(10)]
    reference = outputs.pop("checkpoint")
    assert len(reference) == 80
    for name, rows in outputs.items():
        assert list(rows[0]) == list(reference[0]) == ["path", "prediction", *classes]
        assert [(r["path"], r["prediction"]) for r in rows] == [(r["path"], r["prediction"]) for r in reference], name
        difference = max(abs(float(a[c]) - float(b[c])) for a, b in zip(rows, reference) for c in classes)
        assert difference <= 1e-4, name


@pytest.mark.slow
def test_an_architecture_the_onnx_exporter_fails_on_is_named_with_its_reason(tmp_path):
    """timm's test_vit_relpos (a 0.75M-parameter ViT with relative position biases): torch 2.14's ONNX
    exporter cannot translate one of its views. The reason comes in one line; nothing is written."""
    write_image_folder(tmp_path / "digits", classes=(0, 1), per_class=4)
    result = run_module("trainer", "data=image_folder", "data.root=digits", "data.num_workers=0", "data.batch_size=4",
                        "model=timm", "model.name=test_vit_relpos", "trainer.max_epochs=1", "progress=false", "hydra.run.dir=run",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    failed = run_module("trainer.export", f"ckpt_path={ckpt}", cwd=tmp_path)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    message = failed.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: model test_vit_relpos cannot be exported to ONNX by torch ")
    assert "ValueError: Cannot view a tensor with shape" in message and "(format=torchscript may work)" in message
    assert not list((tmp_path / "run" / "checkpoints").glob("*.onnx*"))
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
