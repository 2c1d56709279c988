"""What the decoded-image cache and the remembered file check save, in one process.

    python scripts/bench_image_cache.py [--pngs 10000] [--jpegs 300] [--check-files 70000] [--epochs 3] [--workers 0]

1. Epochs of the training loader (decode + timm's default augmentation, no model) over generated
   folders: N 28x28 grayscale PNGs (data.channels=1) and M 256x256 RGB JPEGs, with data.cache=none
   and data.cache=memory. The first epoch fills the cache and is reported apart; from the second on,
   the two loaders' epochs are interleaved so that a change in the machine's load hits both alike,
   and the median images/s of each and their ratio are printed. `none (before)` decodes as trainer did
   before the cache existed (no resize of images larger than the transforms use).
2. The start of a run over a folder of K tiny PNGs: the image_folder builder (listing, file check,
   split, loaders) with an empty cache directory, then again over the unchanged folder (the file check
   remembered), and after touching 1% of the files.
Nothing is downloaded: the images are drawn from scikit-learn's digits.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the trainer package

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from trainer.config.registry import build, schema_defaults  # noqa: E402
from trainer.data.datasets import DATASETS  # noqa: E402


def write_folder(root: str, count: int, size: int, fmt: str, mode: str, seed: int = 0) -> None:
    """root/<digit>/<n>.<fmt>: digits scaled to `size`, shifted and with noise, so that files differ."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
    for n in range(count):
        i = n % len(bunch.images)
        gray = Image.fromarray((bunch.images[i] * 15).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        pixels = np.asarray(gray, dtype=np.int16) + rng.integers(0, 20, (size, size))
        image = Image.fromarray(np.roll(pixels.clip(0, 255).astype(np.uint8), rng.integers(-2, 3), axis=1))
        if mode == "RGB":
            image = Image.merge("RGB", (image, image.point(lambda v: v // 2), image))
        image.save(os.path.join(root, str(bunch.target[i]), f"{n:06d}.{fmt}"), quality=90)


def bundle(root: str, cache: str, cache_dir: str, channels: int, workers: int):
    cfg = {**schema_defaults("data", "image_folder"), "root": root, "cache": cache, "cache_dir": cache_dir,
           "channels": channels, "num_workers": workers, "batch_size": 64}
    return build(DATASETS, cfg, seed=0)


def epoch(loader) -> float:
    started = time.perf_counter()
    seen = sum(len(targets) for _, targets in loader)
    return seen / (time.perf_counter() - started)


def compare_epochs(name: str, root: str, channels: int, cache_dir: str, epochs: int, workers: int) -> None:
    loaders = {cache: bundle(root, cache, cache_dir, channels, workers).train_loader for cache in ("none", "memory")}
    before = bundle(root, "none", cache_dir, channels, workers).train_loader
    before.dataset.dataset.fit = None  # (under PositionedSamples) decode as before the cache: no resize to the size the transforms use
    loaders["none (before)"] = before
    first = {cache: epoch(loader) for cache, loader in loaders.items()}
    rates = {cache: [] for cache in loaders}
    for _ in range(epochs - 1):
        for cache, loader in loaders.items():
            rates[cache].append(epoch(loader))
    images = len(loaders["none"].dataset)
    print(f"\n{name}: {images} training images, {workers} workers, training transform (timm's defaults)")
    for cache in loaders:
        print(f"  cache={cache:14s} epoch 1: {first[cache]:8.0f} images/s   epochs 2-{epochs} (median): "
              f"{statistics.median(rates[cache]):8.0f} images/s")
    ratio = statistics.median(rates["memory"]) / statistics.median(rates["none"])
    print(f"  memory / none from the second epoch on: {ratio:.2f}x")


def time_start(root: str, cache_dir: str) -> str:
    """Wall-clock and CPU seconds of building the data: on a machine shared with other jobs the wall
    clock also counts the time spent waiting for a core."""
    started, cpu = time.perf_counter(), time.process_time()
    bundle(root, "auto", cache_dir, 1, 0)
    return f"{time.perf_counter() - started:.2f} s ({time.process_time() - cpu:.2f} s CPU)"


def compare_starts(count: int, folder: str) -> None:
    root = os.path.join(folder, "many")
    write_folder(root, count, 28, "png", "L", seed=1)
    past = time.time() - 86_400  # files as a user brings them, not written a moment ago
    files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
    for path in files:
        os.utime(path, (past, past))
    cache_dir = os.path.join(folder, "start-cache")
    import sklearn.model_selection  # noqa: F401  the imports a builder does on first use: not what is timed
    import timm.data  # noqa: F401
    first, second = time_start(root, cache_dir), time_start(root, cache_dir)
    for path in files[:: 100]:
        os.utime(path, (past + 60, past + 60))
    touched = time_start(root, cache_dir)
    print(f"\nstart of a run over {count} 28x28 PNGs (list, check, split, loaders; imports excluded):")
    print(f"  first run: {first}   unchanged folder: {second}   1% of the files touched: {touched}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pngs", type=int, default=10000)
    parser.add_argument("--jpegs", type=int, default=300)
    parser.add_argument("--check-files", type=int, default=70000)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loader; the first fills the cache")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--folder", help="where to write the images (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or scratch
        cache_dir = os.path.join(folder, "cache")
        if args.pngs:
            write_folder(os.path.join(folder, "pngs"), args.pngs, 28, "png", "L")
            compare_epochs(f"{args.pngs} 28x28 grayscale PNGs", os.path.join(folder, "pngs"), 1, cache_dir, args.epochs, args.workers)
        if args.jpegs:
            write_folder(os.path.join(folder, "jpegs"), args.jpegs, 256, "jpg", "RGB")
            compare_epochs(f"{args.jpegs} 256x256 RGB JPEGs", os.path.join(folder, "jpegs"), 3, cache_dir, args.epochs, args.workers)
        if args.check_files:
            compare_starts(args.check_files, folder)


if __name__ == "__main__":
    main()
