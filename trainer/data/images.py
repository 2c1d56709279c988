"""Image files: find them (class folders, CSVs, plain folders), check them, and read them.

Every problem is reported with the file's path: up front where a cheap check finds it (PIL's
`verify`, which reads headers and checksums without decoding pixels), otherwise on first decode,
also inside DataLoader worker processes (see `UnreadableImage` and trainer.data.loaders.ImageLoader).
"""

import csv
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from trainer.errors import UserError

log = logging.getLogger("trainer")

# What PIL raises for a file that is not an image, is truncated, or is corrupt.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

def skip_hint(key: str) -> str:
    return f"set {key}=true to leave bad files out"


def one_line(err: Exception) -> str:
    return " ".join(str(err).split())


class UnreadableImage(Exception):
    """An image that fails to decode. Its one-line message names the file; a DataLoader worker
    re-raises it in the main process with the worker's traceback prepended (see `message_of`)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason  # what is wrong, without the path (lost when a worker re-raises it)


def message_of(err: UnreadableImage) -> str:
    """The original one-line message, also from the copy a DataLoader worker re-raises."""
    last_line = str(err).strip().splitlines()[-1]
    return last_line.split(f"{UnreadableImage.__name__}: ", 1)[-1]


# --- finding files --------------------------------------------------------------------------
def require_dir(path: str, key: str) -> None:
    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
        raise UserError(f"{key}={path}: the folder {what}")


@functools.lru_cache(maxsize=None)
def image_extensions() -> Tuple[str, ...]:
    """torchvision's list (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp); imported on first use
    because importing torchvision takes seconds, which runs on in-memory data should not pay."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def is_image_file(path: str) -> bool:
    return path.lower().endswith(image_extensions())


def class_folders(root: str, key: str) -> List[str]:
    """Sub-folders of `root`, sorted; hidden ones (.ipynb_checkpoints, .git) are not classes."""
    require_dir(root, key)
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise UserError(f"{key}={root} has no class sub-folders; expected {root}/<class name>/<image files>")
    return names


def images_under(folder: str) -> List[str]:
    """Every image file under `folder`, recursively, in sorted order; hidden files and folders skipped."""
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [os.path.join(directory, f) for f in sorted(files) if not f.startswith(".") and is_image_file(f)]
    return found


def scan_class_folders(root: str, key: str, class_names: Optional[Sequence[str]] = None) -> Tuple[List[str], List[str], List[str]]:
    """(paths, labels, folder names) of root/<class>/**/<image>. With `class_names` (the training
    classes), a folder of another name is an error: the model could never predict it."""
    names = class_folders(root, key)
    if class_names is not None:
        unseen = [n for n in names if n not in class_names]
        if unseen:
            raise UserError(
                f"{key}={root} has classes that are not in the training data: {', '.join(unseen)}; "
                f"training classes: {', '.join(class_names)}"
            )
    paths, labels = [], []
    for name in names:
        found = images_under(os.path.join(root, name))
        if not found:
            raise UserError(
                f"class folder '{os.path.join(root, name)}' holds no image files "
                f"(extensions: {' '.join(image_extensions())}); add images or remove the folder"
            )
        paths += found
        labels += [name] * len(found)
    return paths, labels, names


