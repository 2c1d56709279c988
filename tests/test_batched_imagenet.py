"""data.augment=imagenet in batches on the training device (trainer.data.batch_crop, batch_colour, batch_erasing):
crop boxes drawn as torchvision's RandomResizedCrop draws them, resampled as its resized_crop resamples, colour
jitter as its functional adjustments, random erasing as timm's, every draw a function of the sample's position,
and the recipe's run through the command line; auto_augment stays per image."""

import logging
import math

import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F2

from image_files import write_image_folder
from test_data import folder_data
from trainer.data.batch_augment import BatchTransform
from trainer.data.batch_colour import colour_jitter, jitter_factors
from trainer.data.batch_crop import CanvasTransform, RandomResizedCrops, canvas_size, crop_boxes, flip, resized_crops
from trainer.data.batch_erasing import MAX_AREA, MIN_AREA, KeyedErasing
from trainer.data.positions import position_keys
from trainer.errors import UserError

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "train"
    write_image_folder(root, classes=[0, 1, 2], per_class=6)
    return root


def keys_of(n: int, epoch: int = 1) -> torch.Tensor:
    return position_keys(7, epoch, torch.arange(n))


def smooth_image(height: int, width: int, channels: int = 3) -> torch.Tensor:
    """Float (C, H, W) in [0.1, 0.9]: slow waves, different in every channel."""
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    return torch.stack([0.5 + 0.4 * torch.sin(x / (9 + 3 * k) + k) * torch.cos(y / (11 + 2 * k) - k)
                        for k in range(channels)]).float()


def test_crop_boxes_are_distributed_as_torchvisions_random_resized_crop():
    from scipy.stats import ks_2samp

    width, height, n = 300, 200, 20000
    torch.manual_seed(0)
    image = torch.empty(1, height, width)
    reference = np.array([RandomResizedCrop.get_params(image, list(SCALE), list(RATIO)) for _ in range(n)], dtype=np.float64)
    top, left, h, w = (t.numpy().astype(np.float64) for t in
                       crop_boxes(keys_of(n), torch.full((n,), width), torch.full((n,), height), SCALE, RATIO))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    ours = {"area": h * w / (width * height), "aspect": w / h, "top": top / (height - h + 1), "left": left / (width - w + 1)}
    ref_i, ref_j, ref_h, ref_w = reference.T
    theirs = {"area": ref_h * ref_w / (width * height), "aspect": ref_w / ref_h, "top": ref_i / (height - ref_h + 1),
              "left": ref_j / (width - ref_w + 1)}
    for what in ours:
        assert ks_2samp(ours[what], theirs[what]).pvalue > 1e-3, what
    for what, bins in (("area", np.linspace(0, 1, 21)), ("aspect", np.geomspace(0.7, 1.4, 15))):
        mine, ref = np.histogram(ours[what], bins)[0] / n, np.histogram(theirs[what], bins)[0] / n
        assert np.abs(mine - ref).max() < 0.012, (what, mine, ref)


def test_when_no_try_fits_the_crop_is_torchvisions_central_fallback():
    for width, height in ((400, 100), (100, 400), (90, 120)):
        scale = (0.95, 1.0)
        expected = RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), [2.0, 3.0] if width == 90 else list(RATIO))
        box = crop_boxes(keys_of(5), torch.full((5,), width), torch.full((5,), height), scale,
                         (2.0, 3.0) if width == 90 else RATIO)
        for j in range(5):
            assert tuple(int(b[j]) for b in box) == tuple(expected), (width, height)


