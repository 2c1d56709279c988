"""Colour jitter of whole batches (data.augment=imagenet, on the training device), with timm's meaning of
data.color_jitter=c: torchvision's ColorJitter(brightness=c, contrast=c, saturation=c), no hue; each image's
three factors uniform in [max(0, 1 - c), 1 + c], drawn from its position key.

Order: brightness, then contrast, then saturation, always (torchvision's ColorJitter shuffles the order per
image; a fixed order keeps the batch in three passes). Each step is torchvision's functional one on float
images in [0, 1] (clamped after each):

    brightness  x * b
    contrast    c * x + (1 - c) * mean(gray(x))      the mean over the whole image; gray of one channel: itself
    saturation  s * x + (1 - s) * gray(x)            a one-channel image is left as it is

gray(x) = 0.2989 R + 0.587 G + 0.114 B (torchvision's rgb_to_grayscale).
"""

from typing import Tuple

import torch

from trainer.data.positions import uniforms

BRIGHTNESS, CONTRAST, SATURATION = 42, 43, 44  # draw numbers (`uniforms(keys, stream)`)
GRAY = (0.2989, 0.587, 0.114)


def jitter_factors(keys: torch.Tensor, strength: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(brightness, contrast, saturation) factors of each key, float64 on the CPU."""
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    return tuple(low + uniforms(keys, stream) * (high - low) for stream in (BRIGHTNESS, CONTRAST, SATURATION))


def gray(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luminance of RGB images, in torchvision's order of operations; a one-channel image itself."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)
    return r.mul(GRAY[0]).add_(g, alpha=GRAY[1]).add_(b, alpha=GRAY[2]).unsqueeze(1)


def colour_jitter(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                  saturation: torch.Tensor) -> torch.Tensor:
    """Float images (N, C, H, W) in [0, 1], C 1 or 3, jittered in place by each image's factors (1-d tensors
    of N). The contrast step's mean of the gray image is the gray mix of the channels' means (the same number,
    without a gray image)."""
    shape = (-1, 1, 1, 1)
    factor = lambda f: f.to(images.device, images.dtype).view(shape)  # noqa: E731
    images.mul_(factor(brightness)).clamp_(0, 1)
    if images.shape[1] == 3:
        weights = torch.tensor(GRAY, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        mean = (images.mean(dim=(2, 3), keepdim=True) * weights).sum(1, keepdim=True)
    else:
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
    c = factor(contrast)
    images.mul_(c).add_(mean * (1 - c)).clamp_(0, 1)
    if images.shape[1] == 3:
        s, luminance = factor(saturation), gray(images)  # before the images change
        images.mul_(s).addcmul_(luminance, 1 - s).clamp_(0, 1)
    return images
