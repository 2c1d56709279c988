"""Datasets of image files, in process: loading, splits, class lists, channels, transforms, samplers,
subsampling, mixup, skipped files, and the config that a checkpoint stores."""

import logging
from collections import Counter

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from image_files import digit_image, not_an_image, truncate, write_csv, write_csv_dataset, write_image_folder
from trainer.config.registry import build as build_part
from trainer.config.registry import schema_defaults
from trainer.data.datasets import DATASETS
from trainer.data.datasets import digits as digits_builder
from trainer.data.images import load_image
from trainer.data.sampling import epoch_order
from trainer.data.transforms import eval_transform, resolve_input, train_transform
from trainer.errors import UserError
from trainer.run import assembly, checks

SMALL = dict(image_size=16, num_workers=0, batch_size=8)


def schema_options(option):
    """A dataset builder's arguments as the schema states them (builders state no defaults of their own)."""
    return {key: value for key, value in schema_defaults("data", option).items() if key != "name"}


def folder_data(root, **options):
    return DATASETS.get("image_folder")(root=str(root), **{**schema_options("image_folder"), "seed": 0, **SMALL, **options})


def csv_data(csv_path, **options):
    return DATASETS.get("csv")(csv=str(csv_path), **{**schema_options("csv"), "seed": 0, **SMALL, **options})


def digits(**options):
    return digits_builder(**{**schema_options("digits"), **options})


def loader_paths(loader):
    return list(loader.dataset.paths)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "train"
    write_image_folder(root, per_class=10)
    return root


def test_every_storage_mode_and_size_loads_as_the_channels_asked(folder):
    suffixes = Counter(p.suffix for p in folder.rglob("*.*"))
    modes = Counter(Image.open(p).mode for p in folder.rglob("*.*"))
    assert suffixes.keys() == {".png", ".jpg"} and modes.keys() == {"L", "RGB", "RGBA", "P"}
    for channels in (1, 3):
        data = folder_data(folder, channels=channels)
        assert data.class_names == [str(d) for d in range(10)]
        assert data.in_chans == channels
        batches = list(data.val_loader)
        assert sum(len(y) for _, y in batches) == 20
        assert all(x.shape[1:] == (channels, 16, 16) and x.dtype == torch.float32 for x, _ in batches)


def test_load_image_converts_every_mode(tmp_path):
    palette = digit_image(0, (10, 8), "P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    Image.fromarray(np.full((6, 5), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")  # 16-bit white
    digit_image(0, (10, 8), "RGBA").save(tmp_path / "rgba.png")
    for name in ("p.png", "deep.png", "rgba.png"):
        for mode in ("L", "RGB"):
            assert load_image(str(tmp_path / name), mode).mode == mode
    assert np.asarray(load_image(str(tmp_path / "deep.png"), "L")).min() == 255  # scaled, not clipped from 65535


def test_split_is_stratified_and_seeded(folder):
    first, again = folder_data(folder), folder_data(folder)
    assert loader_paths(first.val_loader) == loader_paths(again.val_loader)
    other = folder_data(folder, seed=1)
    assert loader_paths(other.val_loader) != loader_paths(first.val_loader)
    for data in (first, other):
        val_labels = Counter(data.val_loader.dataset.targets)
        assert val_labels == {c: 2 for c in range(10)}  # 20% of 10 images of each class
        assert Counter(data.train_labels.tolist()) == {c: 8 for c in range(10)}
        assert not set(loader_paths(data.val_loader)) & set(loader_paths(data.train_loader))


def test_validation_folder_replaces_the_split(folder, tmp_path):
    val_root = tmp_path / "val"
    write_image_folder(val_root, classes=[1, 2], per_class=3, skip=20)
    data = folder_data(folder, val_root=str(val_root))
    assert len(data.train_loader.dataset) == 100
    assert sorted(Counter(data.val_loader.dataset.targets).items()) == [(1, 3), (2, 3)]
    (val_root / "cat").mkdir()
    with pytest.raises(UserError, match="not in the training data: cat"):
        folder_data(folder, val_root=str(val_root))


