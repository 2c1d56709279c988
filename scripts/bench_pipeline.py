"""A training epoch on a real folder of image files, three ways, same model, one process each:

    (a) project  the trainer with its defaults for the folder (python -m trainer data=image_folder
                 data.root=... data.channels=1): decoded-image cache, workers, augmentation recipe
    (b) timm     a plain loop over torchvision's ImageFolder with timm's training transform (what
                 timm's train.py does), as many loader workers as (a)
    (c) memory   the same model from uint8 tensors already in memory, with the same per-batch
                 tensor augmentation as (a) (the limit of any loader)

    python scripts/bench_pipeline.py                        # 60,000 28x28 grayscale PNGs (made once)
    python scripts/bench_pipeline.py --images 6000          # a quicker run on a smaller folder
    python scripts/bench_pipeline.py --jpeg                 # 2,000 256x256 RGB JPEGs instead
    python scripts/bench_pipeline.py --folders-only         # only make the folders (to train on them)

The folders are made under --root (default outputs/bench_pipeline) from scikit-learn's digits, each
digit drawn at a random angle, scale, shift, stroke and noise (scripts/make_digit_images.py's digits,
distorted; see `distorted_digit`), so the same folders serve as a 10-class accuracy check too (a
validation folder of a sixth of the training size is written beside it). Each way runs in its own
subprocess (so that its peak memory is its own): images/s of each epoch (the first, which fills
(a)'s cache, is reported apart), and the peak resident memory of the process and its loader workers.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --- the folders ----------------------------------------------------------------------------
def distorted_digit(pixels: np.ndarray, size: int, rng: np.random.Generator, channels: int):
    """An 8x8 digit (0..16) drawn at `size` px: rotated up to 20 degrees, scaled 0.7-1.1, shifted up to
    a tenth of the side, its stroke thickened or thinned, with noise and a random background level."""
    from PIL import Image, ImageFilter

    ink = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    scale = rng.uniform(0.7, 1.1)
    shift = rng.uniform(-0.1, 0.1, 2) * size
    ink = ink.rotate(rng.uniform(-20, 20), Image.Resampling.BILINEAR, translate=tuple(shift))
    side = max(4, int(size * scale))
    canvas = Image.new("L", (size, size))
    canvas.paste(ink.resize((side, side), Image.Resampling.BILINEAR), ((size - side) // 2, (size - side) // 2))
    stroke = rng.integers(0, 3)
    if stroke == 1:
        canvas = canvas.filter(ImageFilter.MaxFilter(3))
    elif stroke == 2:
        canvas = canvas.filter(ImageFilter.GaussianBlur(1.0))
    array = np.asarray(canvas, dtype=np.float32) * rng.uniform(0.5, 1.0) + rng.uniform(0, 80)
    array = np.clip(array + rng.normal(0, 25, array.shape), 0, 255).astype(np.uint8)
    if channels == 3:
        tint = rng.uniform(0.5, 1.0, 3)
        array = np.clip(array[..., None] * tint, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def make_folder(root: Path, count: int, size: int, fmt: str, channels: int, seed: int) -> Path:
    """root/<digit>/<n>.<fmt>, made once (a file `done` marks a complete folder)."""
    from sklearn.datasets import load_digits

    if (root / "done").exists():
        return root
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for n in range(count):
        i = int(rng.integers(len(digits.target)))
        path = root / str(digits.target[i]) / f"{n:06d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        distorted_digit(digits.images[i], size, rng, channels).save(path, **({"quality": 90} if fmt == "jpg" else {}))
    (root / "done").write_text(str(count))
    return root


# --- the three ways -------------------------------------------------------------------------
def project_run(train: str, val: str, channels: int):
    """(a): the run `python -m trainer data=image_folder data.root=... data.channels=...` assembles."""
    from hydra import compose, initialize_config_dir

    from trainer.config.schema import CONF_DIR, register_configs
    from trainer.run import assembly, checks

    register_configs()
    with initialize_config_dir(CONF_DIR, version_base=None):
        cfg = compose("train", overrides=["data=image_folder", f"data.root={train}", f"data.val_root={val}",
                                          f"data.channels={channels}", "progress=false"])
    checks.check_config(cfg)
    checks.normalise_config(cfg)
    engine, train_loader, _ = assembly.assemble(cfg, run_dir=None)
    return lambda epoch: engine.train_epoch(train_loader, epoch), len(train_loader.dataset), train_loader.num_workers


def model_and_optimizer(channels: int):
    """The project's default model and optimizer, built as (a) builds them."""
    import torch

    from trainer.config.registry import schema_defaults
    from trainer.parts.models import build_model

    torch.manual_seed(0)
    model = build_model(schema_defaults("model", "cnn"), channels, 10)
    optimizer_settings = schema_defaults("optimizer", "adamw")
    optimizer = torch.optim.AdamW(model.parameters(), lr=optimizer_settings["lr"], weight_decay=optimizer_settings["weight_decay"])
    return model, optimizer


def plain_step(model, optimizer, inputs, labels):
    import torch.nn.functional as F

    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs), labels).backward()
    optimizer.step()