def read_csv_rows(path: str, key: str) -> Tuple[List[dict], List[str]]:
    if not os.path.isfile(path):
        raise UserError(f"{key}={path}: the CSV file does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets write a BOM
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{key}={path} is not a readable CSV file: {err}") from None
    if not rows:
        raise UserError(f"{key}={path} has no rows (columns: {', '.join(columns) or 'none'})")
    return rows, columns


def require_column(columns: List[str], column: str, csv_path: str, key: str) -> None:
    if column not in columns:
        raise UserError(f"CSV '{csv_path}' has no column '{column}' ({key}); its columns are: {', '.join(columns)}")


def csv_column(rows: List[dict], column: str, csv_path: str) -> List[str]:
    values = [(row.get(column) or "").strip() for row in rows]
    empty = [i + 2 for i, v in enumerate(values) if not v]  # line numbers: the header is line 1
    if empty:
        raise UserError(f"CSV '{csv_path}' has an empty '{column}' on line(s) {', '.join(map(str, empty[:10]))}")
    return values


def scan_csv(csv_path: str, image_dir: Optional[str], path_column: str, label_column: Optional[str],
             path_suffix: str = "", key: str = "data.csv") -> Tuple[List[str], List[str], List[str]]:
    """(image paths, labels, the path column's values as written) of a CSV; labels are [] without a label column.
    Paths are relative to `image_dir`, or to the CSV's folder."""
    rows, columns = read_csv_rows(csv_path, key)
    require_column(columns, path_column, csv_path, "data.path_column" if key.startswith("data.") else "path_column")
    names = csv_column(rows, path_column, csv_path)
    labels = []
    if label_column is not None:
        require_column(columns, label_column, csv_path, "data.label_column")
        labels = csv_column(rows, label_column, csv_path)
    base = image_dir if image_dir is not None else os.path.dirname(os.path.abspath(csv_path))
    require_dir(base, "data.image_dir" if image_dir is not None else f"the folder of {key}")
    return [os.path.join(base, name + path_suffix) for name in names], labels, names


def sorted_class_names(labels: Sequence[str]) -> List[str]:
    """Distinct labels in order: numerically when every label is an integer (2 before 10), else by text."""
    distinct = set(labels)
    try:
        return sorted(distinct, key=lambda label: (int(label), label))
    except ValueError:
        return sorted(distinct)


# --- checking files -------------------------------------------------------------------------
def problem_with(path: str) -> Optional[str]:
    """Why `path` cannot be used as an image, or None (see `examine`)."""
    return examine(path)[0]


def examine(path: str) -> Tuple[Optional[str], Optional[Tuple[int, int, bool]]]:
    """(why `path` cannot be used as an image, or None; its (width, height, is a JPEG) when it can). Cheap:
    `verify` reads the structure (and a PNG's checksums) without decoding pixels. It cannot see a
    truncated JPEG, so a JPEG that does not end with its end-of-image marker is decoded once to
    decide (some files carry trailing bytes after the marker and are fine)."""
    if not os.path.isfile(path):
        return ("does not exist" if not os.path.exists(path) else "is not a file"), None
    try:
        with Image.open(path) as img:
            fmt, size = img.format, (*img.size, img.format == "JPEG")
            img.verify()
        if fmt == "JPEG" and not ends_with_jpeg_marker(path):
            with Image.open(path) as img:
                img.load()
    except Image.UnidentifiedImageError:
        return "is not an image file PIL can read", None
    except DECODE_ERRORS as err:
        return f"is truncated or corrupt ({one_line(err)})", None
    return None, size


def ends_with_jpeg_marker(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 2))
        return f.read(2) == b"\xff\xd9"


