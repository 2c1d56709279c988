"""Decoded images kept as uint8 arrays (data.cache), so that each file is decoded once, not every epoch.

A store holds one split's images (training or validation) in one flat buffer: image i is
shapes[i] = (height, width, channels) bytes at offsets[i], at the size trainer.data.images.load_image
gives with `fit` (an image at least twice the size the transforms use is brought down to it,
aspect kept), so the transforms see the same image whether it comes from the store or from the
file. The layout comes from the widths and heights the file check recorded (trainer.data.file_checks),
before anything is decoded (trainer.data.images.decoded_sizes).
Images are stored as they are first read, by the loader's workers or the main process (the first
epoch), and read from the store from then on; a flag per image says it is there.

For the recipes that augment whole batches on the training device (trainer.data.batch_augment), the
training split's store holds what its loader transform gives, the uint8 pixels at the input size
(`pixels`: every image C x S x S, in that order), instead of the decoded file: once every image is
there, the training loader gathers each batch from the store in the main process
(`DecodedImages.gather`, trainer.data.loaders.ImageLoader), with no per-image work and no worker.

    memory  an anonymous shared mapping made before the loader's workers are forked: every worker
            and the main process see one copy (Linux's fork; where workers are spawned instead,
            each worker decodes as if there were no store)
    disk    a file under data.cache_dir/images, memory-mapped the same way, kept between runs:
            named by a hash of what decides its layout (format version, mode, size, interpolation,
            each path with its width and height); each image also records the size and
            modification time of its file when it was stored, and one that differs now is decoded
            again. A file of another version or the wrong length is rebuilt, with a warning.
    auto    memory when the decoded images (times the processes on this machine) fit in half of
            the memory available, else none; one log line says which and why
    none    decode every time (streaming)

A cache directory that cannot be written, or a disk without room for the file (its space is
reserved up front, so a full disk is found before training, never by a write into the mapping),
falls back to decoding every epoch, with a warning.
"""

import hashlib
import json
import logging
import mmap
import os
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from trainer.data.file_checks import Facts, cache_root, settled
from trainer.data.images import decoded_sizes_of
from trainer.data.loaders import local_processes
from trainer.errors import UserError

log = logging.getLogger("trainer")

MODES = ("auto", "memory", "disk", "none")
VERSION = 1
MAGIC = b"trainer decoded images\n"
HEADER_BYTES = 4096


def require_mode(cache: str) -> None:
    if cache not in MODES:
        raise UserError(f"data.cache={cache} is not valid; use one of: {', '.join(MODES)}")