def test_a_box_resampled_in_the_batch_is_torchvisions_antialiased_resized_crop():
    """Inside the output the two agree to a few thousandths; on its outermost pixels roi_align's samples also read
    the pixels just outside the box, where resized_crop repeats the box's edge."""
    image = smooth_image(120, 160)  # H x W, values in [0.1, 0.9]
    width, height = torch.tensor([160]), torch.tensor([120])
    canvas = F2.resize(image, [144, 144], antialias=True)  # stretched onto a square canvas, as the loader does
    for (top, left, h, w), size in (((10, 20, 90, 70), 24), ((5, 8, 100, 150), 32), ((30, 40, 20, 25), 64)):
        expected = F2.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        box = tuple(torch.tensor([v]) for v in (top, left, h, w))
        for source in (image, canvas):  # the image as its own canvas; the stretched canvas
            error = (resized_crops(source[None] * 255, box, width, height, size)[0] / 255 - expected).abs()
            assert error.max() < 0.02 and error[:, 1:-1, 1:-1].max() < 0.008 and error.mean() < 0.003, (box, size)
        moved = (box[0] + 2, box[1] + 2, box[2], box[3])
        assert (resized_crops(image[None] * 255, moved, width, height, size)[0] / 255 - expected).abs().mean() > 0.02


def test_flips_mirror_the_chosen_images_only():
    images = torch.arange(4 * 2 * 3 * 5, dtype=torch.float32).view(4, 2, 3, 5)
    hflip, vflip = torch.tensor([True, False, True, False]), torch.tensor([True, True, False, False])
    out = flip(images.clone(), hflip, vflip)
    for j in range(4):
        expected = images[j].flip(-1) if hflip[j] else images[j]
        assert torch.equal(out[j], expected.flip(-2) if vflip[j] else expected), j


