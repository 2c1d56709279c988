"""Image transforms and batch mixing, by timm: training augmentation, the deterministic evaluation
transform, and Mixup/CutMix. Input size, mean and std come from the config, or from the model.
"""

import math
from typing import Any, Dict, Optional, Sequence

from trainer.errors import UserError
from trainer.parts.models import MODELS

# The built-in cnn is trained from scratch at any size: small inputs keep it fast on a CPU, and a
# mean and std of 0.5 per channel map [0, 1] pixels to [-1, 1] whatever the channel count.
CNN_INPUT = dict(image_size=32, mean=(0.5,), std=(0.5,), interpolation="bilinear", crop_pct=1.0)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


def model_input_defaults(model_name: str) -> Dict[str, Any]:
    """The input a model expects, read from timm's pretrained config by name, without building the model."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg


    if model_name in MODELS:
        return dict(CNN_INPUT)
    try:
        pretrained = get_pretrained_cfg(model_name)
    except RuntimeError:  # a known architecture with an unknown tag: the model builder names it
        pretrained = None
    # `args` only needs to be non-empty; without a pretrained config timm falls back on ImageNet's
    resolved = resolve_data_config(args={"in_chans": 3}, pretrained_cfg=pretrained.to_dict() if pretrained else {})
    return dict(
        image_size=int(resolved["input_size"][-1]),
        mean=tuple(resolved["mean"]),
        std=tuple(resolved["std"]),
        interpolation=resolved["interpolation"],
        crop_pct=float(resolved["crop_pct"]),
    )


def per_channel(values: Sequence[float], channels: int, key: str) -> tuple:
    """`values` for `channels` channels: one value is repeated; RGB values are averaged for grayscale,
    the same way timm folds a pretrained RGB stem into a one-channel one."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if len(values) == 3 and channels == 1:
        return (sum(values) / 3,)
    raise UserError(f"data.{key} has {len(values)} values; data.channels={channels} needs {channels} (or 1)")


def resolve_input(model_name: str, channels: int, image_size=None, mean=None, std=None, interpolation=None,
                  crop_pct=None) -> Dict[str, Any]:
    """Fill the settings left null with the model's defaults, and check them all."""
    if channels not in (1, 3):
        raise UserError(f"data.channels={channels} is not valid; use 1 (grayscale) or 3 (RGB)")
    given = dict(image_size=image_size, mean=mean, std=std, interpolation=interpolation, crop_pct=crop_pct)
    if any(value is None for value in given.values()):
        defaults = model_input_defaults(model_name)
        given = {key: defaults[key] if value is None else value for key, value in given.items()}
    spec = dict(given, mean=per_channel(given["mean"], channels, "mean"), std=per_channel(given["std"], channels, "std"))
    if spec["image_size"] < 1:
        raise UserError(f"data.image_size={spec['image_size']} is not valid; use an integer >= 1")
    if any(s <= 0 for s in spec["std"]):
        raise UserError(f"data.std={list(spec['std'])} is not valid; every value must be > 0")
    if spec["interpolation"] not in INTERPOLATIONS:
        raise UserError(f"data.interpolation={spec['interpolation']} is not valid; use one of: {', '.join(INTERPOLATIONS)}")
    if not 0 < spec["crop_pct"] <= 1:
        raise UserError(f"data.crop_pct={spec['crop_pct']} is not valid; use a number in (0, 1]")
    spec["channels"] = channels
    return spec


def decode_size(spec: Dict[str, Any], scale: Optional[Sequence[float]] = None) -> int:
    """The smallest shorter side at which an image keeps every pixel its transform can use.
    Evaluation resizes the shorter side to image_size / crop_pct; a training crop may cover as
    little as scale[0] of the area, which is then resized to image_size."""
    if scale is None:
        return math.ceil(spec["image_size"] / spec["crop_pct"])
    return math.ceil(spec["image_size"] / math.sqrt(scale[0]))


def eval_transform(spec: Dict[str, Any]):
    """Deterministic: resize to image_size / crop_pct, center-crop image_size, normalize."""
    from timm.data import create_transform

    return create_transform(
        spec["image_size"], is_training=False, interpolation=spec["interpolation"], mean=spec["mean"],
        std=spec["std"], crop_pct=spec["crop_pct"],
    )


class FiveCropTransform:
    """Evaluation's transform with torchvision's FiveCrop (four corners and the center, at image_size) in place of
    its center crop: the resize, then five crops, each made a tensor and normalised; a tensor (5, C, H, W).
    A class, not a closure: loader workers may pickle it."""

    def __init__(self, spec: Dict[str, Any]):
        from torchvision import transforms

        steps = list(eval_transform(spec).transforms)
        crop = next(i for i, step in enumerate(steps) if isinstance(step, transforms.CenterCrop))
        self.before, self.after = transforms.Compose(steps[:crop]), transforms.Compose(steps[crop + 1:])
        self.five = transforms.FiveCrop(spec["image_size"])

    def __call__(self, img):
        import torch

        return torch.stack([self.after(view) for view in self.five(self.before(img))])


def pixels_transform(spec: Dict[str, Any]):
    """For the batched recipes (trainer.data.batch_augment): resize the shorter side to image_size, center-crop
    it, and give the uint8 pixels as a (C, H, W) tensor; the training device crops, flips and normalises."""
    from torchvision import transforms as T

    interpolation = T.InterpolationMode(spec["interpolation"])
    return T.Compose([T.Resize(spec["image_size"], interpolation=interpolation), T.CenterCrop(spec["image_size"]),
                      T.PILToTensor()])