def test_csv_string_labels_give_a_sorted_class_list(tmp_path):
    csv_path, rows = write_csv_dataset(tmp_path, {0: "zero", 1: "one", 7: "seven"}, per_class=6)
    data = csv_data(csv_path, val_fraction=0.5)
    assert data.class_names == ["one", "seven", "zero"]
    seven = data.class_names.index("seven")
    labels = dict(rows)
    for path, target in zip(data.val_loader.dataset.paths, data.val_loader.dataset.targets):
        assert data.class_names[target] == labels[f"images/{path.rsplit('/', 1)[1]}"]
    assert Counter(data.train_labels.tolist())[seven] == 3


def test_csv_integer_labels_sort_numerically_and_ids_take_a_suffix(tmp_path):
    _, rows = write_csv_dataset(tmp_path, {2: "2", 1: "10", 0: "1"}, per_class=4)
    png = [(name, label) for name, label in rows if name.endswith(".png")]
    ids = write_csv(tmp_path / "ids.csv", [(name[len("images/"):-len(".png")], label) for name, label in png],
                    header=("id", "target"))
    data = csv_data(ids, image_dir=str(tmp_path / "images"), path_column="id", label_column="target",
                    path_suffix=".png", val_fraction=0.5)
    assert data.class_names == ["1", "2", "10"]
    assert len(data.train_loader.dataset) + len(data.val_loader.dataset) == len(png)


def test_eval_transform_is_deterministic_and_train_transform_is_not():
    image = digit_image(5, (40, 30), "RGB")
    spec = resolve_input("cnn", 3, image_size=16)
    evaluate, augment = eval_transform(spec), train_transform(spec)
    assert torch.equal(evaluate(image), evaluate(image))
    assert evaluate(image).shape == augment(image).shape == (3, 16, 16)
    torch.manual_seed(0)
    assert not torch.equal(augment(image), augment(image))
    gray = Image.new("L", (20, 20), 255)
    assert torch.allclose(eval_transform(resolve_input("cnn", 1, image_size=8))(gray), torch.ones(1, 8, 8))  # (1 - 0.5) / 0.5
    assert train_transform(spec, augment=False)(image).equal(evaluate(image))


def test_model_defaults_fill_the_input_settings():
    resnet = resolve_input("resnet18", 3)
    assert resnet["image_size"] == 224 and resnet["interpolation"] == "bicubic"
    assert resnet["mean"] == pytest.approx((0.485, 0.456, 0.406))
    gray = resolve_input("resnet18", 1, image_size=64)
    assert gray["image_size"] == 64 and gray["mean"] == pytest.approx((np.mean([0.485, 0.456, 0.406]),))
    cnn = resolve_input("cnn", 3)
    assert cnn["image_size"] == 32 and cnn["mean"] == (0.5, 0.5, 0.5) and cnn["std"] == (0.5, 0.5, 0.5)
    with pytest.raises(UserError, match="data.mean has 2 values; data.channels=3"):
        resolve_input("cnn", 3, mean=[0.1, 0.2])


def test_balanced_sampler_draws_classes_uniformly():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    drawn = np.concatenate([labels[epoch_order(len(labels), 0, epoch, "balanced", labels).numpy()] for epoch in range(1, 21)])
    assert len(drawn) == 20 * len(labels)
    shares = np.bincount(drawn) / len(drawn)
    assert np.allclose(shares, 1 / 3, atol=0.02), shares
    assert torch.equal(epoch_order(1000, 0, 3, "balanced", labels), epoch_order(1000, 0, 3, "balanced", labels))


def test_balanced_sampler_is_used_by_the_training_loader(folder, tmp_path):
    data = folder_data(folder, sampler="balanced", class_fraction={0: 0.2, 1: 0.2})
    assert Counter(data.train_labels.tolist())[0] < 8 / 2
    drawn = []
    for epoch in range(1, 31):
        data.train_loader.batch_sampler.set_epoch(epoch)
        drawn += [y.numpy() for _, y in data.train_loader]
    drawn = np.concatenate(drawn)
    shares = np.bincount(drawn, minlength=10) / len(drawn)
    assert np.allclose(shares, 0.1, atol=0.03), shares


