"""Bad data ends with one message naming the file, folder or column: in process for every case, and
through the real command line (exit status 2, no traceback) for a few, plus a run that skips bad files."""

import pytest

from conftest import read_json
from image_files import digit_image, not_an_image, truncate, write_csv, write_csv_dataset, write_image_folder
from trainer.config.registry import schema_defaults
from trainer.data.datasets import DATASETS
from trainer.errors import UserError

SMALL = dict(image_size=16, num_workers=0, batch_size=8, seed=0)


def schema_options(option):
    """A dataset builder's arguments as the schema states them (builders state no defaults of their own)."""
    return {key: value for key, value in schema_defaults("data", option).items() if key != "name"}


def image_folder(root, **options):
    return DATASETS.get("image_folder")(root=str(root), **{**schema_options("image_folder"), **SMALL, **options})


def csv_data(path, **options):
    return DATASETS.get("csv")(csv=str(path), **{**schema_options("csv"), **SMALL, **options})


@pytest.fixture
def folder(tmp_path):
    write_image_folder(tmp_path / "train", classes=[0, 1, 2], per_class=4)
    return tmp_path / "train"


@pytest.fixture
def table(tmp_path):
    path, _ = write_csv_dataset(tmp_path / "comp", {0: "cat", 1: "dog"}, per_class=4)
    return path


def expect(message_parts, build):
    with pytest.raises(UserError) as caught:
        build()
    for part in message_parts:
        assert str(part) in str(caught.value), str(caught.value)
    return str(caught.value)


def test_missing_or_misplaced_folders(tmp_path, folder):
    expect([f"data.root={tmp_path / 'nope'}", "does not exist"], lambda: image_folder(tmp_path / "nope"))
    expect(["is a file, not a folder"], lambda: image_folder(next(folder.rglob("*.png"))))
    expect(["has no class sub-folders", "<class name>"], lambda: image_folder(folder / "0"))
    expect([f"data.val_root={tmp_path / 'none'}", "does not exist"], lambda: image_folder(folder, val_root=str(tmp_path / "none")))


def test_empty_class_folder(folder):
    (folder / "7" / "nested").mkdir(parents=True)
    (folder / "7" / "readme.txt").write_text("no images here")
    expect([f"class folder '{folder / '7'}' holds no image files", ".png"], lambda: image_folder(folder))


def test_a_class_with_one_image_cannot_be_split(folder):
    (folder / "lonely").mkdir()
    digit_image(0, (16, 16), "L").save(folder / "lonely" / "only.png")
    expect(["class 'lonely' has 1 image", "needs at least 2 per class", "data.val_root"], lambda: image_folder(folder))


def empty_file(path):
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("damage, reason", [
    (lambda folder: not_an_image(folder / "1" / "fake.png"), "is not an image file PIL can read"),
    (lambda folder: truncate(sorted((folder / "1").glob("*.png"))[0]), "is truncated or corrupt"),
    (lambda folder: truncate(sorted((folder / "2").glob("*.jpg"))[0]), "is truncated or corrupt"),
    (lambda folder: empty_file(folder / "2" / "empty.jpg"), "is not an image file PIL can read"),
], ids=["text file", "truncated png", "truncated jpeg", "empty file"])
def test_bad_image_files_are_named(folder, damage, reason):
    bad = damage(folder)
    message = expect([f"'{bad}' {reason}", "data.skip_bad_files=true"], lambda: image_folder(folder))
    assert message.count(str(folder)) == 2  # the file, and data.root: no other file is blamed


def test_csv_columns_cells_and_files(table, tmp_path):
    expect([f"data.csv={tmp_path / 'none.csv'}", "does not exist"], lambda: csv_data(tmp_path / "none.csv"))
    expect(["has no column 'target' (data.label_column)", "its columns are: image, label"],
           lambda: csv_data(table, label_column="target"))
    expect(["has no column 'file' (data.path_column)"], lambda: csv_data(table, path_column="file"))
    rows = [("images/0_000.png", "cat"), ("images/ghost.png", "cat"), ("images/1_000.jpg", "")]
    broken = write_csv(table.parent / "broken.csv", rows)
    expect([f"CSV '{broken}' has an empty 'label' on line(s) 4"], lambda: csv_data(broken))
    write_csv(broken, rows[:2] + [("images/1_000.jpg", "dog")])
    expect([f"'{table.parent / 'images' / 'ghost.png'}' does not exist"], lambda: csv_data(broken))
    empty = write_csv(tmp_path / "empty.csv", [])
    expect(["has no rows", "columns: image, label"], lambda: csv_data(empty))
    expect(["data.image_dir", "does not exist"], lambda: csv_data(table, image_dir=str(tmp_path / "pics")))


