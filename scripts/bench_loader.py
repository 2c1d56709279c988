"""Images per second of trainer's image_folder training loader (decode + timm augmentation) against a
plain torchvision ImageFolder + DataLoader with the very same transform, in one process.

    python scripts/bench_loader.py [--images 2000] [--size 64] [--image-size 64] [--workers 0 2] [--repeats 5]

Writes a folder of JPEGs made from scikit-learn's digits (nothing downloaded), warms both loaders up
(worker start, page cache), then times whole epochs in interleaved repeats, so that a change in the
machine's load hits both alike, and prints the median rate of each and their ratio. Also times the
up-front file check that trainer runs once per build, which the epochs do not include.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # make_digit_images, beside this file
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the trainer package

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

from make_digit_images import write_class_folders  # noqa: E402
from trainer.config.registry import build, schema_defaults  # noqa: E402
from trainer.data.datasets import DATASETS  # noqa: E402
from trainer.data.images import find_problems, images_under  # noqa: E402
from trainer.data.loaders import available_cpus  # noqa: E402


def epoch_rate(loader) -> float:
    started = time.perf_counter()
    seen = sum(len(targets) for _, targets in loader)
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="side of the JPEG files")
    parser.add_argument("--image-size", type=int, default=64, help="data.image_size: side of the model's input")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, available_cpus()])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", help="where to write the images (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or os.path.join(scratch, "images")
        write_class_folders(folder, range(args.images), args.size, "jpg")
        paths = images_under(folder)
        started = time.perf_counter()
        find_problems(paths)
        check_ms = (time.perf_counter() - started) * 1000
        print(f"{len(paths)} JPEGs of {args.size}x{args.size} px -> {args.image_size} px, batch {args.batch_size}, "
              f"{args.repeats} interleaved epochs each, {available_cpus()} cores, torch {torch.__version__}")
        print(f"up-front file check (once per build, not in the epochs below): {check_ms:.0f} ms, "
              f"{check_ms * 1000 / len(paths):.0f} us per file")
        print(f"{'workers':>7}  {'trainer img/s':>13}  {'torchvision img/s':>17}  {'ratio':>5}")
        for workers in args.workers:
            torch.manual_seed(0)
            # val_root=folder: every image is in the training loader (no split), as in the baseline
            ours = build(DATASETS, {
                **schema_defaults("data", "image_folder"), "root": folder, "val_root": folder,
                "image_size": args.image_size, "batch_size": args.batch_size, "num_workers": workers,
            }, seed=0).train_loader
            plain = DataLoader(
                ImageFolder(folder, transform=ours.dataset.transform), batch_size=args.batch_size, shuffle=True,
                num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0),
            )
            epoch_rate(ours), epoch_rate(plain)  # warm-up: worker start, page cache
            rates = {"ours": [], "plain": []}
            for _ in range(args.repeats):
                rates["ours"].append(epoch_rate(ours))
                rates["plain"].append(epoch_rate(plain))
            ours_rate, plain_rate = statistics.median(rates["ours"]), statistics.median(rates["plain"])
            print(f"{workers:>7}  {ours_rate:>13.0f}  {plain_rate:>17.0f}  {ours_rate / plain_rate:>5.2f}")
            del ours, plain


if __name__ == "__main__":
    main()
