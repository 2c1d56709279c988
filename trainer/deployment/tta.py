"""Test-time augmentation: the views of each image a model predicts, and the mean of their outputs.

    none        the evaluation transform's image (resize to image_size / crop_pct, center crop)
    flip        that image and its mirror (left-right)
    flip+shift  those two, and the image translated by `tta_shift` pixels right, left, down and up; the
                uncovered border is filled by reflection (torch's `reflect` padding of the normalised input,
                which is the reflection of the pixels: normalisation is per channel and affine): 6 views
    five_crop   evaluation's resize, then torchvision's FiveCrop at image_size (four corners and the
                center) instead of the center crop: 5 views; the loader gives them stacked (N, 5, C, H, W)

The outputs averaged are probabilities (regression: values), never logits.
"""

from typing import Callable

from trainer.errors import UserError

TTA_MODES = ("none", "flip", "flip+shift", "five_crop")


def check_tta(tta: str, shift: int) -> None:
    if tta not in TTA_MODES:
        raise UserError(f"tta={tta} is not valid; use one of: {', '.join(TTA_MODES)}")
    if tta == "flip+shift" and (not isinstance(shift, int) or shift < 1):
        raise UserError(f"tta_shift={shift} is not valid; use a whole number of pixels >= 1")


def shifted(batch, dx: int, dy: int):
    """The batch (N, C, H, W) translated dx pixels right (negative: left) and dy down, reflect-padded."""
    import torch.nn.functional as F  # heavy: imported here so that the checks above answer without it

    height, width = batch.shape[-2:]
    if abs(dx) >= width or abs(dy) >= height:
        raise UserError(f"tta_shift={max(abs(dx), abs(dy))} is not valid for a {width}x{height} input; use fewer pixels "
                        "than the input size")
    padded = F.pad(batch, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="reflect")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top:top + height, left:left + width]


def views_mean(outputs: Callable, batch, tta: str, shift: int):
    """The mean output of the views of each image in `batch`, as `outputs` (one model) gives them."""
    import torch  # heavy: imported here so that the checks above answer without it

    if tta == "five_crop":
        n, crops = batch.shape[:2]
        return outputs(batch.flatten(0, 1)).unflatten(0, (n, crops)).mean(1)
    views = [batch]
    if tta in ("flip", "flip+shift"):
        views.append(torch.flip(batch, dims=[3]))
    if tta == "flip+shift":
        views += [shifted(batch, dx, dy) for dx, dy in ((shift, 0), (-shift, 0), (0, shift), (0, -shift))]
    if len(views) == 2:  # flip exactly as before: the sum of two outputs halved
        return (outputs(views[0]) + outputs(views[1])) / 2
    return torch.stack([outputs(view) for view in views]).mean(0)
