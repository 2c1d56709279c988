"""Decoded images kept once (data.cache), the file check remembered between runs, and default worker
counts: real image folders, the real dataset builders, and the real command line in subprocesses."""

import logging
import os
import re
import resource
import signal
import sys

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import read_csv, run_module
from image_files import digit_image, write_image_folder
from trainer.data import image_cache
from trainer.config.registry import schema_defaults
from trainer.data import loaders
from trainer.data.datasets import DATASETS
from trainer.data.file_checks import check_files
from trainer.data.images import decoded_sizes, fitted_size, load_image
from trainer.errors import UserError

DAY_NS = 86_400 * 10**9


def age(root, days: int = 1) -> None:
    """Files as a user brings them: written well before the run (the file check does not remember a
    file modified in the last seconds, whose size and time could still change unseen)."""
    past = os.stat(root).st_mtime_ns - days * DAY_NS
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), ns=(past, past))


def folder_data(root, cache_dir, **options):
    settings = {key: value for key, value in schema_defaults("data", "image_folder").items() if key != "name"}
    settings.update(image_size=16, num_workers=0, batch_size=8, val_fraction=0.5, seed=0, cache_dir=str(cache_dir))
    return DATASETS.get("image_folder")(root=str(root), **{**settings, **options})


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "train"
    write_image_folder(root, classes=[0, 1, 2], per_class=6)
    digit_image(5, (400, 300), "RGB").save(root / "2" / "large.png")  # far larger than the transforms use
    digit_image(6, (260, 390), "RGB").save(root / "2" / "large.jpg")
    age(root)
    return root


def test_stored_images_are_the_decoded_ones_at_the_size_the_transform_needs(folder, tmp_path):
    paths = sorted(str(p) for p in folder.rglob("*.*"))
    problems, facts = check_files(paths, str(tmp_path / "cache"), "test")
    assert problems == []
    for channels, mode in ((1, "L"), (3, "RGB")):
        for cache in ("memory", "disk"):
            (store,) = image_cache.build_stores(cache, str(tmp_path / "cache"), [(paths, 114)], facts, channels, "bilinear")
            for i, path in enumerate(paths):
                decoded = load_image(path, mode, decode_size=114, fit="bilinear")
                assert store.get(i) is None
                store.put(i, decoded)
                stored = store.get(i)
                assert stored.mode == mode and np.array_equal(np.asarray(stored), np.asarray(decoded))
            large = {os.path.basename(p): store.get(i).size for i, p in enumerate(paths) if "large" in p}
            # the PNG as torchvision's Resize(114) sizes it (shorter side 114, the longer one rounded down);
            # the JPEG as PIL's draft mode decodes it (at 1/2: 1/4 would be below 114), not resized again
            assert large == {"large.png": (152, 114), "large.jpg": (130, 195)}
            with Image.open(folder / "2" / "large.jpg") as jpeg:
                jpeg.draft(mode, (114, 114))
                assert jpeg.size == (130, 195)
    assert fitted_size(400, 300, 500) == (400, 300)  # never enlarged


def test_the_layout_knows_the_size_of_every_decoded_image_before_decoding(tmp_path):
    """decoded_sizes (from the width and height the file check records) against what load_image gives."""
    rng = np.random.default_rng(0)
    for n in range(60):
        width, height = (int(v) for v in rng.integers(8, 700, 2))
        jpeg, size = n % 2 == 0, int(rng.choice([16, 32, 57, 114]))
        path = tmp_path / f"{n}.{'jpg' if jpeg else 'png'}"
        Image.new("RGB", (width, height), (10, 200, 30)).save(path)
        predicted = decoded_sizes(np.array([width]), np.array([height]), np.array([jpeg]), size)
        assert load_image(str(path), "RGB", decode_size=size, fit="bilinear").size == tuple(int(v[0]) for v in predicted)


