"""Mixup and CutMix as timm's Mixup does them (modes batch, pair, elem; lambda correction for boxes cut by
the border; label smoothing of the mixed targets), with every draw taken from a position's key
(trainer.data.positions) instead of numpy's global stream: mode and lambda of a batch come from its key,
those of each element (pair, elem) from keys derived from it.

Each image i is mixed with image n-1-i of the batch (timm's partner), all images in one pass.
"""

from typing import Tuple

import numpy as np
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

from trainer.data.positions import position_keys, uniforms

MIX_APPLY, MIX_SWITCH, MIX_LAMBDA, BOX_Y, BOX_X = 11, 12, 13, 14, 15


def beta_quantile(u: np.ndarray, alpha: float) -> np.ndarray:
    """Beta(alpha, alpha) draws from uniform ones (its inverse distribution function)."""
    from scipy.special import betaincinv

    return betaincinv(alpha, alpha, u)


class KeyedMixup(Mixup):
    """timm's Mixup, called with a key: `inputs, soft_targets = mixup(inputs, targets, key)`."""

    def draws(self, key: torch.Tensor, count: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(lam, use_cutmix, box centre y, box centre x as fractions) for `count` elements; in batch mode
        every element gets the batch's own."""
        keys = key.reshape(1) if self.mode == "batch" else position_keys(key, torch.arange(count))
        u = {stream: uniforms(keys, stream).numpy() for stream in (MIX_APPLY, MIX_SWITCH, MIX_LAMBDA, BOX_Y, BOX_X)}
        mixup_on, cutmix_on = self.mixup_alpha > 0, self.cutmix_alpha > 0
        use_cutmix = u[MIX_SWITCH] < self.switch_prob if mixup_on and cutmix_on else np.full(len(keys), cutmix_on)
        lam = np.where(use_cutmix, beta_quantile(u[MIX_LAMBDA], self.cutmix_alpha or 1.0),
                       beta_quantile(u[MIX_LAMBDA], self.mixup_alpha or 1.0))
        applied = (u[MIX_APPLY] < self.mix_prob) & self.mixup_enabled
        lam, use_cutmix = np.where(applied, lam, 1.0), use_cutmix & applied
        if self.mode == "batch":
            return tuple(np.repeat(v, count) for v in (lam, use_cutmix, u[BOX_Y], u[BOX_X]))
        return lam, use_cutmix, u[BOX_Y], u[BOX_X]

    def __call__(self, x: torch.Tensor, target: torch.Tensor, key=None):
        assert len(x) % 2 == 0, "Batch size should be even when using this"
        key = position_keys(0) if key is None else key
        n, (h, w) = len(x), x.shape[-2:]
        if self.mode == "pair":  # the first half draws; the second mirrors it (image n-1-i mixes with i)
            lam, cut, cy, cx = (np.concatenate([v, v[::-1]]) for v in self.draws(key, n // 2))
        else:
            lam, cut, cy, cx = self.draws(key, n)
        # timm's rand_bbox: a box of sqrt(1 - lam) of each side centred at a random pixel, clipped to the image
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
        cy, cx = (cy * h).astype(np.int64), (cx * w).astype(np.int64)
        yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + (cut_h + 1) // 2, 0, h)
        xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + (cut_w + 1) // 2, 0, w)
        if self.correct_lam:
            lam = np.where(cut, 1.0 - (yh - yl) * (xh - xl) / float(h * w), lam)
        partner = x.flip(0)
        as_tensor = lambda v, dtype=None: torch.as_tensor(v, device=x.device, dtype=dtype)  # noqa: E731
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_box = ((rows[None, :] >= as_tensor(yl)[:, None]) & (rows[None, :] < as_tensor(yh)[:, None]))[:, None, :, None] \
            & ((cols[None, :] >= as_tensor(xl)[:, None]) & (cols[None, :] < as_tensor(xh)[:, None]))[:, None, None, :]
        cut_t = as_tensor(cut)[:, None, None, None]
        weight = as_tensor(lam, x.dtype)[:, None, None, None]
        blended = torch.where(weight == 1, x, x * weight + partner * (1 - weight))
        mixed = torch.where(cut_t, torch.where(in_box, partner, x), blended)
        lam_column = as_tensor(lam, torch.float32)[:, None]
        return mixed, mixup_target(target, self.num_classes, lam_column, self.label_smoothing)
