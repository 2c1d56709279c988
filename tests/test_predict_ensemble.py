"""predict with several models (a sweep directory, a list), test-time augmentation beyond flip, and the
submission format, against references computed here: numpy averages of single-model predictions, the
TTA views made by hand with torchvision and numpy, a sample submission's columns and row order.

The slow tests share one real 5-fold sweep on digit images (`python -m trainer -m data.folds=5 'data.fold=range(5)'`);
the bad-input tests use checkpoint files that hold only what predict reads before it loads weights.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, read_csv, run_module
from image_files import digits
from trainer.errors import UserError

CLASSES = [str(d) for d in range(10)]


def write_digits(root: Path, start: int, stop: int) -> None:
    """root/<digit>/<index>.png: sklearn's 8x8 digits as 16x16 grayscale PNGs (lossless)."""
    pixels, target = digits()
    for i in range(start, stop):
        path = root / str(target[i]) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).resize((16, 16), Image.Resampling.BILINEAR).save(path)


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    from trainer.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return hydra_compose("predict", overrides=["num_workers=0", *overrides])


def predict(*overrides: str) -> str:
    """trainer.predict in process, without loader workers."""
    from trainer.predict import predict as run_predict

    return run_predict(compose(*overrides))


def probabilities(path: Path, key: str = "path"):
    rows = read_csv(path)
    return [row[key] for row in rows], np.array([[float(row[c]) for c in CLASSES] for row in rows])


