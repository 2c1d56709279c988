"""Random-resized crops of whole batches (data.augment=imagenet, on the training device): the boxes drawn as
torchvision's (and timm's) RandomResizedCrop.get_params draws them, from each sample's position key, and every
box of a batch resampled to the output size in one torchvision.ops.roi_align call.

The loader gives each training image as a square uint8 canvas (`CanvasTransform`: the decoded image
stretched to canvas x canvas pixels, so that the images stack into a batch); the boxes are drawn in the
geometry of the image itself (its width and height as decoded, which the dataset knows before it decodes
anything) and mapped onto the canvas, so a crop's aspect ratio is the one drawn, whatever the image's.

    boxes = crop_boxes(keys, widths, heights, scale, ratio)       # (top, left, height, width), image pixels
    crops = resized_crops(canvases, boxes, widths, heights, size)  # float (N, C, size, size), 0..255

roi_align with aligned=True samples at pixel centres as a resize with align_corners=False does, and with
sampling_ratio=-1 it averages ceil(box / size) bilinear samples per output pixel along each side: a
downscale is antialiased (box filter over bilinear samples), an upscale is bilinear interpolation.
"""

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from trainer.data.positions import uniforms

TRIES = 10  # torchvision's attempts before the central-crop fallback
# draw numbers (`uniforms(keys, stream)`): try t's area and aspect, then the box's top and left
CROP_AREA, CROP_RATIO, CROP_TOP, CROP_LEFT = 20, 30, 40, 41
# The canvas is at most this many times the output size (and at least CANVAS_FLOOR px where the images and
# the scale ask for it): a crop of less than 1 / CANVAS_FACTOR**2 of the area is upsampled from fewer pixels
# than the image had, while a batch of 224 px inputs stays 448 x 448 x 3 bytes (0.6 MB) an image.
CANVAS_FACTOR, CANVAS_FLOOR = 2, 128
PARALLEL_PIXELS = 1 << 20  # output pixels (per channel) of a batch below which roi_align is not split over CPU threads


def canvas_size(image_size: int, scale: Sequence[float], longest: Optional[int] = None) -> int:
    """The side of the square canvas: the size a crop of scale[0] of the area needs to keep its pixels
    (trainer.data.transforms.decode_size), bounded by max(CANVAS_FACTOR x image_size, CANVAS_FLOOR), and by the
    longest side of the training images as decoded (`longest`, when known: no image is enlarged for nothing);
    never below image_size."""
    needed = math.ceil(image_size / math.sqrt(scale[0]))
    size = min(needed, max(CANVAS_FACTOR * image_size, CANVAS_FLOOR))
    if longest is not None:
        size = min(size, int(longest))
    return max(int(image_size), size)