def test_class_fraction_subsamples_digits_with_a_seed():
    base = digits(seed=0)
    again = digits(seed=0, class_fraction=None)
    assert np.array_equal(base.train_labels, again.train_labels)
    assert torch.equal(next(iter(base.val_loader))[0], next(iter(again.val_loader))[0])
    fewer = digits(seed=0, class_fraction={3: 0.1, "5": 0.1})
    whole = Counter(base.train_labels.tolist()) + Counter(t.item() for _, y in base.val_loader for t in y)
    kept = Counter(fewer.train_labels.tolist()) + Counter(t.item() for _, y in fewer.val_loader for t in y)
    assert kept[3] == round(0.1 * whole[3]) and kept[5] == round(0.1 * whole[5])
    assert all(kept[c] == whole[c] for c in range(10) if c not in (3, 5))
    same = digits(seed=0, class_fraction={3: 0.1, 5: 0.1})
    assert np.array_equal(same.train_labels, fewer.train_labels)
    with pytest.raises(UserError, match="unknown classes: 12"):
        digits(seed=0, class_fraction={12: 0.5})


def test_class_fraction_composes_from_the_command_line():
    from hydra import compose, initialize_config_dir

    from conftest import REPO
    from trainer.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=["data.class_fraction={3:0.1,5:0.1}", "data.sampler=balanced"])
    data = build_part(DATASETS, checks.plain(cfg.data), seed=cfg.seed)
    assert Counter(data.train_labels.tolist())[3] < 20
    assert data.train_loader.batch_sampler.kind == "balanced"


def test_mixup_is_exposed_for_the_engine(folder):
    from timm.data import Mixup

    assert folder_data(folder).mixup is None
    data = folder_data(folder, mixup=0.8, cutmix=1.0, label_smoothing=0.0)
    assert isinstance(data.mixup, Mixup)
    assert data.train_loader.batch_sampler.drop_last  # Mixup pairs images up: every batch must be even
    inputs, targets = next(iter(data.train_loader))
    mixed, soft = data.mixup(inputs.clone(), targets)
    assert soft.shape == (8, 10) and torch.allclose(soft.sum(1), torch.ones(8))
    with pytest.raises(UserError, match="even batch size"):
        folder_data(folder, mixup=0.8, batch_size=7)


def test_skip_bad_files_leaves_them_out_with_a_count(tmp_path, caplog):
    written = write_image_folder(tmp_path / "train", classes=[0, 1], per_class=6)
    png, jpg = written["0"][0], written["0"][1]
    assert (png.suffix, jpg.suffix) == (".png", ".jpg")
    truncate(png), truncate(jpg)
    not_an_image(tmp_path / "train" / "1" / "notes.png")
    with pytest.raises(UserError, match="3 bad image files") as caught:
        folder_data(tmp_path / "train")
    assert all(str(p) in str(caught.value) for p in (png, jpg, tmp_path / "train" / "1" / "notes.png"))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        data = folder_data(tmp_path / "train", skip_bad_files=True, val_fraction=0.5)
    assert "left out 3 of 13 image files" in caplog.text
    kept = loader_paths(data.train_loader) + loader_paths(data.val_loader)
    assert len(kept) == 10 and not {str(png), str(jpg)} & set(kept)


def test_unreadable_image_in_a_worker_names_the_file(tmp_path):
    """A file the up-front check cannot catch fails in a worker process: one message, no traceback."""
    from trainer.data.images import ImageFiles
    from trainer.data.loaders import ImageLoader

    good = write_image_folder(tmp_path, classes=[0], per_class=3)["0"]
    bad = tmp_path / "bad.png"
    digit_image(0, (16, 16), "L").save(bad)
    truncate(bad)
    spec = resolve_input("cnn", 1, image_size=8)
    files = [str(p) for p in good] + [str(bad)]
    loader = ImageLoader(ImageFiles(files, [0] * 4, eval_transform(spec), 1), batch_size=2, num_workers=2)
    with pytest.raises(UserError) as caught:
        list(loader)
    assert str(bad) in str(caught.value) and "Traceback" not in str(caught.value)
    skipping = ImageLoader(ImageFiles(files, [0] * 4, eval_transform(spec), 1, skip_bad_files=True), batch_size=2)
    assert sum(len(y) for _, y in skipping) == 4  # the bad one is replaced by a readable one