def test_memory_store_is_shared_with_workers_and_images_are_decoded_once(folder, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="trainer"):
        data = folder_data(folder, tmp_path / "cache", num_workers=2)
    assert "data.cache=auto: memory (the 20 decoded images take" in caplog.text
    first = batches(data.val_loader)
    assert sum(len(y) for _, y in data.train_loader) == 10
    for loader in (data.train_loader, data.val_loader):
        store = loader.dataset.cache
        assert store.filled() == len(store) == 10  # filled by the worker processes, seen by this one
    for path in folder.rglob("*.*"):
        path.unlink()  # from now on only the stores have the images
    assert same_batches(first, batches(data.val_loader))
    assert sum(len(y) for _, y in data.train_loader) == 10  # the second epoch


def epoch_batches(loader, epoch: int):
    loader.batch_sampler.set_epoch(epoch)
    return batches(loader)


def test_a_full_pixel_store_gives_the_batches_the_workers_collate_without_them(folder, tmp_path, monkeypatch):
    uncached = folder_data(folder, tmp_path / "cache", cache="none").train_loader
    expected = {epoch: epoch_batches(uncached, epoch) for epoch in (1, 2)}
    data = folder_data(folder, tmp_path / "cache", cache="memory", num_workers=2)  # small recipe: a pixel store
    train = data.train_loader
    assert train.dataset.cache.pixels == (3, 16, 16) and not train.dataset.all_stored()
    first = epoch_batches(train, 1)  # the workers decode, transform and store
    assert train.dataset.all_stored()
    assert same_batches(first, expected[1])
    for path in folder.rglob("*.*"):
        path.unlink()

    def no_per_image_loading(self):
        raise AssertionError("a full pixel store is read by the DataLoader's per-image path")

    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", no_per_image_loading)
    assert same_batches(first, epoch_batches(train, 1))  # gathered from the store in this process
    second = epoch_batches(train, 2)
    monkeypatch.undo()
    assert same_batches(second, expected[2]) and not same_batches(second, first)
    train.batch_sampler.set_epoch(2)
    train.batch_sampler.skip_batches(1)  # a resume inside the epoch: the rest of its batches
    assert same_batches(second[1:], batches(train))


def test_a_disk_pixel_store_serves_the_next_run_from_its_first_epoch(folder, tmp_path, caplog):
    uncached = epoch_batches(folder_data(folder, tmp_path / "cache", cache="none").train_loader, 1)
    first = folder_data(folder, tmp_path / "cache", cache="disk").train_loader
    assert same_batches(uncached, epoch_batches(first, 1))
    with caplog.at_level(logging.INFO, logger="trainer"):
        again = folder_data(folder, tmp_path / "cache", cache="disk").train_loader
    assert "10 of 10 images stored by an earlier run" in caplog.text
    assert again.dataset.all_stored()
    assert same_batches(uncached, epoch_batches(again, 1))
    decoded = folder_data(folder, tmp_path / "cache", cache="disk", augment="none").train_loader
    assert decoded.dataset.cache.pixels is None  # per-image recipes store decoded images, in a file of their own
    canvases = folder_data(folder, tmp_path / "cache", cache="disk", augment="imagenet").train_loader
    assert canvases.dataset.cache.pixels[0] == 3 and canvases.dataset.cache.path != again.dataset.cache.path
    changed = again.dataset.paths[0]
    before = os.stat(changed).st_mtime_ns
    digit_image(100, Image.open(changed).size, "L").save(changed)
    os.utime(changed, ns=(before - DAY_NS, before - DAY_NS))
    rebuilt = folder_data(folder, tmp_path / "cache", cache="disk").train_loader
    assert not rebuilt.dataset.all_stored() and rebuilt.dataset.cache.get_pixels(0) is None
    now = epoch_batches(folder_data(folder, tmp_path / "cache", cache="none").train_loader, 1)
    assert not same_batches(uncached, now) and same_batches(now, epoch_batches(rebuilt, 1))
    assert rebuilt.dataset.all_stored()


