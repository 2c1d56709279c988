"""Write scikit-learn's bundled digits as image files, in the two layouts trainer reads (nothing is downloaded):

    python scripts/make_digit_images.py digit_images [--size 32] [--format png]

    digit_images/train/<digit>/<n>.png   one sub-folder per class   (data=image_folder data.root=...)
    digit_images/val/<digit>/<n>.png     every 5th image            (data.val_root=..., or predict's input)
    digit_images/train.csv               columns file, label; labels are words (zero ... nine)
"""

import argparse
import csv
import os
from typing import Iterable, List, Tuple

import numpy as np
from PIL import Image

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_image(pixels: np.ndarray, size: int) -> Image.Image:
    """An 8x8 digit (values 0..16) as a size x size RGB image: white ink on a blue-ish background."""
    ink = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    return Image.merge("RGB", (ink, ink, ink.point(lambda v: 96 + v * 159 // 255)))


def write_class_folders(root: str, indices: Iterable[int], size: int, fmt: str) -> List[Tuple[str, int]]:
    """root/<digit>/<n>.<fmt> for each digit index (indices past 1,796 wrap around); returns (path, digit)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    written = []
    for n in indices:
        i = n % len(digits.target)
        label = int(digits.target[i])
        path = os.path.join(root, str(label), f"{n:05d}.{fmt}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        digit_image(digits.images[i], size).save(path, **({"quality": 90} if fmt == "jpg" else {}))
        written.append((path, label))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write (created)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    args = parser.parse_args()

    count = 1797
    val = set(range(0, count, 5))
    train = write_class_folders(os.path.join(args.out, "train"), [n for n in range(count) if n not in val], args.size, args.format)
    write_class_folders(os.path.join(args.out, "val"), sorted(val), args.size, args.format)
    with open(os.path.join(args.out, "train.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows((os.path.relpath(path, args.out), WORDS[label]) for path, label in train)
    print(f"written: {args.out}/train ({len(train)} images), {args.out}/val ({len(val)}), {args.out}/train.csv")


if __name__ == "__main__":
    main()