def test_validation_labels_unseen_in_training(folder, table, tmp_path):
    write_image_folder(tmp_path / "val", classes=[1, 9], per_class=2)
    expect(["data.val_root", "classes that are not in the training data: 9", "training classes: 0, 1, 2"],
           lambda: image_folder(folder, val_root=str(tmp_path / "val")))
    val = write_csv(table.parent / "val.csv", [("images/0_001.png", "cat"), ("images/1_001.png", "bird")])
    expect(["data.val_csv", "labels that are not in the training data: bird", "training classes: cat, dog"],
           lambda: csv_data(table, val_csv=str(val)))


@pytest.mark.parametrize("options, parts", [
    (dict(sampler="often"), ["data.sampler=often is not valid", "random, balanced"]),
    (dict(channels=2), ["data.channels=2 is not valid", "1 (grayscale) or 3 (RGB)"]),
    (dict(auto_augment="sometimes"), ["data.auto_augment=sometimes is not a timm augmentation string", "rand-m9"]),
    (dict(scale=[0.5, 0.2]), ["data.scale=[0.5, 0.2] is not valid"]),
    (dict(class_fraction=0.5), ["data.class_fraction=0.5 is not valid", "mapping"]),
    (dict(class_fraction={1: 0}), ["class '1' has fraction 0"]),
    (dict(mixup=0.2, mixup_mode="row"), ["data.mixup_mode=row is not valid"]),
    (dict(interpolation="smooth"), ["data.interpolation=smooth is not valid", "bicubic"]),
    (dict(num_workers=-1), ["data.num_workers=-1 is not valid"]),
])
def test_bad_options_are_named(folder, options, parts):
    expect(parts, lambda: image_folder(folder, **options))


# --- through the command line ----------------------------------------------------------------
def assert_refused(result, *parts):
    message = result.stdout + result.stderr
    assert result.returncode == 2, message
    for part in parts:
        assert part in message, message
    assert "Traceback" not in message, message


def test_cli_requires_the_data_location(cli, tmp_path):
    from omegaconf import OmegaConf

    from trainer.run.checks import normalise_config

    assert_refused(cli("trainer", "data=image_folder", f"hydra.run.dir={tmp_path / 'run'}"), "data.root is required")
    cfg = OmegaConf.create({"data": {"name": "csv", "csv": "???"}, "model": {"name": "cnn"}})
    expect(["data.csv is required with data=csv"], lambda: normalise_config(cfg))


@pytest.mark.parametrize("case", ["empty class folder", "missing column", "truncated image"])
def test_cli_names_the_bad_data(cli, tmp_path, case):
    root = tmp_path / "train"
    write_image_folder(root, classes=[0, 1], per_class=4)
    args = ["data=image_folder", "data.root=train"]
    if case == "empty class folder":
        (root / "5").mkdir()
        parts = [f"class folder '{root / '5'}' holds no image files"]
    elif case == "missing column":
        listing = write_csv(tmp_path / "train.csv", [("train/0/0_000.png", "0")], header=("image", "digit"))
        args = ["data=csv", f"data.csv={listing.name}"]
        parts = [f"CSV '{listing}' has no column 'label' (data.label_column)", "image, digit"]
    else:
        bad = truncate(sorted((root / "1").glob("*.png"))[0])
        parts = [f"'{bad}' is truncated or corrupt", "data.skip_bad_files=true"]
    run_dir = tmp_path / "run"
    assert_refused(cli("trainer", *args, f"hydra.run.dir={run_dir}"), *parts)
    assert not (run_dir / "checkpoints").exists()


def test_cli_skips_bad_files_and_trains_on(cli, tmp_path):
    listing, rows = write_csv_dataset(tmp_path, {0: "zero", 1: "one"}, per_class=6)
    not_an_image(tmp_path / "images" / "1_000.jpg")
    write_csv(listing, rows + [("images/ghost.png", "zero")])
    run_dir = tmp_path / "run"
    args = ["data=csv", f"data.csv={listing}", "data.image_size=16", "data.num_workers=0", "model.width=8",
            "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    assert_refused(cli("trainer", *args), "2 bad image files", "ghost.png' does not exist", "1_000.jpg' is not an image")
    result = cli("trainer", *args, "data.skip_bad_files=true")
    assert result.returncode == 0, result.stderr
    assert "left out 2 of 13 image files" in result.stdout
    assert read_json(run_dir / "summary.json")["status"] == "completed"