def test_disk_store_is_kept_between_runs_and_a_changed_file_is_decoded_again(folder, tmp_path, caplog):
    uncached = batches(folder_data(folder, tmp_path / "cache", cache="none").val_loader)
    first = folder_data(folder, tmp_path / "cache", cache="disk")
    assert same_batches(uncached, batches(first.val_loader))
    with caplog.at_level(logging.INFO, logger="trainer"):
        again = folder_data(folder, tmp_path / "cache", cache="disk")
    assert "10 of 10 images stored by an earlier run" in caplog.text
    for path in folder.rglob("*.*"):
        path.unlink()
    assert same_batches(uncached, batches(again.val_loader))  # read from the file, not decoded

    write_image_folder(folder, classes=[0, 1, 2], per_class=6)
    digit_image(5, (400, 300), "RGB").save(folder / "2" / "large.png")
    digit_image(6, (260, 390), "RGB").save(folder / "2" / "large.jpg")
    age(folder)
    changed = again.val_loader.dataset.paths[3]
    before = os.stat(changed).st_mtime_ns
    digit_image(100, Image.open(changed).size, "L").save(changed)  # same path and size, new picture
    os.utime(changed, ns=(before - DAY_NS, before - DAY_NS))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainer"):
        rebuilt = folder_data(folder, tmp_path / "cache", cache="disk")
    assert "9 of 10 images stored by an earlier run, 1 changed since" in caplog.text
    assert rebuilt.val_loader.dataset.cache.get(3) is None
    now_uncached = batches(folder_data(folder, tmp_path / "cache", cache="none").val_loader)
    assert not same_batches(uncached, now_uncached)
    assert same_batches(now_uncached, batches(rebuilt.val_loader))


def test_a_cache_file_of_another_version_or_truncated_is_rebuilt_never_read(folder, tmp_path, caplog):
    uncached = batches(folder_data(folder, tmp_path / "cache", cache="none").val_loader)
    filled = folder_data(folder, tmp_path / "cache", cache="disk").val_loader
    batches(filled)
    path = Path(filled.dataset.cache.path)
    for damage, reason in (("truncate", "it is truncated"), ("version", "it was written by another version of trainer (format 9")):
        if damage == "truncate":
            os.truncate(path, os.path.getsize(path) - 100)
        else:
            head = path.read_bytes()
            path.write_bytes(head.replace(b'"version": 1', b'"version": 9', 1))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="trainer"):
            data = folder_data(folder, tmp_path / "cache", cache="disk")
        assert f"'{path}' cannot be used: {reason}" in caplog.text
        assert data.val_loader.dataset.cache.filled() == 0
        assert same_batches(uncached, batches(data.val_loader))


def test_a_cache_folder_that_cannot_be_written_falls_back_to_decoding(folder, tmp_path, caplog):
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    uncached = batches(folder_data(folder, tmp_path / "cache", cache="none").val_loader)
    with caplog.at_level(logging.INFO, logger="trainer"):
        data = folder_data(folder, blocked / "cache", cache="disk")
    assert "cannot remember the file check" in caplog.text
    assert "data.cache=disk: cannot write the decoded-image cache" in caplog.text
    assert "images are decoded every epoch instead" in caplog.text
    assert data.val_loader.dataset.cache is None and same_batches(uncached, batches(data.val_loader))


def test_the_file_check_opens_only_new_and_changed_files(folder, tmp_path, caplog):
    def check():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="trainer"):
            folder_data(folder, tmp_path / "cache", cache="none")
        return [line for line in caplog.text.splitlines() if "file check" in line][0].split(": ", 1)[1]

    assert check() == "checked 20 files, 0 remembered"
    assert check() == "checked 0 files, 20 remembered"
    digit_image(7, (16, 16), "L").save(folder / "0" / "new.png")
    existing = sorted((folder / "1").glob("*.png"))[0]
    digit_image(8, (16, 16), "L").save(existing)  # was another picture
    age(folder)
    assert check() == "checked 2 files, 19 remembered"
    existing.write_bytes(b"x" * 100)  # now broken: checked, refused, never remembered
    age(folder, days=2)
    for _ in range(2):
        with pytest.raises(UserError, match=f"{existing.name}' is not an image file"):
            check()


