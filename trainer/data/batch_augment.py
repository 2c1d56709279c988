"""Training augmentation of whole batches, on the device that trains, and mixup/cutmix: every random
choice drawn from the position of what it changes (trainer.data.positions), never from a global stream.

    recipe     where it runs                  what it does to each training image
    small      in batches, training device    pad by image_size/8 (black), random crop back; flips if asked
    light      in batches, training device    pad by image_size/16 (black), random crop back; flips if asked
    imagenet   in batches, training device    random-resized-crop, flips, colour jitter, random erasing (timm's
               per image, loader workers      meanings); with data.auto_augment: timm's own transforms (PIL)
    none       per image, loader workers      the evaluation transform (resize, center crop)

For small and light the loader yields uint8 images at the input size (decoded once when cached);
`BatchTransform` crops, flips and normalises them where the model runs, then mixes them. For imagenet
in batches the loader yields each image stretched to a square uint8 canvas (trainer.data.batch_crop), and
`BatchTransform` draws each crop box in the image's own geometry (its decoded width and height, looked up
by the dataset index of the sample), resamples the boxes (roi_align), flips, jitters the colours
(trainer.data.batch_colour), normalises and erases (trainer.data.batch_erasing). The crop
offsets and flips of each sample come from the key of its position in the epoch's order,
`position_keys(seed, epoch, position)` (the training sampler's `batch_positions(i)`), so that the
number of processes, of loader workers, or a resume changes nothing; mixup's lambda, mode and box
from `batch_key(seed, epoch, i, rank)` (per element: from the keys of the batch): mixup pairs images
of one process's batch, so its draws are the process's own.
"""

import logging
from typing import Optional, Sequence

import torch

from trainer.data.batch_colour import colour_jitter, jitter_factors
from trainer.data.batch_crop import RandomResizedCrops, flip
from trainer.data.positions import position_keys, uniforms
from trainer.errors import UserError

log = logging.getLogger("trainer")

RECIPES = ("small", "light", "imagenet", "none")
BATCHED = {"small": 8, "light": 16}  # recipe -> image_size / padding
# Images up to this size get `small` when data.augment is null: random-resized-crop down to 8% of a
# 28 px image leaves a few pixels, which is what cost the 28x28 folder its accuracy.
SMALL_IMAGES = 64

# draw numbers (`uniforms(keys, stream)`) of each random choice
CROP_Y, CROP_X, HFLIP, VFLIP = 1, 2, 3, 4
IMAGENET_HFLIP, IMAGENET_VFLIP = 45, 46  # the imagenet recipe's flips (its crop: 20-41, colour: 42-44, erasing: 50-)


def recipe_named(augment) -> Optional[str]:
    """data.augment as a recipe name, or None (choose by size); true and false, as before recipes had names,
    are null and none."""
    if isinstance(augment, bool) or str(augment).lower() in ("true", "false"):
        return None if str(augment).lower() == "true" else "none"
    if augment is not None and augment not in RECIPES:
        raise UserError(f"data.augment={augment} is not a recipe; use one of: {', '.join(RECIPES)} (null: by image size)")
    return augment


def choose_recipe(augment, image_size: int, auto_augment: Optional[str] = None, re_prob: float = 0.0) -> str:
    """data.augment as a recipe name; null picks by the input size (imagenet where data.auto_augment or
    data.re_prob asks for what small and light do not do), in one log line."""
    recipe = recipe_named(augment)
    if recipe is None:
        per_image = "data.auto_augment" if auto_augment else "data.re_prob" if re_prob > 0 else None
        recipe = "small" if image_size <= SMALL_IMAGES and not per_image else "imagenet"
        reason = f"because {per_image} is set" if per_image else f"for {image_size} px inputs (small up to {SMALL_IMAGES} px, else imagenet)"
        log.info(f"data.augment={recipe}: chosen {reason}; set data.augment to choose")
    elif recipe in BATCHED and (auto_augment or re_prob > 0):
        key = "data.auto_augment" if auto_augment else "data.re_prob"
        raise UserError(f"{key} works with data.augment=imagenet, not with "
                        f"data.augment={recipe}; set data.augment=imagenet, or leave {key} unset")
    return recipe


def imagenet_in_batches(auto_augment: Optional[str]) -> bool:
    """Whether data.augment=imagenet runs in batches on the training device: yes, unless data.auto_augment asks for
    one of timm's per-image policies (RandAugment, AugMix, AutoAugment), which stay in the loader workers."""
    return not auto_augment


def recipe_hflip(recipe: str, hflip: Optional[float]) -> float:
    """data.hflip, or when null the recipe's own: imagenet mirrors half its images; small and light do not,
    since their small images are often digits or letters, which a mirror turns into other symbols."""
    if hflip is not None:
        return hflip
    return 0.5 if recipe == "imagenet" else 0.0


