"""Small image datasets written from scikit-learn's digits, in the layouts users bring (class
folders, CSVs), in every storage mode and several sizes, with broken files on demand."""

import csv
import functools
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
from PIL import Image

# (format, mode) pairs cycled over the images: PNG stores every mode; JPEG only L and RGB.
KINDS = (("png", "L"), ("jpg", "RGB"), ("png", "RGBA"), ("png", "P"), ("jpg", "L"), ("png", "RGB"))
SIZES = ((16, 16), (24, 24), (20, 14), (12, 30))  # (width, height): square and not


@functools.lru_cache(maxsize=1)
def digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images * (255 / 16)).astype(np.uint8), bunch.target


def digit_image(index: int, size: Tuple[int, int], mode: str) -> Image.Image:
    pixels, _ = digits()
    gray = Image.fromarray(pixels[index]).resize(size, Image.Resampling.BILINEAR)
    if mode == "RGB":
        return Image.merge("RGB", (gray, gray.point(lambda v: v // 2), gray))  # colour that differs per channel
    if mode == "RGBA":
        return Image.merge("RGBA", (gray, gray, gray, Image.new("L", size, 255)))
    if mode == "P":
        return gray.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    return gray


def indices_of(label: int, count: int, skip: int = 0) -> List[int]:
    _, target = digits()
    return [int(i) for i in np.flatnonzero(target == label)[skip: skip + count]]


def write_image(path: Path, index: int, position: int, sizes: Sequence[Tuple[int, int]] = SIZES) -> Path:
    fmt, mode = KINDS[position % len(KINDS)]
    path = path.with_suffix("." + fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    digit_image(index, sizes[position % len(sizes)], mode).save(path)
    return path


def write_image_folder(root: Path, classes: Iterable[int] = range(10), per_class: int = 10, skip: int = 0) -> Dict[str, List[Path]]:
    """root/<digit>/<n>.<png|jpg>, mixed modes and sizes; returns the files of each class."""
    written = {}
    for label in classes:
        written[str(label)] = [
            write_image(root / str(label) / f"{label}_{n:03d}", index, n + label)
            for n, index in enumerate(indices_of(label, per_class, skip))
        ]
    return written


def write_csv(path: Path, rows: Sequence[Sequence[str]], header: Sequence[str] = ("image", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_csv_dataset(folder: Path, names: Dict[int, str], per_class: int = 10, skip: int = 0) -> Tuple[Path, List[Tuple[str, str]]]:
    """folder/images/<n>.<ext> and folder/train.csv with columns image, label (labels from `names`)."""
    rows = []
    for label, name in names.items():
        for n, index in enumerate(indices_of(label, per_class, skip)):
            path = write_image(folder / "images" / f"{label}_{n:03d}", index, n + label)
            rows.append((f"{path.parent.name}/{path.name}", name))
    return write_csv(folder / "train.csv", rows), rows


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def not_an_image(path: Path) -> Path:
    path.write_text("this is a text file with an image's name\n")
    return path


def write_identical_images(root: Path, classes: Iterable[int] = (0, 1), per_class: int = 16) -> None:
    """root/<class>/<n>.png, every file the same RGB picture: any two batches hold the same images, so
    whatever differs between them was drawn by the augmentation."""
    picture = digit_image(indices_of(3, 1)[0], (24, 24), "RGB")
    for label in classes:
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            picture.save(folder / f"{n:03d}.png")