def test_the_canvas_is_the_image_stretched_to_a_square_as_uint8_channels():
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    rgb = Image.fromarray((smooth_image(30, 12).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    for image in (rgb, rgb.convert("L")):
        canvas = CanvasTransform(20, "bilinear")(image)
        assert canvas.dtype == torch.uint8 and canvas.is_contiguous()
        assert torch.equal(canvas, pil_to_tensor(image.resize((20, 20), Image.Resampling.BILINEAR)))
        assert torch.equal(CanvasTransform(20, "bilinear")(image.resize((20, 20))), pil_to_tensor(image.resize((20, 20))))


def test_colour_jitter_of_a_batch_is_torchvisions_per_image_adjustments():
    images = torch.stack([smooth_image(20, 24) * (0.6 + 0.1 * j) for j in range(6)])
    brightness, contrast, saturation = jitter_factors(keys_of(6), 0.4)
    assert all(((f >= 0.6) & (f <= 1.4)).all() and f.std() > 0 for f in (brightness, contrast, saturation))
    out = colour_jitter(images.clone(), brightness, contrast, saturation)
    for j in range(6):
        expected = F2.adjust_brightness(images[j], float(brightness[j]))
        expected = F2.adjust_contrast(expected, float(contrast[j]))
        expected = F2.adjust_saturation(expected, float(saturation[j]))
        torch.testing.assert_close(out[j], expected, atol=1e-6, rtol=0)
    gray = images[:, :1]
    out = colour_jitter(gray.clone(), brightness, contrast, saturation)
    for j in range(6):
        expected = F2.adjust_contrast(F2.adjust_brightness(gray[j], float(brightness[j])), float(contrast[j]))
        torch.testing.assert_close(out[j], expected, atol=1e-6, rtol=0)
    low, _, _ = jitter_factors(keys_of(4000), 1.5)  # c > 1: factors from 0
    assert low.min() >= 0 and low.min() < 0.01 and low.max() > 2.49


def test_random_erasing_boxes_keep_timms_bounds_and_fill_by_mode():
    n, height, width = 2000, 24, 32
    keys = keys_of(n)
    for mode in ("const", "rand", "pixel"):
        images = torch.full((n, 3, height, width), 5.0)
        out = KeyedErasing(0.5, mode, 1)(images, keys)
        erased = (out != 5.0).any(1)  # (n, H, W)
        hit = erased.flatten(1).any(1)
        assert abs(hit.float().mean() - 0.5) < 0.04, mode
        rows, cols = erased.any(2), erased.any(1)
        h, w = rows.sum(1)[hit].float(), cols.sum(1)[hit].float()
        assert torch.equal(erased[hit].flatten(1).sum(1).float(), h * w)  # one rectangle each
        area = h * w / (height * width)
        assert area.min() >= MIN_AREA * 0.5 and area.max() <= MAX_AREA * 1.25 and area.mean() > 0.12, mode
        aspect = h / w
        assert aspect.min() >= 0.3 * 0.75 and aspect.max() <= 3.34 / 0.75, mode
        values = out.permute(0, 2, 3, 1)[erased]  # (pixels, C)
        if mode == "const":
            assert (values == 0).all()
        elif mode == "rand":  # one colour per box and channel, normal over boxes
            per_box = torch.stack([out[j, :, erased[j]][:, 0] for j in torch.nonzero(hit)[:, 0]])
            assert all((out[j, :, erased[j]] == per_box[i][:, None]).all() for i, j in enumerate(torch.nonzero(hit)[:100, 0]))
            assert abs(per_box.mean()) < 0.1 and abs(per_box.std() - 1) < 0.1
        else:
            assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05 and values.unique().numel() > 0.9 * values.numel()
    boxes = KeyedErasing(1.0, "const", 3).boxes(keys_of(3000), 64, 64)  # 1 to 3 boxes, each of 1/count of the area
    count = sum(erased.long() for *_, erased in boxes)
    assert set(count.tolist()) == {1, 2, 3} and all(abs((count == k).float().mean() - 1 / 3) < 0.04 for k in (1, 2, 3))
    first_area = (boxes[0][3] * boxes[0][4]).float() / 64 ** 2
    means = [float(first_area[count == k].mean()) for k in (1, 2, 3)]
    assert means[0] > 1.6 * means[1] > 1.6 * 1.2 * means[2]


def test_each_samples_imagenet_augmentation_is_a_function_of_its_key_whatever_the_batch():
    canvases = torch.stack([(smooth_image(40, 40) * 255).round().to(torch.uint8).roll(3 * j, -1) for j in range(8)])
    sizes = torch.tensor([[60, 40], [40, 60], [40, 40], [100, 30], [30, 100], [50, 50], [80, 60], [60, 80]])
    transform = BatchTransform(seed=5, hflip=0.5, vflip=0.5, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                               resized_crop=RandomResizedCrops(16, SCALE, RATIO, sizes), color_jitter=0.4,
                               erasing=KeyedErasing(0.5, "pixel", 2))
    keys, indices = keys_of(8, epoch=3), torch.arange(8)
    whole = transform.augment(canvases, keys, indices)
    assert whole.shape == (8, 3, 16, 16) and whole.dtype == torch.float32
    parts = torch.cat([transform.augment(canvases[:3], keys[:3], indices[:3]), transform.augment(canvases[3:], keys[3:], indices[3:])])
    assert torch.equal(parts, whole)
    assert torch.equal(transform.on_rank(1).augment(canvases, keys, indices), whole)  # the rank is in the keys, not here
    assert not torch.equal(transform.augment(canvases, keys_of(8, epoch=4), indices), whole)
    assert not torch.equal(transform.augment(canvases, keys, indices.flip(0)), whole)  # the sizes matter
    channels_last = transform.augment(canvases.contiguous(memory_format=torch.channels_last), keys, indices)
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and torch.equal(channels_last, whole)


def test_the_image_folder_recipe_loads_canvases_and_auto_augment_stays_per_image(folder, caplog):
    with caplog.at_level(logging.INFO, logger="trainer"):
        data = folder_data(folder, augment="imagenet", re_prob=0.25)
    assert any("data.augment=imagenet: in batches on the training device" in r.message for r in caplog.records)
    pixels, _ = next(iter(data.train_loader))
    canvas = canvas_size(16, SCALE, 30)  # the folder's longest side: 30 px (trainer's decode size: 57)
    assert canvas == 30 and pixels.dtype == torch.uint8 and pixels.shape == (8, 3, canvas, canvas)
    store = data.train_loader.dataset.cache  # data.cache=auto: the canvases themselves are kept, stretched once
    assert store is not None and (store.shapes == (canvas, canvas, 3)).all() and store.filled() == 8
    assert torch.equal(next(iter(data.train_loader))[0], pixels)  # the same canvases, now from the cache
    transform = data.batch_transform
    assert transform.resized_crop is not None and transform.erasing is not None and transform.shift_pad is None
    sizes = {tuple(s) for s in transform.resized_crop.sizes.tolist()}
    assert (12, 30) in sizes and sizes <= {(16, 16), (24, 24), (20, 14), (12, 30)}  # the files' own (width, height)
    out, _ = transform(pixels, torch.zeros(8), 1, 0, data.train_loader.batch_sampler)
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    mixing = folder_data(folder, augment="imagenet", mixup=0.8, cutmix=1.0)  # mixup after the batch's augmentation
    mixed, soft = mixing.batch_transform(pixels, torch.arange(8) % 3, 1, 0, mixing.train_loader.batch_sampler)
    assert mixed.shape == (8, 3, 16, 16) and soft.shape == (8, 3) and torch.allclose(soft.sum(1), torch.ones(8))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainer"):
        per_image = folder_data(folder, augment="imagenet", auto_augment="rand-m9-mstd0.5")
    assert any("data.augment=imagenet: per image in the loader" in r.message and "data.auto_augment" in r.message
               for r in caplog.records)
    assert next(iter(per_image.train_loader))[0].dtype == torch.float32 and not per_image.batch_transform.batched
    assert canvas_size(224, SCALE) == 448 and canvas_size(224, (0.5, 1.0)) == 317 and canvas_size(32, SCALE) == 114
    assert canvas_size(224, SCALE, 256) == 256 and canvas_size(224, SCALE, 100) == 224


@pytest.mark.parametrize("count", [0, -2])
def test_a_re_count_below_one_is_refused(folder, count):
    with pytest.raises(UserError, match=rf"data.re_count={count} is not valid; use an integer >= 1"):
        folder_data(folder, augment="imagenet", re_prob=0.25, re_count=count)


def test_the_command_line_trains_with_imagenet_in_batches(folder, tmp_path):
    from conftest import read_csv, run_module

    result = run_module("trainer", "data=image_folder", f"data.root={folder}", "data.augment=imagenet", "data.image_size=16",
                        "data.re_prob=0.5", "data.batch_size=8", "data.num_workers=0", "model.width=8",
                        "trainer.max_epochs=1", "progress=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data.augment=imagenet: in batches on the training device" in result.stdout + result.stderr
    row = read_csv(tmp_path / "run" / "metrics.csv")[-1]
    assert math.isfinite(float(row["train/loss"])) and math.isfinite(float(row["val/loss"]))


@pytest.mark.slow
def test_workers_the_cache_and_resuming_change_nothing_with_imagenet_in_batches(tmp_path):
    from conftest import run_module
    from test_run_anywhere import SAME, train, without_seconds

    folder = tmp_path / "images"
    write_image_folder(folder, classes=range(4), per_class=12)
    imagenet = ("data.augment=imagenet", "data.re_prob=0.5", "data.re_count=2", "data.batch_size=16", "model.width=8")
    straight = train(tmp_path, "straight", folder, *SAME, *imagenet, "data.num_workers=0", "trainer.max_epochs=2")
    # with loader workers and without the decoded-image cache (the straight run keeps its canvases in memory)
    train(tmp_path, "resumed", folder, *SAME, *imagenet, "data.num_workers=2", "data.cache=none", "trainer.max_epochs=1")
    result = run_module("trainer", f"resume={tmp_path / 'resumed'}", "trainer.max_epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from conftest import read_csv

    resumed = without_seconds(read_csv(tmp_path / "resumed" / "metrics.csv"))
    assert [row["epoch"] for row in resumed] == ["1", "2"] and resumed == straight
    weights = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["model"] for name in ("straight", "resumed")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
