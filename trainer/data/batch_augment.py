"""Training augmentation of whole batches, on the device that trains, and mixup/cutmix: every random
choice drawn from the position of what it changes (trainer.data.positions), never from a global stream.

    recipe     where it runs                  what it does to each training image
    small      in batches, training device    pad by image_size/8 (black), random crop back; flips if asked
    light      in batches, training device    pad by image_size/16 (black), random crop back; flips if asked
    imagenet   per image, loader workers      timm's random-resized-crop, flip, colour jitter (PIL)
    none       per image, loader workers      the evaluation transform (resize, center crop)

For a batched recipe the loader yields uint8 images at the input size (decoded once when cached);
`BatchTransform` crops, flips and normalises them where the model runs, then mixes them. The crop
offsets and flips of each sample come from the key of its position in the epoch's order,
`position_keys(seed, epoch, position)` (the training sampler's `batch_positions(i)`), so that the
number of processes, of loader workers, or a resume changes nothing; mixup's lambda, mode and box
from `batch_key(seed, epoch, i, rank)` (per element: from the keys of the batch): mixup pairs images
of one process's batch, so its draws are the process's own.
"""

import logging
from typing import Optional, Sequence

import torch

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
    data.re_prob asks for timm's per-image operations), in one log line."""
    recipe = recipe_named(augment)
    if recipe is None:
        per_image = "data.auto_augment" if auto_augment else "data.re_prob" if re_prob > 0 else None
        recipe = "small" if image_size <= SMALL_IMAGES and not per_image else "imagenet"
        reason = f"because {per_image} is set" if per_image else f"for {image_size} px inputs (small up to {SMALL_IMAGES} px, else imagenet)"
        log.info(f"data.augment={recipe}: chosen {reason}; set data.augment to choose")
    elif recipe in BATCHED and (auto_augment or re_prob > 0):
        key = "data.auto_augment" if auto_augment else "data.re_prob"
        raise UserError(f"{key} works with data.augment=imagenet (timm's per-image transforms), not with "
                        f"data.augment={recipe}; set data.augment=imagenet, or leave {key} unset")
    return recipe


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

    shift_pad: the padding of a batched recipe (its inputs are uint8 images, cropped, flipped and
    normalised here), or None (the loader's transform did all that). mixup: a KeyedMixup or None."""

    def __init__(self, seed: int, shift_pad: Optional[int] = None, hflip: float = 0.0, vflip: float = 0.0,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), mixup=None, rank: int = 0):
        self.seed, self.rank = seed, rank
        self.shift_pad, self.hflip, self.vflip = shift_pad, hflip, vflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.mixup = mixup
        self._scale = {}  # device -> (mean, std) tensors, made once

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, epoch: int, batch_index: int, order=None):
        """order: the training sampler (trainer.data.sampling.TrainBatches) the batch came from, if any."""
        if self.shift_pad is not None:
            positions = None if order is None else order.batch_positions(batch_index)
            inputs = self.augment(inputs, batch_keys(self.seed, epoch, batch_index, self.rank, len(inputs), positions))
        if self.mixup is not None:  # soft targets for the configured loss (every loss has a soft form)
            return self.mixup(inputs, targets, batch_key(self.seed, epoch, batch_index, self.rank))
        return inputs, targets

    def augment(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> cropped, flipped, normalised float32, each by its own key."""
        span = 2 * self.shift_pad + 1
        draw = lambda stream: uniforms(keys, stream).to(images.device)  # noqa: E731
        top, left = (draw(CROP_Y) * span).long(), (draw(CROP_X) * span).long()
        shifted = pad_crop_flip(images, self.shift_pad, top, left, draw(HFLIP) < self.hflip, draw(VFLIP) < self.vflip)
        if images.dim() == 4 and not images.is_contiguous():  # the engine's channels_last (trainer.channels_last)
            shifted = shifted.contiguous(memory_format=torch.channels_last)
        return self.normalise(shifted)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """ToTensor and Normalize of torchvision, on a batch: (x / 255 - mean) / std."""
        if images.device not in self._scale:
            shape = (1, -1, 1, 1)
            self._scale[images.device] = (torch.tensor(self.mean, device=images.device).view(shape),
                                          torch.tensor(self.std, device=images.device).view(shape))
        mean, std = self._scale[images.device]
        return images.float().div_(255).sub_(mean).div_(std)

    def on_rank(self, rank: int) -> "BatchTransform":
        twin = BatchTransform(self.seed, self.shift_pad, self.hflip, self.vflip, self.mean, self.std, self.mixup, rank)
        return twin