def check_augmentation(scale, ratio, hflip: float, vflip: float, color_jitter: float, re_prob: float, re_mode: str,
                       re_count: int = 1, **unchecked) -> None:
    """The augmentation settings, checked whichever recipe uses them."""
    scale, ratio = tuple(scale), tuple(ratio)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise UserError(f"data.scale={list(scale)} is not valid; use [min, max] with 0 < min <= max <= 1")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise UserError(f"data.ratio={list(ratio)} is not valid; use [min, max] with 0 < min <= max")
    for key, p in (("hflip", hflip), ("vflip", vflip), ("re_prob", re_prob)):
        if not 0 <= p <= 1:
            raise UserError(f"data.{key}={p} is not valid; use a probability between 0 and 1")
    if re_mode not in ("const", "rand", "pixel"):
        raise UserError(f"data.re_mode={re_mode} is not valid; use const, rand or pixel")
    if color_jitter < 0:
        raise UserError(f"data.color_jitter={color_jitter} is not valid; use a number >= 0 (0 = off)")
    check_re_count(re_count)


def check_re_count(re_count) -> None:
    if isinstance(re_count, bool) or not isinstance(re_count, int) or re_count < 1:
        raise UserError(f"data.re_count={re_count} is not valid; use an integer >= 1 (random erasing draws 1 to "
                        "data.re_count boxes per erased image)")


def train_transform(spec: Dict[str, Any], augment: bool = True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                    hflip: float = 0.5, vflip: float = 0.0, color_jitter: float = 0.4,
                    auto_augment: Optional[str] = None, re_prob: float = 0.0, re_mode: str = "pixel",
                    re_count: int = 1):
    """timm's training transform (data.augment=imagenet): random-resized-crop, flips, colour jitter or an
    auto-augment policy, random erasing; per image, in the loader."""
    from timm.data import create_transform

    if not augment:
        return eval_transform(spec)
    check_augmentation(scale, ratio, hflip, vflip, color_jitter, re_prob, re_mode)
    try:
        transform = create_transform(
            spec["image_size"], is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip, vflip=vflip,
            color_jitter=color_jitter or None, auto_augment=auto_augment or None,
            interpolation=spec["interpolation"], mean=spec["mean"], std=spec["std"],
            re_prob=re_prob, re_mode=re_mode, re_count=re_count,
        )
    except (AssertionError, ValueError, KeyError) as err:  # timm asserts on a malformed augmentation string
        if auto_augment:
            raise UserError(
                f"data.auto_augment={auto_augment} is not a timm augmentation string ({err or 'malformed'}); "
                "e.g. rand-m9-mstd0.5-inc1 (RandAugment), rand-n1-m10-mstd101-p1 (TrivialAugment-style), "
                "augmix-m5-w4-d2 (AugMix), original (AutoAugment)"
            ) from None
        raise
    if auto_augment:
        allow_zero_bit_posterize(transform)
    return transform


def posterize_zero_bits_as_black(img, bits_to_keep, **kwargs):
    from PIL import Image
    from timm.data.auto_augment import posterize

    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # what keeping 0 bits meant before Pillow refused it
    return posterize(img, bits_to_keep, **kwargs)


def allow_zero_bit_posterize(transform) -> None:
    """timm's level mappings ask to keep 0 bits at some magnitudes (RandAugment with inc1 or a low
    m, AugMix, AutoAugment v0), which recent Pillow refuses with a ValueError deep in a loader
    worker. Swap the operation in this transform's own ops (timm itself stays untouched)."""
    from timm.data.auto_augment import AugmentOp, posterize

    for stage in getattr(transform, "transforms", []):
        ops = list(getattr(stage, "ops", [])) + [op for sub in getattr(stage, "policy", []) for op in sub]
        for op in ops:
            if isinstance(op, AugmentOp) and op.aug_fn is posterize:
                op.aug_fn = posterize_zero_bits_as_black


def build_mixup(num_classes: int, batch_size: int, mixup: float = 0.0, cutmix: float = 0.0, mixup_prob: float = 1.0,
                mixup_switch_prob: float = 0.5, mixup_mode: str = "batch", label_smoothing: float = 0.1):
    """timm's Mixup, drawing from position keys (trainer.data.mixing.KeyedMixup), when mixup or cutmix is on, else None. It turns a batch's integer targets into
    soft targets of shape (batch, num_classes), so it needs an even batch size. `label_smoothing`
    (data.label_smoothing) smooths those targets torch's way (1-s+s/C on each label) before the
    configured loss sees them; check_config refuses it next to a loss that smooths again."""
    if mixup < 0 or cutmix < 0:
        raise UserError(f"data.mixup={mixup}, data.cutmix={cutmix}: alphas must be >= 0 (0 = off)")
    if mixup == 0 and cutmix == 0:
        return None
    from trainer.data.mixing import KeyedMixup

    if mixup_mode not in ("batch", "pair", "elem"):
        raise UserError(f"data.mixup_mode={mixup_mode} is not valid; use batch, pair or elem")
    for key, p in (("mixup_prob", mixup_prob), ("mixup_switch_prob", mixup_switch_prob)):
        if not 0 <= p <= 1:
            raise UserError(f"data.{key}={p} is not valid; use a probability between 0 and 1")
    if not 0 <= label_smoothing < 1:
        raise UserError(f"data.label_smoothing={label_smoothing} is not valid; use a number in [0, 1)")
    if batch_size % 2:
        raise UserError(f"data.batch_size={batch_size}: mixup and cutmix pair up images, so use an even batch size")
    return KeyedMixup(
        mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob, switch_prob=mixup_switch_prob, mode=mixup_mode,
        label_smoothing=label_smoothing, num_classes=num_classes,
    )
