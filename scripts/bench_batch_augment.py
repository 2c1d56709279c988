"""Images per second of data.augment=imagenet in batches (trainer.data.batch_crop & co.) against timm's per-image
create_transform(is_training=True) (the recipe's way before, and still its way with data.auto_augment), on the
same decoded images.

    python scripts/bench_batch_augment.py [--images 256] [--batch-size 64] [--threads 1 2] [--repeats 3] [--re-prob 0]

Cases: 256x256 px images -> 224 px inputs, 256x256 -> 32, 1056x792 -> 224 (photo-like content, made here). Both
ways start from the image as the loader decodes it (trainer.data.images.load_image's reduction of large images
for the size each way decodes at, untimed: with the decoded-image cache it happens once). Per image: timm's
transform (random-resized crop, flip, colour jitter 0.4, to tensor, normalise, erasing if asked) and the stack
of a batch. Batched: the loader's part (CanvasTransform and the stack: from the decoded-image cache, which keeps
the canvases, only a uint8 tensor; without it, the stretch to the canvas too), the training device's part (BatchTransform on the uint8 batch: crop boxes, roi_align, flips, colour jitter, normalise,
erasing), and both in one process. CPU with each --threads (torch.set_num_threads), then CUDA when available
(the device part, the batch's copy to the GPU included, batch --cuda-batch-size). Repeats are interleaved; the
median of each is printed.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the trainer package

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from trainer.data.batch_augment import BatchTransform  # noqa: E402
from trainer.data.batch_crop import CanvasTransform, RandomResizedCrops, canvas_size  # noqa: E402
from trainer.data.batch_erasing import KeyedErasing  # noqa: E402
from trainer.data.images import RESAMPLING, fitted_size  # noqa: E402
from trainer.data.positions import position_keys  # noqa: E402
from trainer.data.transforms import decode_size, resolve_input, train_transform  # noqa: E402

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CASES = (((256, 256), 224), ((256, 256), 32), ((1056, 792), 224))


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour waves plus grain: something like a photo for the resamplers, not a flat image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    channels = [127 + 80 * np.sin(x / (23 + 7 * k) + phase[k]) * np.cos(y / (31 + 5 * k) - phase[k]) for k in range(3)]
    pixels = np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def decoded(image: Image.Image, size: int) -> Image.Image:
    """What load_image(..., decode_size=size, fit='bilinear') gives for this image (PNG: no draft)."""
    if min(image.size) >= 2 * size:
        return image.resize(fitted_size(*image.size, size), RESAMPLING["bilinear"])
    return image


def timed(fn, repeats_out: list) -> None:
    started = time.perf_counter()
    count = fn()
    repeats_out.append(count / (time.perf_counter() - started))


def run_case(source, image_size: int, args) -> None:
    spec = resolve_input("cnn", 3, image_size=image_size, mean=MEAN, std=STD, interpolation="bilinear", crop_pct=0.875)
    per_image_inputs = [decoded(img, decode_size(spec, SCALE)) for img in source]
    bound = canvas_size(image_size, SCALE)
    batched_inputs = [decoded(img, bound) for img in source]
    sizes = torch.tensor([img.size for img in batched_inputs], dtype=torch.int64)
    canvas = canvas_size(image_size, SCALE, int(sizes.max()))
    timm_tf = train_transform(spec, scale=SCALE, ratio=RATIO, hflip=0.5, color_jitter=0.4, re_prob=args.re_prob,
                              re_mode="pixel")
    to_canvas = CanvasTransform(canvas, "bilinear")
    erasing = KeyedErasing(args.re_prob, "pixel", 1) if args.re_prob > 0 else None
    transform = BatchTransform(0, hflip=0.5, mean=MEAN, std=STD, color_jitter=0.4, erasing=erasing,
                               resized_crop=RandomResizedCrops(image_size, SCALE, RATIO, sizes))
    n = len(source)
    w, h = source[0].size
    print(f"\n{n} images of {w}x{h} -> {image_size} px; per image decoded at {per_image_inputs[0].size[0]}x"
          f"{per_image_inputs[0].size[1]}, batched at {batched_inputs[0].size[0]}x{batched_inputs[0].size[1]} on a "
          f"{canvas}x{canvas} canvas ({3 * canvas * canvas / 1e6:.2f} MB an image)")

    def batches(batch_size):
        return [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]

    def per_image():
        for batch in batches(args.batch_size):
            torch.stack([timm_tf(per_image_inputs[i]) for i in batch])
        return n

    canvases = {}
    stored = [to_canvas.stretch(img) for img in batched_inputs]  # what the cache keeps

    def loader_part(batch_size=args.batch_size, inputs=stored):
        for b, batch in enumerate(batches(batch_size)):
            canvases[batch_size, b] = torch.stack([to_canvas(inputs[i]) for i in batch])
        return n

    def device_part(device, batch_size=args.batch_size, epoch=1):
        for b, batch in enumerate(batches(batch_size)):
            index = torch.tensor(list(batch))
            images = canvases[batch_size, b]
            if device != "cpu":
                images = images.pin_memory().to(device, non_blocking=True)
            transform.augment(images, position_keys(0, epoch, index), index)
        if device != "cpu":
            torch.cuda.synchronize()
        return n

    def both():
        loader_part()
        return device_part("cpu")

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rates = {"per image (timm)": [], "batched: loader part": [], "(uncached)": [], "batched: device part": [],
                 "batched: both": []}
        per_image(), loader_part(), device_part("cpu")  # warm up
        for _ in range(args.repeats):
            timed(per_image, rates["per image (timm)"])
            timed(lambda: loader_part(inputs=batched_inputs), rates["(uncached)"])
            timed(loader_part, rates["batched: loader part"])
            timed(lambda: device_part("cpu"), rates["batched: device part"])
            timed(both, rates["batched: both"])
        medians = {k: statistics.median(v) for k, v in rates.items()}
        rows.append((f"CPU, {threads} thread{'s' if threads > 1 else ''}", medians))
    if torch.cuda.is_available() and not args.no_cuda:
        torch.set_num_threads(max(args.threads))
        cuda_batch = args.cuda_batch_size
        loader_part(cuda_batch)
        device_part("cuda", cuda_batch)  # warm up: kernels, allocator
        rates = []
        for epoch in range(max(3, args.repeats)):
            timed(lambda: device_part("cuda", cuda_batch, epoch), rates)
        rows.append((f"CUDA ({torch.cuda.get_device_name()}), batch {cuda_batch}, device part", {"batched: device part": statistics.median(rates)}))
    for name, medians in rows:
        text = ", ".join(f"{k} {v:,.0f} img/s" for k, v in medians.items())
        ratio = (f"; batched both / per image: {medians['batched: both'] / medians['per image (timm)']:.2f}x"
                 if "batched: both" in medians else "")
        print(f"  {name}: {text}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cuda-batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--re-prob", type=float, default=0.0, help="data.re_prob (pixel mode) for both ways")
    parser.add_argument("--cases", type=int, nargs="+", default=list(range(len(CASES))), help="which of the three cases")
    parser.add_argument("--no-cuda", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores visible, batch {args.batch_size}, {args.repeats} "
          f"interleaved repeats, re_prob {args.re_prob}")
    for case in args.cases:
        (width, height), image_size = CASES[case]
        source = [photo(width, height, seed) for seed in range(args.images)]
        run_case(source, image_size, args)


if __name__ == "__main__":
    main()