class DecodedImages:
    """A flat uint8 buffer of images; `get(i)` -> PIL image or None, `put(i, image)`.
    `stats` (disk only): (size, mtime_ns) of each file when its image was stored."""

    def __init__(self, buffer: mmap.mmap, count: int, shapes: np.ndarray, offsets: np.ndarray, image_mode: str,
                 data_start: int, stats_start: Optional[int] = None, current: Optional[np.ndarray] = None,
                 path: Optional[str] = None, pixels: Optional[Tuple[int, int, int]] = None):
        self.buffer, self.count, self.shapes, self.offsets = buffer, count, shapes, offsets
        self.pixels = pixels  # (C, S, S) of every image when the store holds the loader transform's uint8 output
        self.image_mode, self.data_start, self.stats_start, self.path = image_mode, data_start, stats_start, path
        self.current = current  # (size, mtime_ns) of each file now, for disk stores
        self.views()

    def views(self) -> None:
        start = HEADER_BYTES if self.path else 0
        self.flags = np.frombuffer(self.buffer, dtype=np.uint8, count=self.count, offset=start)
        self.data = np.frombuffer(self.buffer, dtype=np.uint8, offset=self.data_start)
        self.stats = None
        if self.stats_start is not None:
            self.stats = np.frombuffer(self.buffer, dtype=np.int64, count=2 * self.count,
                                       offset=self.stats_start).reshape(self.count, 2)

    def __len__(self) -> int:
        return self.count

    def filled(self) -> int:
        return int(np.count_nonzero(self.flags)) if self.buffer is not None else 0

    def complete(self) -> bool:
        """Whether every image is stored (a single flag check once an epoch, not once a batch)."""
        return self.buffer is not None and bool(self.flags.all())

    def get_pixels(self, i: int) -> Optional[torch.Tensor]:
        """A pixel store's image i, a (C, S, S) uint8 tensor of its own, or None when not stored yet."""
        if self.buffer is None or not self.flags[i]:
            return None
        return torch.from_numpy(self.data[self.offsets[i]: self.offsets[i + 1]].reshape(self.pixels).copy())

    def put_pixels(self, i: int, pixels: torch.Tensor) -> None:
        if self.buffer is None or tuple(pixels.shape) != self.pixels or pixels.dtype != torch.uint8:
            return  # not the layout's shape (never expected): served as made, not stored
        self.data[self.offsets[i]: self.offsets[i + 1]] = pixels.contiguous().numpy().reshape(-1)
        self.mark_stored(i)

    def gather(self, indices: Sequence[int]) -> torch.Tensor:
        """A pixel store's images `indices` as one (N, C, S, S) uint8 tensor (a copy): a complete store only."""
        images = self.data[: self.count * int(np.prod(self.pixels))].reshape(self.count, *self.pixels)
        return torch.from_numpy(images[np.asarray(indices, dtype=np.int64)])

    def get(self, i: int) -> Optional[Image.Image]:
        if self.buffer is None or not self.flags[i]:
            return None
        height, width, _ = self.shapes[i]
        start = self.offsets[i]
        return Image.frombytes(self.image_mode, (int(width), int(height)), self.data[start: self.offsets[i + 1]].tobytes())

    def put(self, i: int, image: Image.Image) -> None:
        if self.buffer is None:
            return
        height, width, _ = self.shapes[i]
        if image.mode != self.image_mode or image.size != (width, height):
            return  # not the layout's shape (never expected): served as decoded, not stored
        self.data[self.offsets[i]: self.offsets[i + 1]] = np.frombuffer(image.tobytes(), dtype=np.uint8)
        self.mark_stored(i)

    def mark_stored(self, i: int) -> None:
        """After image i's bytes are written: its file's stat (disk), then its flag, last, so that a reader
        never sees a flag before its image."""
        if self.stats is not None:
            self.stats[i] = self.current[i]
        self.flags[i] = 1

    # Workers started by spawn (not fork) get a copy of the dataset by pickling: a disk store maps its
    # file again; an anonymous memory store cannot be shared, so such a worker decodes every image.
    def __getstate__(self):
        state = dict(self.__dict__, buffer=None, flags=None, data=None, stats=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.path is not None:
            try:
                with open(self.path, "r+b") as f:
                    self.buffer = mmap.mmap(f.fileno(), 0)
                self.views()
            except OSError:
                self.buffer = None


def layout(paths: Sequence[str], facts: Facts, channels: int, decode_size: int,
           pixel_side: Optional[int] = None) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(shapes (n, 3), offsets (n + 1,)) of the images as stored, or None when a file's size is unknown.
    With pixel_side, every image is pixel_side x pixel_side (a pixel store), whatever its file's size."""
    if pixel_side is not None:
        shapes = np.tile(np.array([pixel_side, pixel_side, channels], dtype=np.int64), (len(paths), 1))
        offsets = np.arange(len(paths) + 1, dtype=np.int64) * (pixel_side * pixel_side * channels)
        return shapes, offsets
    sizes = decoded_sizes_of(paths, facts, decode_size)
    if sizes is None:
        return None
    width, height = sizes
    shapes = np.stack([height, width, np.full_like(width, channels)], axis=1)
    offsets = np.zeros(len(paths) + 1, dtype=np.int64)
    np.cumsum(shapes.prod(axis=1), out=offsets[1:])
    return shapes, offsets


def layout_key(paths: Sequence[str], shapes: np.ndarray, image_mode: str, decode_size: int, fit: str,
               pixel_side: Optional[int] = None) -> str:
    what = [VERSION, image_mode, decode_size, fit] + ([] if pixel_side is None else ["pixels", pixel_side])
    digest = hashlib.sha256(json.dumps(what).encode())
    for path, shape in zip(paths, shapes):
        digest.update(f"\n{path}\t{shape[1]}x{shape[0]}".encode())
    return digest.hexdigest()


def pixel_shape(channels: int, pixel_side: Optional[int]) -> Optional[Tuple[int, int, int]]:
    return None if pixel_side is None else (channels, pixel_side, pixel_side)


def memory_store(shapes: np.ndarray, offsets: np.ndarray, image_mode: str,
                 pixels: Optional[Tuple[int, int, int]] = None) -> DecodedImages:
    count = len(shapes)
    data_start = -(-count // 8) * 8
    buffer = mmap.mmap(-1, data_start + max(int(offsets[-1]), 1))  # MAP_SHARED | MAP_ANONYMOUS: shared with forked workers
    return DecodedImages(buffer, count, shapes, offsets, image_mode, data_start, pixels=pixels)


def disk_layout(count: int, data_bytes: int) -> Tuple[int, int, int]:
    """(stats offset, data offset, file length) of a disk store."""
    stats_start = HEADER_BYTES + -(-count // 8) * 8
    data_start = stats_start + 16 * count
    return stats_start, data_start, data_start + max(data_bytes, 1)


def header_of(key: str, count: int, data_bytes: int) -> bytes:
    text = json.dumps({"version": VERSION, "key": key, "count": count, "data_bytes": data_bytes}).encode()
    return (MAGIC + text + b"\n").ljust(HEADER_BYTES, b"\0")


def why_unusable(path: str, key: str, count: int, data_bytes: int) -> Optional[str]:
    """Why an existing cache file cannot be used for this layout, or None."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if not head.startswith(MAGIC):
        return "it is not a decoded-image cache file"
    try:
        header = json.loads(head[len(MAGIC):].split(b"\n", 1)[0])
    except ValueError:
        return "its header is unreadable"
    if header.get("version") != VERSION:
        return f"it was written by another version of trainer (format {header.get('version')}, this one reads {VERSION})"
    if header != {"version": VERSION, "key": key, "count": count, "data_bytes": data_bytes}:
        return "its header does not match its name"
    expected = disk_layout(count, data_bytes)[2]
    actual = os.path.getsize(path)
    if actual != expected:
        return f"it is truncated ({actual} bytes, {expected} expected)"
    return None


def create_file(path: str, key: str, count: int, data_bytes: int) -> None:
    """Write the header and reserve the whole file's space (a full disk fails here, not in the mapping)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as f:
            f.write(header_of(key, count, data_bytes))
            f.flush()
            os.posix_fallocate(f.fileno(), 0, disk_layout(count, data_bytes)[2])
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except OSError:
            pass
        raise


def disk_store(folder: str, paths: Sequence[str], facts: Facts, shapes: np.ndarray, offsets: np.ndarray,
               image_mode: str, decode_size: int, fit: str, pixels: Optional[Tuple[int, int, int]] = None) -> DecodedImages:
    key = layout_key(paths, shapes, image_mode, decode_size, fit, None if pixels is None else pixels[-1])
    path = os.path.join(folder, "images", f"{key[:32]}.bin")
    count, data_bytes = len(shapes), int(offsets[-1])
    if os.path.exists(path):
        reason = why_unusable(path, key, count, data_bytes)
        if reason is not None:
            log.warning(f"warning: the decoded-image cache file '{path}' cannot be used: {reason}; building it again")
            os.remove(path)
    if not os.path.exists(path):
        create_file(path, key, count, data_bytes)
    stats_start, data_start, _ = disk_layout(count, data_bytes)
    with open(path, "r+b") as f:
        buffer = mmap.mmap(f.fileno(), 0)
    now = time.time_ns()
    # a file modified just before it was checked is stored under time -1, which no later run matches
    current = np.array([(fact[0], fact[1] if settled(fact[1], now) else -1) for fact in (facts[str(p)] for p in paths)],
                       dtype=np.int64).reshape(count, 2)
    store = DecodedImages(buffer, count, shapes, offsets, image_mode, data_start, stats_start, current, path, pixels)
    stale = (store.flags != 0) & ((store.stats != current).any(axis=1) | (current[:, 1] < 0))
    store.flags[stale] = 0  # changed since they were stored: decoded again
    log.info(f"decoded-image cache '{path}': {store.filled()} of {count} images stored by an earlier run"
             + (f", {int(stale.sum())} changed since" if stale.any() else ""))
    return store


def available_memory() -> int:
    """Bytes of memory available now: psutil when installed, else /proc/meminfo, else sysconf; lowered
    to what a container's memory limit (cgroup v2 or v1) leaves."""
    try:
        import psutil  # optional

        available = int(psutil.virtual_memory().available)
    except ImportError:
        available = None
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        if available is None:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f, open(usage_file) as g:
                limit, usage = f.read().strip(), g.read().strip()
            if limit.isdigit():
                available = min(available, max(0, int(limit) - int(usage)))
        except (OSError, ValueError):
            pass
    return available


def size_text(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return ""


def choose(cache: str, data_bytes: int, images: int) -> str:
    """The store data.cache=auto picks, said in one log line."""
    if cache != "auto":
        return cache
    available, processes = available_memory(), local_processes()
    needed = data_bytes * processes
    each = f" for each of the {processes} processes on this machine" if processes > 1 else ""
    if needed <= available / 2:
        log.info(f"data.cache=auto: memory (the {images} decoded images take {size_text(data_bytes)}{each}; "
                 f"{size_text(available)} of memory available)")
        return "memory"
    log.info(f"data.cache=auto: none, images are decoded every epoch (the {images} decoded images would take "
             f"{size_text(data_bytes)}{each}, more than half of the {size_text(available)} of memory available)")
    return "none"


def build_stores(cache: str, cache_dir: Optional[str], splits: List[Tuple], facts: Facts,
                 channels: int, fit: str) -> List[Optional[DecodedImages]]:
    """One store (or None: decode every time) per (paths, decode size[, pixel side]) in `splits`: with a
    pixel side (not None), a pixel store of the loader transform's output at that side."""
    require_mode(cache)
    if cache == "none":
        return [None] * len(splits)
    splits = [tuple(split) + (None,) * (3 - len(split)) for split in splits]
    image_mode = "L" if channels == 1 else "RGB"
    layouts = [layout(paths, facts, channels, size, side) for paths, size, side in splits]
    if any(lay is None for lay in layouts):
        log.warning(f"warning: data.cache={cache}: the size of some images is unknown; they are decoded every epoch")
        return [None] * len(splits)
    total = sum(int(offsets[-1]) for _, offsets in layouts)
    chosen = choose(cache, total, sum(len(split[0]) for split in splits))
    if chosen == "none":
        return [None] * len(splits)
    if chosen == "memory":
        return [memory_store(shapes, offsets, image_mode, pixel_shape(channels, side))
                for (_, _, side), (shapes, offsets) in zip(splits, layouts)]
    folder = cache_root(cache_dir)
    stores = []
    try:
        for (paths, size, side), (shapes, offsets) in zip(splits, layouts):
            stores.append(disk_store(folder, paths, facts, shapes, offsets, image_mode, size, fit, pixel_shape(channels, side)))
    except OSError as err:
        where = f" '{err.filename}'" if err.filename else f" under '{folder}'"
        log.warning(f"warning: data.cache=disk: cannot write the decoded-image cache{where} "
                    f"({err.strerror or err}); images are decoded every epoch instead (set data.cache_dir to a "
                    "folder with room, or data.cache=memory)")
        return [None] * len(splits)
    return stores