def test_default_workers_share_the_cores_among_the_processes_of_the_machine(monkeypatch):
    monkeypatch.setattr(loaders, "available_cpus", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loaders.default_workers() == 63
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loaders.default_workers() == 7  # 8 processes: 56 workers, not 8 x 64 x 2
    monkeypatch.setattr(loaders, "available_cpus", lambda: 3)
    assert loaders.default_workers() == 0  # 8 processes on 3 cores: each loads its own batches
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    train, val = loaders.make_loaders(list(range(8)), list(range(4)), 2, None, 0, False)
    assert (train.num_workers, train.persistent_workers) == (2, True)
    assert (val.num_workers, val.persistent_workers) == (2, False)  # started for each validation, then ended


def test_auto_picks_memory_and_a_second_run_skips_the_file_check(tmp_path):
    root = tmp_path / "train"
    write_image_folder(root, classes=[0, 1], per_class=6)
    age(root)
    common = ("data=image_folder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=16",
              "trainer.max_epochs=1", "trainer.limit_train_batches=1", "data.num_workers=0", "progress=false")
    outputs = []
    for run in ("first", "second"):
        result = run_module("trainer", *common, f"hydra.run.dir={tmp_path / run}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    assert f"file check of data.root={root}: checked 12 files, 0 remembered" in outputs[0]
    assert f"file check of data.root={root}: checked 0 files, 12 remembered" in outputs[1]
    for output in outputs:
        assert "data.cache=auto: memory (the 12 decoded images take" in output


def metrics_without_time(run_dir):
    return [{key: value for key, value in row.items() if key != "seconds"} for row in read_csv(run_dir / "metrics.csv")]


@pytest.mark.slow
@pytest.mark.parametrize("workers, caches", [(0, ("none", "memory")), (2, ("none", "disk", "disk"))])
def test_a_cached_run_equals_an_uncached_run(tmp_path, workers, caches):
    root = tmp_path / "train"
    write_image_folder(root, classes=[0, 1, 2], per_class=8)
    digit_image(5, (300, 200), "RGB").save(root / "2" / "large.jpg")
    age(root)
    rows = []
    for n, cache in enumerate(caches):
        result = run_module("trainer", "data=image_folder", f"data.root={root}", f"data.cache={cache}",
                            f"data.cache_dir={tmp_path / 'cache'}", f"data.num_workers={workers}", "data.batch_size=8",
                            "trainer.max_epochs=2", "progress=false", f"hydra.run.dir={tmp_path / str(n)}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        rows.append(metrics_without_time(tmp_path / str(n)))
        if n == 2:  # both splits read from the files the run before filled
            stored = re.findall(r"(\d+) of (\d+) images stored by an earlier run", result.stdout + result.stderr)
            assert sorted(stored) == [("20", "20"), ("5", "5")]
    assert len(rows[0]) == 2 and all(r == rows[0] for r in rows[1:])


def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and posix_fallocate as on Linux")
def test_a_disk_without_room_for_the_cache_falls_back_to_decoding(tmp_path):
    """RLIMIT_FSIZE makes the cache file's reservation fail as a full disk does (EFBIG, not ENOSPC)."""
    import subprocess

    from conftest import cli_env

    root = tmp_path / "train"
    for label in (0, 1):
        (root / str(label)).mkdir(parents=True)
        for n in range(40):  # 64 training images of 114 x 114 x 3 bytes: a 2.5 MB cache file
            digit_image(n + 40 * label, (120, 120), "RGB").save(root / str(label) / f"{n}.png")
    age(root)
    # data.augment=imagenet: its crops keep the decoded images large (the batched recipes keep only 32 px)
    command = [sys.executable, "-m", "trainer", "data=image_folder", f"data.root={root}", "data.augment=imagenet", "data.cache=disk",
               f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0", "trainer.max_epochs=1", "progress=false",
               f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
                            preexec_fn=limit_file_size)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "data.cache=disk: cannot write the decoded-image cache" in output and "File too large" in output
    assert len(read_csv(tmp_path / "run" / "metrics.csv")) == 1
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "cache").rglob("*"))