def find_problems(paths: Sequence[str], threads: int = 8) -> List[Tuple[int, str]]:
    """(index, reason) of every unusable file, checked by a few threads (file reads release the GIL)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = list(pool.map(problem_with, paths, chunksize=64))
    return [(i, reason) for i, reason in enumerate(reasons) if reason is not None]


def drop_bad_files(paths: List[str], labels: List[str], skip_bad_files: bool, what: str,
                   skip_key: str = "data.skip_bad_files", problems: Optional[List[Tuple[int, str]]] = None) -> Tuple[List[str], List[str]]:
    """Refuse (or, with skip_bad_files, leave out with a counted warning) files that are missing or unreadable.
    `problems`: what `find_problems` would say, when already known (trainer.data.file_checks remembers)."""
    if problems is None:
        problems = find_problems(paths)
    if not problems:
        return paths, labels
    listed = "; ".join(f"'{paths[i]}' {reason}" for i, reason in problems[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    if not skip_bad_files:
        noun, them = ("a bad image file", "it") if len(problems) == 1 else (f"{len(problems)} bad image files", "them")
        raise UserError(f"{what} has {noun}: {listed}{more}. Remove or replace {them}, or {skip_hint(skip_key)}")
    log.warning(f"warning: left out {len(problems)} of {len(paths)} image files of {what} ({skip_key}=true): {listed}{more}")
    bad = {i for i, _ in problems}
    keep = [i for i in range(len(paths)) if i not in bad]
    return [paths[i] for i in keep], ([labels[i] for i in keep] if labels else labels)


# --- reading files --------------------------------------------------------------------------
# PIL's resampling filter for each data.interpolation
RESAMPLING = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
              "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def fitted_size(width: int, height: int, decode_size: int) -> Tuple[int, int]:
    """(width, height) of an image whose shorter side is brought down to `decode_size` (aspect kept, the
    longer side rounded down as torchvision's Resize does); the size itself when it is not larger."""
    short, long = min(width, height), max(width, height)
    if short <= decode_size:
        return width, height
    long = int(decode_size * long / short)
    return (decode_size, long) if width <= height else (long, decode_size)


def decoded_sizes(width: np.ndarray, height: np.ndarray, jpeg: np.ndarray, decode_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(widths, heights) that `load_image(..., decode_size, fit)` gives for images stored at width x
    height (integer arrays): a JPEG's reduction by PIL's draft mode (the largest of 8, 4, 2, 1 that
    leaves both sides at least decode_size, rounding up), then `fitted_size` where still needed."""
    width, height = np.asarray(width, dtype=np.int64), np.asarray(height, dtype=np.int64)
    most = np.minimum(width // decode_size, height // decode_size)
    scale = np.where(most >= 8, 8, np.where(most >= 4, 4, np.where(most >= 2, 2, 1)))
    scale = np.where(np.asarray(jpeg, dtype=bool) & (np.minimum(width, height) >= 2 * decode_size), scale, 1)
    width, height = -(-width // scale), -(-height // scale)
    short, long = np.minimum(width, height), np.maximum(width, height)
    fit = short >= 2 * decode_size
    # fitted_size: the shorter side decode_size, the longer one rounded down (float64, as int(size * long / short))
    fitted_long = (decode_size * long / np.maximum(short, 1)).astype(np.int64)
    portrait = width <= height
    new_width = np.where(fit, np.where(portrait, decode_size, fitted_long), width)
    new_height = np.where(fit, np.where(portrait, fitted_long, decode_size), height)
    return new_width, new_height


def decoded_sizes_of(paths: Sequence[str], facts, decode_size: int,
                     read_missing: bool = False) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(widths, heights) of `paths` as `load_image` gives them at `decode_size` (`decoded_sizes`), from the file
    check's facts (path -> (bytes, mtime, width, height, JPEG), trainer.data.file_checks); a path they lack has
    its header read when `read_missing`, else the answer is None."""
    known = []
    for path in paths:
        fact = facts.get(str(path))
        if fact is None:
            if not read_missing:
                return None
            with Image.open(str(path)) as img:
                fact = (0, 0, *img.size, int(img.format == "JPEG"))
        known.append(fact[2:5])
    known = np.asarray(known, dtype=np.int64).reshape(len(paths), 3)
    return decoded_sizes(known[:, 0], known[:, 1], known[:, 2], decode_size)


def load_image(path: str, mode: str, skip_key: str = "data.skip_bad_files", decode_size: Optional[int] = None,
               fit: Optional[str] = None) -> Image.Image:
    """The image at `path` as `mode` ("L" or "RGB"), whatever it is stored as (L, RGB, RGBA, P, 16-bit).

    With `decode_size`, a JPEG at least twice that size on its shorter side is decoded at 1/2, 1/4
    or 1/8 scale (PIL's draft mode, in the decoder's DCT), never below `decode_size`: several times
    faster for photos far larger than the model's input. With `fit` too (an interpolation name), an
    image still at least twice `decode_size` on its shorter side is then resized (`fitted_size`, with
    that interpolation): its size is `decoded_sizes`, which the decoded-image cache lays out before
    decoding (trainer.data.image_cache); cached or not, the transforms see this image."""
    try:
        with Image.open(path) as img:
            if decode_size and img.format == "JPEG" and min(img.size) >= 2 * decode_size:
                img.draft(mode, (decode_size, decode_size))
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # PIL's advice for palettes with transparency
            elif img.mode in ("I", "I;16", "I;16B", "I;16L"):
                # 16-bit grayscale: convert("L") would clip at 255 instead of scaling
                img = Image.fromarray((np.asarray(img, dtype=np.float32) / 257).clip(0, 255).astype(np.uint8))
            img = img.convert(mode)
            if fit and decode_size and min(img.size) >= 2 * decode_size:
                img = img.resize(fitted_size(*img.size, decode_size), RESAMPLING[fit])
            return img
    except DECODE_ERRORS as err:
        unidentified = isinstance(err, Image.UnidentifiedImageError)
        reason = "is not an image file PIL can read" if unidentified else f"is truncated or corrupt ({one_line(err)})"
        raise UnreadableImage(f"image '{path}' {reason}; remove it, or {skip_hint(skip_key)}", reason) from None


class ImageFiles(Dataset):
    """(transformed image, class index) pairs from a list of files.

    With skip_bad_files, a file that fails to decode (found only now: the up-front check is cheap,
    not a full decode) is replaced by the next readable one, with a warning, as timm's ImageDataset does.
    """

    def __init__(self, paths: Sequence[str], targets: Sequence[int], transform: Callable, channels: int,
                 skip_bad_files: bool = False, skip_key: str = "data.skip_bad_files", decode_size: Optional[int] = None,
                 fit: Optional[str] = None, cache=None):
        # numpy arrays, not lists of Python objects: reading a list's items from forked workers
        # touches their reference counts, which copies the parent's memory into every worker
        self.paths = np.asarray(paths, dtype=str)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.decode_size, self.fit = decode_size, fit
        # a trainer.data.image_cache store (`get(i)` -> image or None, `put(i, image)`; a pixel store keeps the
        # transform's output instead: `get_pixels`, `put_pixels`), or None: decode every time
        self.cache = cache
        self.transform = transform
        self.mode = "L" if channels == 1 else "RGB"
        self.skip_bad_files, self.skip_key = skip_bad_files, skip_key
        self.reported = set()

    def __len__(self) -> int:
        return len(self.paths)

    def all_stored(self) -> bool:
        """Whether every image's transformed pixels are in the store (a pixel store,
        trainer.data.image_cache): batches can then be gathered from it (`gather`)."""
        return self.cache is not None and self.cache.pixels is not None and self.cache.complete()

    def gather(self, indices: Sequence[int]):
        """(images, targets) of `indices` as the loader would collate them, from a complete pixel store."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.cache.gather(indices), torch.from_numpy(self.targets[indices])

    def __getitem__(self, index: int):
        store = self.cache
        pixels = store is not None and store.pixels is not None
        for attempt in range(len(self.paths)):
            i = (index + attempt) % len(self.paths)
            if store is not None:
                stored = store.get_pixels(i) if pixels else store.get(i)
                if stored is not None:
                    return (stored if pixels else self.transform(stored)), int(self.targets[i])
            try:
                image = load_image(str(self.paths[i]), self.mode, self.skip_key, self.decode_size, self.fit)
            except UnreadableImage as err:
                if not self.skip_bad_files:
                    raise
                if i not in self.reported:
                    self.reported.add(i)
                    log.warning(f"warning: left out {message_of(err).split(';')[0]} ({self.skip_key}=true)")
                continue
            made = self.transform(image)
            if pixels:
                store.put_pixels(i, made)
            elif store is not None:
                store.put(i, image)
            return made, int(self.targets[i])
        raise UnreadableImage(f"none of the {len(self.paths)} image files could be read")