def crop_boxes(keys: torch.Tensor, widths: torch.Tensor, heights: torch.Tensor, scale: Sequence[float],
               ratio: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, height, width) int64 of each sample's crop, as RandomResizedCrop.get_params draws it for an
    image of widths[j] x heights[j]: up to 10 tries of an area uniform in scale x the image's area and an aspect
    (width / height) log-uniform in ratio, rounded; the first that fits is placed uniformly; none fitting, the
    central crop, clamped to the ratio range. All tries are drawn at once, from streams of each key."""
    width, height = widths.to(torch.float64), heights.to(torch.float64)
    area = (width * height)[:, None]
    tries = range(TRIES)
    u_area = torch.stack([uniforms(keys, CROP_AREA + t) for t in tries], 1)
    u_ratio = torch.stack([uniforms(keys, CROP_RATIO + t) for t in tries], 1)
    target = area * (scale[0] + u_area * (scale[1] - scale[0]))
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(low + u_ratio * (high - low))
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    found = fits.any(1)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    # the fallback: the whole image, or its centre at the nearest ratio allowed
    in_ratio = width / height
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fallback_w = torch.where(wide, torch.round(height * max(ratio)), width)
    fallback_h = torch.where(narrow, torch.round(width / min(ratio)), height)
    w, h = torch.where(found, w, fallback_w), torch.where(found, h, fallback_h)
    top = torch.where(found, torch.floor(uniforms(keys, CROP_TOP) * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(uniforms(keys, CROP_LEFT) * (width - w + 1)), torch.floor((width - w) / 2))
    return top.long(), left.long(), h.long(), w.long()


def resized_crops(canvases: torch.Tensor, boxes: Tuple[torch.Tensor, ...], widths: torch.Tensor,
                  heights: torch.Tensor, size: int) -> torch.Tensor:
    """Box j = (top, left, height, width) of image j (widths[j] x heights[j] pixels, stretched onto canvas j)
    resized to size x size: float32 (N, C, size, size) in the canvases' value range, one roi_align call (on a
    CPU with several torch threads and a batch of at least PARALLEL_PIXELS output pixels, one per thread on its
    share of the batch: torchvision's CPU kernel runs on one core; each box is resampled alone, so the split
    changes no value)."""
    top, left, h, w = (b.to(torch.float64) for b in boxes)
    n, _, canvas_h, canvas_w = canvases.shape
    sx, sy = canvas_w / widths.to(torch.float64), canvas_h / heights.to(torch.float64)
    rois = torch.stack([torch.arange(n, dtype=torch.float64), left * sx, top * sy, (left + w) * sx, (top + h) * sy], 1)
    threads = min(torch.get_num_threads(), n)
    if canvases.device.type != "cpu" or threads < 2 or n * size * size < PARALLEL_PIXELS:
        return _roi_align(canvases, rois, size)
    shares = [range(n * k // threads, n * (k + 1) // threads) for k in range(threads)]
    parts = [(canvases[share.start:share.stop], rois[share.start:share.stop] - torch.tensor([share.start, 0, 0, 0, 0]))
             for share in shares]
    return torch.cat(list(_pool(threads).map(lambda part: _roi_align(*part, size), parts)))


def _roi_align(canvases: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    from torchvision.ops import roi_align

    images = canvases if canvases.is_floating_point() else canvases.float()
    return roi_align(images, rois.to(images.device, images.dtype), (size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


_POOLS = {}


def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="roi_align")
    return _POOLS[threads]


def flip(images: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
    """Mirror image j left-right where hflip[j], upside down where vflip[j], in place (bool tensors on the CPU,
    where picking the chosen images costs no wait for the device); only the chosen images are copied."""
    for chosen, dim in ((hflip, -1), (vflip, -2)):
        if bool(chosen.any()):
            index = torch.nonzero(chosen)[:, 0].to(images.device)
            images.index_copy_(0, index, images.index_select(0, index).flip(dim))
    return images


class CanvasTransform:
    """The loader's transform for the batched imagenet recipe: a PIL image stretched to size x size with the given
    interpolation, as a uint8 (C, size, size) tensor, which the decoded-image cache keeps as it is (a pixel store,
    trainer.data.image_cache), so each image is stretched once. A class, not a closure: loader workers may pickle it."""

    def __init__(self, size: int, interpolation: str):
        self.size, self.interpolation = int(size), interpolation

    def stretch(self, image):
        from trainer.data.images import RESAMPLING

        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), RESAMPLING[self.interpolation])
        return image

    def __call__(self, image):
        array = np.asarray(self.stretch(image))
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        # one writable channels-first copy, by numpy: torch's copy would be split over its threads, which for an
        # image this small costs more than it saves (the main process loads with all of them, num_workers=0)
        return torch.from_numpy(np.array(array, order="C"))

    def __repr__(self) -> str:
        return f"CanvasTransform(size={self.size}, interpolation={self.interpolation})"


class RandomResizedCrops:
    """The batched recipe's crop: `crops = rrc(canvases, keys, indices)`, float (N, C, size, size) in 0..255.

    sizes: (width, height) of every training image as decoded, by dataset index (int64 (n, 2)); `indices`, the
    dataset indices of the batch (from the training sampler), pick theirs. Without either, each canvas is taken
    for the image (its own square geometry)."""

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float], sizes: Optional[torch.Tensor] = None):
        self.size, self.scale, self.ratio, self.sizes = int(size), tuple(scale), tuple(ratio), sizes

    def geometry(self, canvases: torch.Tensor, indices: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(widths, heights) on the CPU of the images of a batch."""
        n, _, height, width = canvases.shape
        if self.sizes is None or indices is None:
            return torch.full((n,), width, dtype=torch.int64), torch.full((n,), height, dtype=torch.int64)
        known = self.sizes[indices.cpu()]
        return known[:, 0], known[:, 1]

    def __call__(self, canvases: torch.Tensor, keys: torch.Tensor, indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        widths, heights = self.geometry(canvases, indices)
        boxes = crop_boxes(keys, widths, heights, self.scale, self.ratio)
        return resized_crops(canvases, boxes, widths, heights, self.size)