@pytest.fixture(scope="module")
def fold_models(tmp_path_factory):
    """The five fold models of one recipe (data.folds=5), as one sweep directory, and held-out images none saw."""
    root = tmp_path_factory.mktemp("folds")
    write_digits(root / "train", 0, 260)
    write_digits(root / "test", 300, 400)
    result = run_module("trainer", "-m", "data=image_folder", "data.channels=1", "data.image_size=16", "data.crop_pct=0.75",
                        "data.num_workers=0", "data.batch_size=16", "data.augment=false", "model.width=8",
                        "trainer.max_epochs=8", "optimizer.lr=0.01", "data.root=train", "data.folds=5",
                        "data.fold=range(5)", "progress=false", "hydra.sweep.dir=sweep", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


@pytest.mark.slow
def test_an_ensemble_averages_its_models_and_scores_at_least_their_mean(fold_models, tmp_path):
    singles = []
    for job in range(5):
        predict(f"ckpt_path={fold_models / 'sweep' / str(job) / 'checkpoints' / 'best.ckpt'}", f"input={fold_models / 'test'}",
                f"output={tmp_path / f'{job}.csv'}")
        names, prob = probabilities(tmp_path / f"{job}.csv")
        singles.append(prob)
    result = run_module("trainer.predict", f"ckpt_path={fold_models / 'sweep'}", f"input={fold_models / 'test'}", "output=mean.csv",
                        "num_workers=0", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 model(s)" in result.stdout and "ensemble=mean of 5 models" in result.stdout
    ensemble_names, mean = probabilities(tmp_path / "mean.csv")
    assert ensemble_names == names
    assert np.abs(singles[0] - singles[1]).max() > 0.05  # the folds' models differ, so the average is a real test
    np.testing.assert_allclose(mean, np.mean(singles, axis=0), atol=2e-6)

    # geometric, from a list of run directories: exp(mean log p), renormalised
    runs = ",".join(str(fold_models / "sweep" / str(job)) for job in range(5))
    predict(f"ckpt_path=[{runs}]", f"input={fold_models / 'test'}", f"output={tmp_path / 'geo.csv'}", "ensemble=geometric")
    geometric = np.exp(np.log(np.array(singles)).mean(axis=0))
    geometric /= geometric.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities(tmp_path / "geo.csv")[1], geometric, rtol=1e-4, atol=2e-6)

    truth = np.array([int(name.split("/")[0]) for name in names])
    single_accuracy = np.mean([(prob.argmax(1) == truth).mean() for prob in singles])
    assert single_accuracy > 0.25  # the models learned something: the comparison below means something
    ensemble_accuracy = (mean.argmax(1) == truth).mean()
    print(f"held-out accuracy: single models {[float((p.argmax(1) == truth).mean()) for p in singles]}, "
          f"mean ensemble {ensemble_accuracy}")
    assert ensemble_accuracy >= single_accuracy  # the 5-fold ensemble against the mean single fold


def hand_views(image: Image.Image, tta: str, shift: int, mean, std):
    """The model inputs of one image for each TTA mode, made here with torchvision and numpy: evaluation
    resizes the shorter side to image_size / crop_pct (16 / 0.75 -> 21), then crops 16."""
    from torchvision import transforms
    from torchvision.transforms import functional as F

    resized = F.resize(image, 21, interpolation=transforms.InterpolationMode.BILINEAR)
    tensor = lambda img: F.normalize(F.to_tensor(img), mean, std).numpy()  # noqa: E731
    if tta == "five_crop":
        return [tensor(crop) for crop in transforms.FiveCrop(16)(resized)]
    x = tensor(F.center_crop(resized, 16))
    views = [x]
    if tta in ("flip", "flip+shift"):
        views.append(x[:, :, ::-1])
    if tta == "flip+shift":
        s = shift
        views += [np.pad(x, ((0, 0), (0, 0), (s, 0)), mode="reflect")[:, :, :16],  # right
                  np.pad(x, ((0, 0), (0, 0), (0, s)), mode="reflect")[:, :, s:],  # left
                  np.pad(x, ((0, 0), (s, 0), (0, 0)), mode="reflect")[:, :16],  # down
                  np.pad(x, ((0, 0), (0, s), (0, 0)), mode="reflect")[:, s:]]  # up
    return views


@pytest.mark.slow
@pytest.mark.parametrize("tta", ["none", "flip", "flip+shift", "five_crop"])
def test_each_tta_mode_is_the_mean_of_its_views(fold_models, tmp_path, tta):
    from trainer.deployment.inference_model import load_inference_model

    ckpt = fold_models / "sweep" / "0" / "checkpoints" / "best.ckpt"
    folder = fold_models / "test" / "3"
    predict(f"ckpt_path={ckpt}", f"input={folder}", f"output={tmp_path / 'tta.csv'}", f"tta={tta}", "tta_shift=3")
    names, written = probabilities(tmp_path / "tta.csv")

    data = torch.load(ckpt, weights_only=True)["config"]["data"]
    model = load_inference_model(str(ckpt), torch.device("cpu")).load()
    expected = []
    for name in names:
        views = hand_views(Image.open(folder / name).convert("L"), tta, 3, data["mean"], data["std"])
        with torch.inference_mode():
            expected.append(model(torch.from_numpy(np.stack(views).copy())).mean(0).numpy())
    np.testing.assert_allclose(written, np.array(expected), atol=2e-6)
    if tta != "none":  # the views make a difference, so a mode that ignored them would fail
        plain = [model(torch.from_numpy(hand_views(Image.open(folder / n).convert("L"), "none", 3, data["mean"],
                                                   data["std"])[0][None].copy()))[0].detach().numpy() for n in names]
        assert np.abs(np.array(plain) - written).max() > 1e-4


@pytest.mark.slow
def test_the_submission_takes_a_sample_submissions_columns_and_row_order(fold_models, tmp_path):
    images = sorted((fold_models / "test").rglob("*.png"))[::7]
    reference = tmp_path / "reference.csv"
    predict(f"ckpt_path={fold_models / 'sweep'}", f"input={fold_models / 'test'}", f"output={reference}")
    by_path = {row["path"]: row for row in read_csv(reference)}

    # the input CSV lists files under ids of its own, in an order of its own; the sample in another
    shuffled = images[::-1][1:] + images[-1:]
    with open(tmp_path / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image_id", "file")] + [(f"img{p.stem}", str(p)) for p in shuffled])
    sample_ids = [f"img{p.stem}" for p in images]
    with open(tmp_path / "sample.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "digit")] + [(i, 0) for i in sample_ids])
    predict(f"ckpt_path={fold_models / 'sweep'}", f"input={tmp_path / 'test.csv'}", "path_column=file", "id_values=column",
            "input_id_column=image_id", f"sample_submission={tmp_path / 'sample.csv'}", "labels=index",
            f"output={tmp_path / 'submission.csv'}")
    rows = read_csv(tmp_path / "submission.csv")
    assert list(rows[0]) == ["id", "digit"] and [r["id"] for r in rows] == sample_ids
    for row, path in zip(rows, images):
        assert row["digit"] == by_path[str(path.relative_to(fold_models / "test"))]["prediction"]

    # without a sample: rows in the input CSV's order, ids as file names without extension, no probabilities
    predict(f"ckpt_path={fold_models / 'sweep'}", f"input={tmp_path / 'test.csv'}", "path_column=file", "id_values=stem",
            "id_column=image", "label_column=label", "probabilities=false", f"output={tmp_path / 'plain.csv'}")
    rows = read_csv(tmp_path / "plain.csv")
    assert list(rows[0]) == ["image", "label"] and [r["image"] for r in rows] == [p.stem for p in shuffled]

    # a sample of probability columns (classes in its own order) and ids with extensions
    columns = ["file_name", *CLASSES[::-1]]
    with open(tmp_path / "sample_prob.csv", "w", newline="") as f:
        csv.writer(f).writerows([columns] + [(p.name, *[0.1] * 10) for p in images])
    predict(f"ckpt_path={fold_models / 'sweep'}", f"input={tmp_path / 'test.csv'}", "path_column=file", "id_values=name",
            f"sample_submission={tmp_path / 'sample_prob.csv'}", f"output={tmp_path / 'prob.csv'}")
    rows = read_csv(tmp_path / "prob.csv")
    assert list(rows[0]) == columns and [r["file_name"] for r in rows] == [p.name for p in images]
    for row, path in zip(rows, images):
        expected = by_path[str(path.relative_to(fold_models / "test"))]
        assert all(row[c] == expected[c] for c in CLASSES)


# --- bad input: one message each ---------------------------------------------------------------------
def fake_checkpoint(path: Path, image_size: int = 16, classes=("0", "1")) -> Path:
    """What predict reads before loading weights: classes, task and the data's input settings."""
    data = {"name": "image_folder", "root": "unused", "channels": 1, "image_size": image_size, "mean": [0.5], "std": [0.5],
            "interpolation": "bilinear", "crop_pct": 0.75}
    torch.save({"model": {}, "class_names": list(classes), "config": {"data": data, "model": {"name": "cnn"}}}, path)
    return path


@pytest.fixture
def few_images(tmp_path):
    write_digits(tmp_path / "images", 0, 4)
    return tmp_path / "images"


@pytest.mark.parametrize("setting, message", [
    ("ensemble=median", "ensemble=median is not valid; use one of: mean, geometric"),
    ("tta=rotate", "tta=rotate is not valid; use one of: none, flip, flip+shift, five_crop"),
    ("id_values=hash", "id_values=hash is not valid; use one of: path, name, stem, column"),
    ("labels=onehot", "labels=onehot is not valid; use one of: name, index"),
])
def test_an_unknown_setting_is_refused_before_any_model_is_read(tmp_path, setting, message):
    ckpt = tmp_path / "not_read.ckpt"
    ckpt.write_text("not a checkpoint: a setting refused first never opens it")
    with pytest.raises(UserError, match="^" + message.replace("+", r"\+")):
        predict(f"ckpt_path={ckpt}", f"input={tmp_path}", setting)


def test_a_sweep_directory_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "sweep" / "0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "sweep" / "1").mkdir()
    fake_checkpoint(tmp_path / "sweep" / "0" / "checkpoints" / "best.ckpt")
    result = run_module("trainer.predict", "ckpt_path=sweep", "input=.", cwd=tmp_path)
    assert result.returncode == 2
    assert "ckpt_path=sweep is a sweep directory whose job(s) 1 of 2 have no checkpoints/best.ckpt" in result.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="ckpt_path=.*empty is a directory without a best.ckpt"):
        predict(f"ckpt_path={tmp_path / 'empty'}", f"input={tmp_path}")


def test_checkpoints_that_disagree_are_refused_with_the_setting_and_the_files(tmp_path, few_images):
    a, b, c = (fake_checkpoint(tmp_path / "a.ckpt"), fake_checkpoint(tmp_path / "b.ckpt", image_size=24),
               fake_checkpoint(tmp_path / "c.ckpt"))
    with pytest.raises(UserError) as refused:
        predict(f"ckpt_path=[{a},{b},{c}]", f"input={few_images}")
    assert f"disagree on data.image_size: 16 in {a}, {c}; 24 in {b}" in str(refused.value)
    d = fake_checkpoint(tmp_path / "d.ckpt", classes=("1", "0"))
    with pytest.raises(UserError, match=r"disagree on class names: \[0, 1\] in .*a.ckpt; \[1, 0\] in .*d.ckpt"):
        predict(f"ckpt_path=[{a},{d}]", f"input={few_images}")


def test_an_id_column_the_input_csv_lacks_is_refused(tmp_path, few_images):
    listing = tmp_path / "test.csv"
    listing.write_text("path\n" + "".join(f"{p}\n" for p in sorted(few_images.rglob("*.png"))))
    result = run_module("trainer.predict", f"ckpt_path={fake_checkpoint(tmp_path / 'a.ckpt')}", f"input={listing}",
                        "id_values=column", "input_id_column=image_id", cwd=tmp_path)
    assert result.returncode == 2
    assert f"input_id_column=image_id is not a column of input={listing}; its columns are: path" in result.stderr


def test_a_sample_submission_whose_ids_differ_is_refused_before_predicting(tmp_path, few_images):
    """The ids are compared before any weight is loaded: these checkpoints have none."""
    sample = tmp_path / "sample.csv"
    stems = sorted(p.stem for p in few_images.rglob("*.png"))
    sample.write_text("id,label\n" + "".join(f"{s},0\n" for s in stems[1:] + ["9999"]))
    output = tmp_path / "submission.csv"
    with pytest.raises(UserError) as refused:
        predict(f"ckpt_path={fake_checkpoint(tmp_path / 'a.ckpt')}", f"input={few_images}", "id_values=stem",
                f"sample_submission={sample}", f"output={output}")
    assert (f"sample_submission={sample} does not match the input: 1 of its 4 ids are not among the input's (first: "
            f"'9999'); 1 input image id(s) are not in it (first: '{stems[0]}')") in str(refused.value)
    assert not output.exists()


def regression_checkpoint(path: Path, seed: int) -> Path:
    """A regression checkpoint with a freshly initialised small cnn: real weights, no training needed to
    check how several models' values are combined."""
    from trainer.config.registry import schema_defaults
    from trainer.parts.models import build_model

    model_cfg = {**schema_defaults("model", "cnn"), "width": 8, "dropout": 0.0}
    torch.manual_seed(seed)
    model = build_model(dict(model_cfg), in_chans=1, num_classes=1)
    data = {"name": "image_folder", "root": "unused", "channels": 1, "image_size": 16, "mean": [0.5], "std": [0.5],
            "interpolation": "bilinear", "crop_pct": 0.75}
    torch.save({"model": model.state_dict(), "class_names": CLASSES,
                "config": {"task": "regression", "data": data, "model": model_cfg}}, path)
    return path


def test_a_regression_ensemble_writes_the_mean_of_the_values(tmp_path, few_images):
    a, b = regression_checkpoint(tmp_path / "a.ckpt", 0), regression_checkpoint(tmp_path / "b.ckpt", 1)
    values = []
    for name, ckpt in (("a", a), ("b", b), ("ab", f"[{a},{b}]")):
        predict(f"ckpt_path={ckpt}", f"input={few_images}", f"output={tmp_path / name}.csv", "tta=flip")
        values.append(np.array([float(row["prediction"]) for row in read_csv(tmp_path / f"{name}.csv")]))
    assert np.abs(values[0] - values[1]).max() > 1e-3  # two different models
    np.testing.assert_allclose(values[2], (values[0] + values[1]) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="ensemble=geometric averages log-probabilities, which a task=regression model"):
        predict(f"ckpt_path=[{a},{b}]", f"input={few_images}", "ensemble=geometric")