def timm_run(train: str, channels: int, workers: int, size: int):
    """(b): torchvision's ImageFolder, timm's create_transform(is_training=True), a plain loop."""
    import torch
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    transform = create_transform(size, is_training=True, mean=(0.5,) * channels, std=(0.5,) * channels)
    mode = "L" if channels == 1 else "RGB"
    dataset = ImageFolder(train, transform=transform, loader=lambda p: __import__("PIL.Image").Image.open(p).convert(mode))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=False)
    model, optimizer = model_and_optimizer(channels)
    model.train()

    def epoch(_):
        for inputs, labels in loader:
            plain_step(model, optimizer, inputs, labels)

    return epoch, len(dataset)


def memory_run(train: str, channels: int, size: int):
    """(c): every image decoded up front into one uint8 tensor at the input size; each batch cropped,
    flipped and normalised by the project's batch transform (its recipe for small images), a plain loop."""
    import torch
    from PIL import Image
    from torchvision.datasets import ImageFolder

    from trainer.data.batch_augment import BATCHED, BatchTransform

    mode = "L" if channels == 1 else "RGB"
    folder = ImageFolder(train)
    pixels = np.stack([np.asarray(Image.open(p).convert(mode).resize((size, size), Image.Resampling.BILINEAR))
                       for p, _ in folder.samples])
    images = torch.from_numpy(pixels).reshape(len(pixels), size, size, channels).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(folder.targets)
    transform = BatchTransform(0, size // BATCHED["small"], 0.0, 0.0, (0.5,) * channels, (0.5,) * channels)
    model, optimizer = model_and_optimizer(channels)
    model.train()

    def epoch(number):
        order = torch.randperm(len(images))
        for i, start in enumerate(range(0, len(order), 32)):
            index = order[start:start + 32]
            inputs, targets = transform(images[index], labels[index], number, i)
            plain_step(model, optimizer, inputs, targets)

    return epoch, len(images)


def peak_memory_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest worker, not their sum
    return (own + children) / 1024


def run_one(way: str, train: str, val: str, channels: int, epochs: int, size: int) -> None:
    """One way in this process: a JSON line of its epochs' images/s and peak memory."""
    import logging

    logging.getLogger("trainer").setLevel(logging.WARNING)
    started = time.perf_counter()
    if way == "project":
        epoch, count, workers = project_run(train, val, channels)
    elif way == "timm":
        from trainer.data.loaders import default_workers

        epoch, count = timm_run(train, channels, default_workers(), size)
    else:
        epoch, count = memory_run(train, channels, size)
    setup = time.perf_counter() - started
    rates = []
    for number in range(1, epochs + 1):
        started = time.perf_counter()
        epoch(number)
        rates.append(count / (time.perf_counter() - started))
    print(json.dumps({"way": way, "setup_s": setup, "images_per_s": rates, "peak_mb": peak_memory_mb()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60000, help="training images (default 60,000; 2,000 with --jpeg)")
    parser.add_argument("--jpeg", action="store_true", help="256x256 RGB JPEGs instead of 28x28 grayscale PNGs")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each way (the first reported apart)")
    parser.add_argument("--root", default=str(ROOT / "outputs" / "bench_pipeline"))
    parser.add_argument("--ways", default="project,timm,memory")
    parser.add_argument("--folders-only", action="store_true", help="make the training and validation folders, time nothing")
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)  # way train val channels epochs size: a subprocess
    args = parser.parse_args()
    if args.one:
        way, train, val, channels, epochs, size = args.one
        return run_one(way, train, val, int(channels), int(epochs), int(size))
    images = 2000 if args.jpeg and args.images == 60000 else args.images
    size, fmt, channels = (256, "jpg", 3) if args.jpeg else (28, "png", 1)
    name = f"{images}x{size}{fmt}"
    started = time.perf_counter()
    train = make_folder(Path(args.root) / name / "train", images, size, fmt, channels, seed=0)
    val = make_folder(Path(args.root) / name / "val", max(10, images // 6), size, fmt, channels, seed=1)
    print(f"folders: {train} and {val} ({time.perf_counter() - started:.0f} s)")
    if args.folders_only:
        return
    input_size = 32  # the built-in cnn's input, which (a) uses by default
    results = {}
    for way in args.ways.split(","):
        command = [sys.executable, __file__, "--one", way, str(train), str(val), str(channels), str(args.epochs), str(input_size)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[way] = json.loads(output.strip().splitlines()[-1])
        r = results[way]
        print(f"({'abc'['project,timm,memory'.split(',').index(way)]}) {way:8s} setup {r['setup_s']:5.1f} s   first epoch "
              f"{r['images_per_s'][0]:7.0f} img/s   later epochs {np.median(r['images_per_s'][1:] or [0]):7.0f} img/s   "
              f"peak memory {r['peak_mb']:6.0f} MB", flush=True)
    if {"project", "timm", "memory"} <= set(results):
        later = {way: float(np.median(r["images_per_s"][1:] or r["images_per_s"])) for way, r in results.items()}
        print(f"from epoch 2: (a)/(c) = {later['project'] / later['memory']:.2f} (goal >= 0.9), "
              f"(a)/(b) = {later['project'] / later['timm']:.2f} (goal >= 2.5)")


if __name__ == "__main__":
    main()