def test_workers_repeat_the_same_augmentation_from_run_to_run(folder):
    def first_batch():
        data = folder_data(folder, num_workers=2, val_fraction=0.5)
        return next(iter(data.train_loader))

    (x1, y1), (x2, y2) = first_batch(), first_batch()
    assert torch.equal(y1, y2) and torch.equal(x1, x2)


def test_normalise_config_makes_paths_absolute_and_fills_input_settings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({
        "model": {"name": "resnet18"},
        "data": {"name": "csv", "csv": "data/train.csv", "val_csv": None, "image_dir": "~/pics", "channels": 1,
                 "image_size": None, "mean": None, "std": [0.2], "interpolation": None, "crop_pct": None},
    })
    checks.normalise_config(cfg)
    assert cfg.data.csv == str(tmp_path / "data" / "train.csv") and cfg.data.val_csv is None
    assert cfg.data.image_dir.startswith("/") and "~" not in cfg.data.image_dir
    assert cfg.data.image_size == 224 and cfg.data.interpolation == "bicubic" and cfg.data.std == [0.2]
    assert len(cfg.data.mean) == 1


def test_large_jpegs_are_decoded_at_a_reduced_size_that_keeps_what_the_transform_uses(tmp_path):
    from trainer.data.transforms import decode_size

    photo = digit_image(7, (512, 384), "RGB")
    photo.save(tmp_path / "photo.jpg")
    photo.save(tmp_path / "photo.png")
    assert load_image(str(tmp_path / "photo.jpg"), "RGB", decode_size=100).size == (256, 192)  # 1/2: 1/4 would be < 100
    assert load_image(str(tmp_path / "photo.jpg"), "L", decode_size=40).size == (64, 48)  # 1/8
    assert load_image(str(tmp_path / "photo.png"), "RGB", decode_size=40).size == (512, 384)  # only JPEG has draft
    spec = resolve_input("cnn", 3, image_size=64, crop_pct=0.8)
    assert decode_size(spec) == 80 and decode_size(spec, scale=(0.25, 1.0)) == 128


def test_loaders_decode_at_the_size_their_transform_needs(folder):
    data = folder_data(folder, augment="imagenet", scale=[0.25, 1.0])
    assert data.train_loader.dataset.decode_size == 32 and data.val_loader.dataset.decode_size == 16
    assert folder_data(folder, augment=False).train_loader.dataset.decode_size == 16
    assert folder_data(folder, augment="small").train_loader.dataset.decode_size == 16  # crops pad, never enlarge


def test_mixup_trains_through_the_engine(folder, tmp_path):
    """The engine mixes each training batch with timm's Mixup and learns from the soft targets."""
    from conftest import compose_train

    cfg = compose_train("data=image_folder", f"data.root={folder}", "data.mixup=0.8", "data.cutmix=1.0",
                        "data.batch_size=8", "data.num_workers=0", "data.image_size=16", "trainer.max_epochs=2")
    checks.check_config(cfg)
    checks.normalise_config(cfg)
    engine, train_loader, val_loader = assembly.assemble(cfg, run_dir=str(tmp_path))
    assert engine.mixup is not None
    seen = []
    original = engine.loss_fn.forward
    # the configured loss takes the soft targets in training (validation calls it with labels, without grad)
    engine.loss_fn.forward = lambda logits, target: (torch.is_grad_enabled() and seen.append(target.shape)) or original(logits, target)
    summary = engine.fit(train_loader, val_loader)
    assert summary["status"] == "completed"
    assert seen and all(shape == (8, 10) for shape in seen)  # soft targets, one column per class
    assert "train/accuracy" not in summary["final"] and "val/accuracy" in summary["final"]
