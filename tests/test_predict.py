"""An image-folder run through the real command line, then evaluate and predict from its checkpoint alone.

The training run and one predict run are real subprocesses; the other predict and evaluate calls run
the same entry functions in process, on a config composed by Hydra, to keep the suite quick.
"""

import shutil

import numpy as np
import pytest
import torch

from conftest import REPO, read_csv, read_json, run_module
from image_files import truncate, write_csv, write_image_folder
from trainer.errors import UserError

TRAIN_ARGS = ("data=image_folder", "data.image_size=16", "data.num_workers=2", "data.batch_size=16", "model.width=8",
              "trainer.max_epochs=2")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A 2-epoch run on 80 small mixed-mode images, started with a relative data.root."""
    root = tmp_path_factory.mktemp("image_run")
    write_image_folder(root / "digits", per_class=8)
    result = run_module("trainer", *TRAIN_ARGS, "data.root=digits", "hydra.run.dir=run", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def compose(config_name: str, *overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    from trainer.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return hydra_compose(config_name, overrides=list(overrides))


def predict(*overrides: str):
    """trainer.predict in process, without loader workers."""
    from trainer.predict import predict as run_predict

    return run_predict(compose("predict", "num_workers=0", *overrides))


def test_checkpoint_config_has_absolute_paths_and_resolved_input(image_run):
    ckpt = torch.load(image_run / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    data = ckpt["config"]["data"]
    assert data["root"] == str(image_run / "digits")
    assert data["image_size"] == 16 and data["mean"] == [0.5] * 3 and data["interpolation"] == "bilinear"
    assert ckpt["class_names"] == [str(d) for d in range(10)]
    assert "data: 64 training and 16 validation images of 10 classes" in (image_run / "run" / "train.log").read_text()


def test_evaluate_reproduces_the_recorded_metrics_from_another_directory(image_run, tmp_path, monkeypatch):
    from trainer.evaluate import evaluate

    monkeypatch.chdir(tmp_path)
    ckpt = image_run / "run" / "checkpoints" / "best.ckpt"
    written = evaluate(compose("evaluate", f"ckpt_path={ckpt}", "output=metrics.json", "progress=false"))
    assert read_json(tmp_path / "metrics.json")["metrics"] == written["metrics"]
    row = read_csv(image_run / "run" / "metrics.csv")[written["epoch"] - 1]
    assert written["metrics"].keys() == {"val/loss", "val/accuracy", "val/f1"}
    for key, value in written["metrics"].items():
        assert abs(value - float(row[key])) <= 1e-6, key


def test_predict_writes_one_row_per_image(image_run, tmp_path):
    ckpt = image_run / "run" / "checkpoints" / "best.ckpt"
    result = run_module("trainer.predict", f"ckpt_path={ckpt}", f"input={image_run / 'digits'}", "output=out/predictions.csv",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "80 images" in result.stdout
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    classes = [str(d) for d in range(10)]
    assert list(rows[0]) == ["path", "prediction", *classes]
    expected = sorted(str(p.relative_to(image_run / "digits")) for p in (image_run / "digits").rglob("*.*"))
    assert [r["path"] for r in rows] == expected  # every image once, in sorted order
    for row in rows:
        prob = [float(row[c]) for c in classes]
        assert abs(sum(prob) - 1) < 1e-4
        assert row["prediction"] == classes[max(range(10), key=prob.__getitem__)]


def test_predict_from_a_csv_with_flip_tta_never_overwrites_by_accident(image_run, tmp_path):
    ckpt = image_run / "run" / "checkpoints" / "best.ckpt"
    images = sorted((image_run / "digits").rglob("*.*"))[:5]
    listing = write_csv(image_run / "some.csv", [(str(p.relative_to(image_run)),) for p in images], header=("file",))
    output = tmp_path / "flip.csv"
    args = (f"ckpt_path={ckpt}", f"input={listing}", "path_column=file", f"output={output}")
    predict(*args, "tta=flip")
    flipped = read_csv(output)
    assert [r["file"] for r in flipped] == [str(p.relative_to(image_run)) for p in images]
    before = output.read_bytes()

    refused = run_module("trainer.predict", *args, cwd=tmp_path)
    assert refused.returncode == 2 and "flip.csv already exists" in refused.stderr and "overwrite=true" in refused.stderr
    assert output.read_bytes() == before

    predict(*args, "overwrite=true")
    plain = read_csv(output)
    assert len(plain) == 5
    assert any(abs(float(a["0"]) - float(b["0"])) > 1e-6 for a, b in zip(plain, flipped))  # the mirror counted


def test_predict_names_a_bad_file_and_leaves_it_out_when_asked(image_run, tmp_path):
    ckpt = image_run / "run" / "checkpoints" / "best.ckpt"
    folder = tmp_path / "new"
    folder.mkdir()
    for path in sorted((image_run / "digits" / "4").iterdir())[:3]:
        shutil.copy(path, folder / path.name)
    broken = folder / "broken.png"
    shutil.copy(sorted(folder.glob("*.png"))[0], broken)
    truncate(broken)
    output = tmp_path / "predictions.csv"
    with pytest.raises(UserError, match="a bad image file") as refused:
        predict(f"ckpt_path={ckpt}", f"input={folder}", f"output={output}")
    assert str(broken) in str(refused.value) and not output.exists()
    predict(f"ckpt_path={ckpt}", f"input={folder}", f"output={output}", "skip_bad_files=true")
    assert [r["path"] for r in read_csv(output)] == sorted(p.name for p in folder.iterdir() if p != broken)


def test_predict_refuses_a_checkpoint_without_image_transform(tmp_path):
    """A digits run has in-memory tensors, not image files: nothing to resize or normalise images with."""
    ckpt = tmp_path / "digits.ckpt"
    torch.save({"model": {}, "class_names": ["0", "1"], "config": {"data": {"name": "digits"}, "model": {"name": "cnn"}}}, ckpt)
    with pytest.raises(UserError, match="was trained on data=digits"):
        predict(f"ckpt_path={ckpt}", f"input={tmp_path}")


def test_predict_reads_a_csv_of_ids_the_way_the_training_csv_was_read(image_run, tmp_path):
    """With neither path_column nor path_suffix given, the training run's data.path_column and data.path_suffix apply."""
    ckpt = torch.load(image_run / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["config"]["data"].update(name="csv", path_column="id", path_suffix=".png")
    torch.save(ckpt, tmp_path / "csv.ckpt")
    ids = [str(p.relative_to(image_run / "digits").with_suffix("")) for p in sorted((image_run / "digits").rglob("*.png"))[:4]]
    listing = write_csv(tmp_path / "test.csv", [(i,) for i in ids], header=("id",))
    output = tmp_path / "submission.csv"
    predict(f"ckpt_path={tmp_path / 'csv.ckpt'}", f"input={listing}", f"image_dir={image_run / 'digits'}", f"output={output}")
    assert [r["id"] for r in read_csv(output)] == ids


# --- the weights a checkpoint was chosen by, and regression --------------------------------------
@pytest.fixture(scope="module")
def split_images(tmp_path_factory):
    """Image folders with a fixed validation folder, so the test knows which images a run validated on."""
    root = tmp_path_factory.mktemp("split_images")
    write_image_folder(root / "train", per_class=8)
    write_image_folder(root / "val", per_class=3, skip=8)
    return root


def train_on(split_images, name, *args):
    run_dir = split_images / name
    result = run_module("trainer", *TRAIN_ARGS, "data.num_workers=0", f"data.root={split_images / 'train'}",
                        f"data.val_root={split_images / 'val'}", "progress=false", f"hydra.run.dir={run_dir}", *args,
                        cwd=split_images)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def best_row(run_dir):
    return read_csv(run_dir / "metrics.csv")[read_json(run_dir / "summary.json")["best_epoch"] - 1]


def true_labels(rows):
    return [int(row["path"].split("/")[0]) for row in rows]  # <class folder>/<file>


def test_predict_runs_the_ema_weights_a_checkpoint_was_chosen_by(split_images, tmp_path):
    """Predicting the validation folder reproduces the run's val_ema/* numbers, not its val/* ones."""
    from sklearn.metrics import accuracy_score, log_loss

    # A high rate moves the raw weights far in two epochs while a slow EMA stays near the start.
    run_dir = train_on(split_images, "ema", "trainer.max_epochs=2", "optimizer.lr=0.03", "data.augment=false",
                       "trainer.ema_decay=0.99", "monitor=val_ema/loss")
    row = best_row(run_dir)
    assert abs(float(row["val/loss"]) - float(row["val_ema/loss"])) > 0.1  # otherwise this test could not tell them apart
    output = tmp_path / "ema.csv"
    result = run_module("trainer.predict", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
                        f"input={split_images / 'val'}", f"output={output}", "num_workers=0", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_csv(output)
    classes = [str(d) for d in range(10)]
    prob = np.array([[float(r[c]) for c in classes] for r in rows])
    prob /= prob.sum(axis=1, keepdims=True)  # undo the rounding of the written probabilities
    y_true = true_labels(rows)
    assert log_loss(y_true, prob, labels=range(10)) == pytest.approx(float(row["val_ema/loss"]), abs=1e-4)
    assert accuracy_score(y_true, [int(r["prediction"]) for r in rows]) == pytest.approx(float(row["val_ema/accuracy"]))
    assert "EMA weights: the run monitored val_ema/loss" in result.stdout


@pytest.fixture(scope="module")
def regression_run(split_images):
    return train_on(split_images, "regression", "task=regression", "trainer.max_epochs=3", "optimizer.lr=0.01")


def test_predict_writes_the_values_of_a_regression_checkpoint(regression_run, split_images, tmp_path):
    """The predicted values of the validation folder give the run's recorded val/mae and val/rmse."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    output = tmp_path / "values.csv"
    result = run_module("trainer.predict", f"ckpt_path={regression_run / 'checkpoints' / 'best.ckpt'}",
                        f"input={split_images / 'val'}", f"output={output}", "num_workers=0", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_csv(output)
    assert list(rows[0]) == ["path", "prediction"] and len(rows) == 30
    values = np.array([float(r["prediction"]) for r in rows])
    assert values.std() > 0.05  # the model tells images apart: a constant would make the check below weak
    row = best_row(regression_run)
    assert mean_absolute_error(true_labels(rows), values) == pytest.approx(float(row["val/mae"]), abs=1e-4)
    assert mean_squared_error(true_labels(rows), values) ** 0.5 == pytest.approx(float(row["val/rmse"]), abs=1e-4)


def test_flip_tta_averages_a_regression_checkpoints_values_with_the_mirror_images(regression_run, split_images, tmp_path):
    from PIL import Image, ImageOps

    ckpt = regression_run / "checkpoints" / "best.ckpt"
    mirrored = tmp_path / "mirrored"
    for path in sorted((split_images / "val").rglob("*.*")):
        (mirrored / path.parent.name).mkdir(parents=True, exist_ok=True)
        ImageOps.mirror(Image.open(path)).save(mirrored / path.parent.name / f"{path.stem}.png")  # lossless
    outputs = {}
    for name, folder, tta in (("plain", split_images / "val", "none"), ("mirror", mirrored, "none"),
                              ("flip", split_images / "val", "flip")):
        predict(f"ckpt_path={ckpt}", f"input={folder}", f"output={tmp_path / name}.csv", f"tta={tta}")
        outputs[name] = np.array([float(r["prediction"]) for r in read_csv(tmp_path / f"{name}.csv")])
    assert np.abs(outputs["plain"] - outputs["mirror"]).max() > 1e-3  # the mirror image makes a difference
    np.testing.assert_allclose(outputs["flip"], (outputs["plain"] + outputs["mirror"]) / 2, atol=2e-5)


def test_evaluate_reproduces_a_regression_run_in_an_unwrapped_table(regression_run, tmp_path):
    result = run_module("trainer.evaluate", f"ckpt_path={regression_run / 'checkpoints' / 'best.ckpt'}",
                        f"output={tmp_path / 'metrics.json'}", cwd=tmp_path, env_extra={"COLUMNS": "80"})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "validation metrics" in lines  # the title on one line, never split mid-phrase
    assert "weights: raw (the run kept no EMA)" in lines
    written = read_json(tmp_path / "metrics.json")["metrics"]
    row = best_row(regression_run)
    assert set(written) == {"val/loss", "val/mae", "val/rmse", "val/r2"}
    for key, value in written.items():
        assert value == pytest.approx(float(row[key]), abs=1e-6), key