def batch_keys(seed: int, epoch: int, batch_index: int, rank: int, n: int,
               positions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One key per sample of micro-batch `batch_index` of this rank: from the samples' epoch positions (the
    training sampler's), else (a loader without one) from the batch's index, the rank and the place in it."""
    if positions is not None:
        return position_keys(seed, epoch, positions)
    return position_keys(seed, epoch, batch_index, rank, torch.arange(n))


def batch_key(seed: int, epoch: int, batch_index: int, rank: int) -> torch.Tensor:
    """The key of what is drawn once per micro-batch (mixup's lambda and mode)."""
    return position_keys(seed, epoch, batch_index, rank, -1)


def pad_crop_flip(images: torch.Tensor, pad: int, top: torch.Tensor, left: torch.Tensor, hflip: torch.Tensor,
                  vflip: torch.Tensor) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding=pad) then the flips, for each image its own parameters:
    image j padded with zeros (black), cropped at (top[j], left[j]) in the padded image, mirrored
    where hflip[j] (vflip[j]). One gather for the whole batch, in the images' own dtype."""
    n, c, h, w = images.shape
    # (not F.pad: on a CPU its parallel kernel takes milliseconds for a batch this small when the cores are busy)
    padded = images.new_zeros(n, c, h + 2 * pad, w + 2 * pad)
    padded[:, :, pad:pad + h, pad:pad + w] = images
    rows, cols = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    rows = top[:, None] + torch.where(vflip[:, None], h - 1 - rows, rows)
    cols = left[:, None] + torch.where(hflip[:, None], w - 1 - cols, cols)
    batch, channel = torch.arange(n, device=images.device), torch.arange(c, device=images.device)
    return padded[batch[:, None, None, None], channel[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


class BatchTransform:
    """What the Engine does to each training batch after moving it to its device:
    `inputs, loss_targets = transform(inputs, targets, epoch, batch_index, order)`.

    shift_pad: the padding of small and light (their inputs are uint8 images, cropped, flipped and normalised
    here); resized_crop: imagenet's random-resized crop (a trainer.data.batch_crop.RandomResizedCrops: its inputs
    are uint8 canvases, cropped, flipped, colour-jittered by `color_jitter`, normalised and erased by `erasing`, a
    trainer.data.batch_erasing.KeyedErasing or None, here); neither: the loader's transform did all that.
    mixup: a KeyedMixup or None."""

    def __init__(self, seed: int, shift_pad: Optional[int] = None, hflip: float = 0.0, vflip: float = 0.0,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), mixup=None, rank: int = 0,
                 resized_crop: Optional[RandomResizedCrops] = None, color_jitter: float = 0.0, erasing=None):
        self.seed, self.rank = seed, rank
        self.shift_pad, self.hflip, self.vflip = shift_pad, hflip, vflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.mixup = mixup
        self.resized_crop, self.color_jitter, self.erasing = resized_crop, color_jitter, erasing
        self._scale = {}  # device -> (mean, std) tensors, made once

    @property
    def batched(self) -> bool:
        """Whether the loader yields uint8 images that this transform augments and normalises."""
        return self.shift_pad is not None or self.resized_crop is not None

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, epoch: int, batch_index: int, order=None):
        """order: the training sampler (trainer.data.sampling.TrainBatches) the batch came from, if any."""
        if self.batched:
            positions = None if order is None else order.batch_positions(batch_index)
            keys = batch_keys(self.seed, epoch, batch_index, self.rank, len(inputs), positions)
            indices = None if positions is None else order.order()[positions]  # dataset indices: the images' sizes
            inputs = self.augment(inputs, keys, indices)
        if self.mixup is not None:  # soft targets for the configured loss (every loss has a soft form)
            return self.mixup(inputs, targets, batch_key(self.seed, epoch, batch_index, self.rank))
        return inputs, targets

    def augment(self, images: torch.Tensor, keys: torch.Tensor, indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> augmented, normalised float32, each by its own key. indices: the samples'
        dataset indices (imagenet: whose width and height its crop boxes are drawn in)."""
        if self.resized_crop is not None:
            out = self.augment_resized(images, keys, indices)
        else:
            span = 2 * self.shift_pad + 1
            draw = lambda stream: uniforms(keys, stream).to(images.device)  # noqa: E731
            top, left = (draw(CROP_Y) * span).long(), (draw(CROP_X) * span).long()
            shifted = pad_crop_flip(images, self.shift_pad, top, left, draw(HFLIP) < self.hflip, draw(VFLIP) < self.vflip)
            out = self.normalise(shifted)
        if images.dim() == 4 and not images.is_contiguous():  # the engine's channels_last (trainer.channels_last)
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def augment_resized(self, canvases: torch.Tensor, keys: torch.Tensor, indices: Optional[torch.Tensor]) -> torch.Tensor:
        """imagenet in batches: crop and resize, flip, /255, colour jitter, normalise, erase."""
        crops = self.resized_crop(canvases, keys, indices)
        crops = flip(crops, uniforms(keys, IMAGENET_HFLIP) < self.hflip, uniforms(keys, IMAGENET_VFLIP) < self.vflip)
        images = crops.div_(255.0)
        if self.color_jitter > 0:
            images = colour_jitter(images, *jitter_factors(keys, self.color_jitter))
        images = self.standardise(images)
        if self.erasing is not None:
            images = self.erasing(images, keys)
        return images

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """ToTensor and Normalize of torchvision, on a batch: (x / 255 - mean) / std."""
        return self.standardise(images.float().div_(255))

    def standardise(self, images: torch.Tensor) -> torch.Tensor:
        """Normalize of torchvision on float images in [0, 1], in place: (x - mean) / std."""
        if images.device not in self._scale:
            shape = (1, -1, 1, 1)
            self._scale[images.device] = (torch.tensor(self.mean, device=images.device).view(shape),
                                          torch.tensor(self.std, device=images.device).view(shape))
        mean, std = self._scale[images.device]
        return images.sub_(mean).div_(std)

    def on_rank(self, rank: int) -> "BatchTransform":
        return BatchTransform(self.seed, self.shift_pad, self.hflip, self.vflip, self.mean, self.std, self.mixup, rank,
                              self.resized_crop, self.color_jitter, self.erasing)
