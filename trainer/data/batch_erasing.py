"""Random erasing of whole batches (data.augment=imagenet, on the training device, after normalisation), as
timm's RandomErasing(probability=data.re_prob, mode=data.re_mode, max_count=data.re_count) erases one image,
every draw from the image's position key:

    an image is erased with probability re_prob; it gets `count` boxes, uniform in 1 .. re_count
    each box: up to 10 tries of an area uniform in [0.02, 1/3] of the image / count and an aspect (height /
              width) log-uniform in [0.3, 1/0.3]; h, w rounded; the first with h < H and w < W is placed
              uniformly (none: no box); later boxes are drawn over earlier ones
    fill      const: 0; rand: one normal value per channel of the box; pixel: a normal value per pixel

Normal values come from two uniforms each (Box-Muller), those of pixel mode hashed from the key, the box's
number and the pixel's place, so only the erased pixels cost anything.
"""

import math

import torch

from trainer.data.positions import position_keys, uniforms

MIN_AREA, MAX_AREA, MIN_ASPECT = 0.02, 1 / 3, 0.3
TRIES = 10
MODES = ("const", "rand", "pixel")
# draw numbers (`uniforms(keys, stream)`): whether and how many; then per box b and try t, from ERASE_BOXES on
ERASE_APPLY, ERASE_COUNT, ERASE_BOXES = 50, 51, 1000
AREA, ASPECT, TOP, LEFT, NORMAL_U, NORMAL_V = range(6)


def box_stream(box: int, what: int, attempt: int = 0) -> int:
    return ERASE_BOXES + (box * TRIES + attempt) * 8 + what


def normals(keys: torch.Tensor, stream: int) -> torch.Tensor:
    """One standard normal float64 per key (Box-Muller from two uniforms)."""
    u, v = uniforms(keys, stream + NORMAL_U), uniforms(keys, stream + NORMAL_V)
    return torch.sqrt(-2.0 * torch.log1p(-u)) * torch.cos(2.0 * math.pi * v)


class KeyedErasing:
    """`erase(images, keys)`: normalised float images (N, C, H, W), erased in place, each by its own key."""

    def __init__(self, probability: float, mode: str = "pixel", max_count: int = 1):
        self.probability, self.mode, self.max_count = probability, mode, max_count
        self.log_aspect = (math.log(MIN_ASPECT), math.log(1 / MIN_ASPECT))

    def boxes(self, keys: torch.Tensor, height: int, width: int):
        """[(box, top, left, h, w, erased)] for box numbers 0 .. max_count-1: int64 tensors of N on the CPU;
        `erased` says which images have that box."""
        applied = uniforms(keys, ERASE_APPLY) < self.probability
        count = 1 + torch.floor(uniforms(keys, ERASE_COUNT) * self.max_count).long()  # randint(1, max_count)
        area = height * width
        found = []
        for box in range(self.max_count):
            tries = range(TRIES)
            u_area = torch.stack([uniforms(keys, box_stream(box, AREA, t)) for t in tries], 1)
            u_aspect = torch.stack([uniforms(keys, box_stream(box, ASPECT, t)) for t in tries], 1)
            target = (MIN_AREA + u_area * (MAX_AREA - MIN_AREA)) * area / count[:, None].to(torch.float64)
            aspect = torch.exp(self.log_aspect[0] + u_aspect * (self.log_aspect[1] - self.log_aspect[0]))
            h, w = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))
            fits = (w < width) & (h < height)
            first = fits.to(torch.uint8).argmax(1, keepdim=True)
            h, w = h.gather(1, first)[:, 0].long(), w.gather(1, first)[:, 0].long()
            top = torch.floor(uniforms(keys, box_stream(box, TOP)) * (height - h + 1)).long()
            left = torch.floor(uniforms(keys, box_stream(box, LEFT)) * (width - w + 1)).long()
            erased = applied & (box < count) & fits.any(1)
            found.append((box, top, left, h, w, erased))
        return found

    def __call__(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        n, c, height, width = images.shape
        device = images.device
        rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
        for box, top, left, h, w, erased in self.boxes(keys, height, width):
            if not bool(erased.any()):
                continue
            chosen = torch.nonzero(erased)[:, 0]  # on the CPU: no wait for the device
            at = lambda t: t[chosen].to(device)[:, None]  # noqa: E731
            inside = (((rows >= at(top)) & (rows < at(top) + at(h)))[:, :, None]
                      & ((cols >= at(left)) & (cols < at(left) + at(w)))[:, None, :])  # (k, H, W)
            inside = inside[:, None].expand(-1, c, -1, -1)
            part = images[chosen.to(device)]
            if self.mode == "const":
                fill = torch.zeros_like(part)
            elif self.mode == "rand":
                channel_keys = position_keys(keys[chosen][:, None], box, torch.arange(c)[None, :])
                fill = normals(channel_keys, box_stream(box, 0)).to(device, images.dtype)[:, :, None, None].expand_as(part)
            else:
                fill = self.pixel_noise(keys[chosen], box, inside)
            images[chosen.to(device)] = torch.where(inside, fill, part)
        return images

    def pixel_noise(self, keys: torch.Tensor, box: int, inside: torch.Tensor) -> torch.Tensor:
        """Normal values at the pixels `inside` (k, C, H, W) of images with these keys, zeros elsewhere; hashed
        on the images' device (the keys' arithmetic is plain int64 tensor arithmetic)."""
        where = torch.nonzero(inside)  # (m, 4): image, channel, row, column
        _, c, height, width = inside.shape
        place = (where[:, 1] * height + where[:, 2]) * width + where[:, 3]
        pixel_keys = position_keys(keys.to(inside.device)[where[:, 0]], box, place)
        noise = torch.zeros(inside.shape, dtype=torch.float32, device=inside.device)
        noise[inside] = normals(pixel_keys, box_stream(box, 0)).float()
        return noise
