"""Datasets. Each builder returns a DataBundle: loaders plus what the model, the loss and the engine need to know.

    digits        scikit-learn's bundled 8x8 digits, in memory
    image_folder  data.root/<class>/<images>, validation from data.val_root or a stratified split
    csv           a CSV of image paths and labels, validation from data.val_csv or a stratified split

Order of the work for image files: list, check (bad files refused or left out), subsample classes
(data.class_fraction), split, then transforms and loaders.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from trainer.config.registry import Registry
from trainer.data import image_cache, images
from trainer.data.batch_augment import (BATCHED, BatchTransform, choose_recipe, imagenet_in_batches, recipe_hflip,
                                        recipe_named)
from trainer.data.batch_crop import CanvasTransform, RandomResizedCrops, canvas_size
from trainer.data.batch_erasing import KeyedErasing
from trainer.data.file_checks import checked_files
from trainer.data.folds import csv_groups, fold_split
from trainer.data.loaders import ImageLoader, make_loaders
from trainer.data.transforms import (build_mixup, check_augmentation, check_re_count, decode_size, eval_transform,
                                     pixels_transform, resolve_input, train_transform)
from trainer.errors import UserError

DATASETS = Registry("dataset")
log = logging.getLogger("trainer")


@dataclass
class DataBundle:
    train_loader: DataLoader
    val_loader: DataLoader
    class_names: List[str]
    in_chans: int
    train_labels: np.ndarray  # for class weights and samplers
    # What the engine does to each training batch on its device (trainer.data.batch_augment.BatchTransform):
    # the batched recipes' crops, flips and normalisation, then mixup/cutmix, whose (batch, classes) soft
    # targets go to the configured loss (each has a soft form); validation keeps the labels. None: nothing.
    batch_transform: Optional[BatchTransform] = None
    # digits only: the (mean, std) of the training split its in-memory tensors (pixel values / 16) were
    # normalised by, which an exported model's users must apply too. Image files: the transform's, from the config.
    tensor_normalisation: Optional[Tuple[float, float]] = None
    # what names each validation image, in the validation order (oof_predictions.csv): its path relative to
    # data.root, the CSV's path column as written, or digits' index in scikit-learn's dataset
    val_ids: Optional[List[str]] = None

    @property
    def mixup(self):
        """The KeyedMixup (a timm Mixup) of the batch transform, or None."""
        return getattr(self.batch_transform, "mixup", None)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int):
    """Seeded split keeping every class's share in both parts (scikit-learn's train_test_split)."""
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction={val_fraction} is not valid; use a number between 0 and 1 (exclusive)")
    index = np.arange(len(labels))
    try:
        return train_test_split(index, test_size=val_fraction, stratify=labels, random_state=seed)
    except ValueError as err:
        raise UserError(f"cannot split the data with data.val_fraction={val_fraction}: {err}") from None


def require_two_per_class(labels: np.ndarray, class_names: Sequence[str], val_fraction: float, alternative: str = "") -> None:
    """A stratified split puts every class in both parts, so each needs two images; say which one has fewer."""
    counts = np.bincount(labels, minlength=len(class_names))
    for name, count in zip(class_names, counts):
        if count < 2:
            raise UserError(
                f"class '{name}' has {count} image{'s' if count != 1 else ''}; the stratified split "
                f"(data.val_fraction={val_fraction}) needs at least 2 per class: add images{alternative}"
            )


def subsample_classes(labels: np.ndarray, class_names: Sequence[str], class_fraction: Optional[Dict[Any, float]], seed: int) -> np.ndarray:
    """Indices kept when each class named in `class_fraction` keeps that fraction of its samples
    (at least one), drawn with `seed`; all indices when it is null."""
    if not class_fraction:
        return np.arange(len(labels))
    if not isinstance(class_fraction, Mapping):
        raise UserError(f"data.class_fraction={class_fraction} is not valid; use a mapping of class name to fraction kept, "
                        "e.g. 'data.class_fraction={3:0.1,5:0.1}'")
    fractions = {str(name): fraction for name, fraction in class_fraction.items()}  # {3: 0.1} from the command line
    unknown = [name for name in fractions if name not in class_names]
    if unknown:
        raise UserError(f"data.class_fraction names unknown classes: {', '.join(unknown)}; the classes are: {', '.join(class_names)}")
    for name, fraction in fractions.items():
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise UserError(f"data.class_fraction: class '{name}' has fraction {fraction}; use a number in (0, 1]")
    rng = np.random.default_rng(seed)
    kept = []
    for index, name in enumerate(class_names):
        members = np.flatnonzero(labels == index)
        fraction = fractions.get(name, 1.0)
        if fraction < 1 and len(members):
            members = rng.choice(members, size=max(1, round(fraction * len(members))), replace=False)
        kept.append(members)
    return np.sort(np.concatenate(kept))


@DATASETS.register("digits")
def digits(batch_size: int, val_fraction: float, image_size: int, num_workers: int, sampler: str,
           class_fraction: Optional[Dict[Any, float]], folds: Optional[int], fold: Optional[int], *, seed: int,
           pin_memory: bool = False) -> DataBundle:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): no download."""
    from sklearn.datasets import load_digits

    if image_size < 8:
        raise UserError(f"data.image_size={image_size} is not valid for digits; use 8 or more")
    bunch = load_digits()
    class_names = [str(c) for c in bunch.target_names]
    images_ = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = bunch.target.astype(np.int64)
    kept = np.arange(len(labels))
    if class_fraction:
        kept = subsample_classes(labels, class_names, class_fraction, seed)
        images_, labels = images_[torch.from_numpy(kept)], labels[kept]
        if folds is None:  # folds check their own minimum (trainer.data.folds)
            require_two_per_class(labels, class_names, val_fraction, " (raise its data.class_fraction)")
    if image_size != 8:
        images_ = F.interpolate(images_, size=(image_size, image_size), mode="bilinear", align_corners=False)
    train_idx, val_idx = split(labels, class_names, val_fraction, folds, fold, seed)
    val_ids = [str(i) for i in kept[val_idx]]
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    mean, std = images_[train_idx].mean(), images_[train_idx].std()
    images_ = (images_ - mean) / std
    targets = torch.from_numpy(labels)
    train_set = TensorDataset(images_[train_idx], targets[train_idx])
    val_set = TensorDataset(images_[val_idx], targets[val_idx])
    train_labels = labels[train_idx.numpy()]
    train_loader, val_loader = make_loaders(train_set, val_set, batch_size, num_workers, seed, pin_memory,
                                            sampler=sampler, train_labels=train_labels, random_transforms=False)
    return DataBundle(train_loader, val_loader, class_names, 1, train_labels,
                      tensor_normalisation=(float(mean), float(std)), val_ids=val_ids)


def split(labels: np.ndarray, class_names: Sequence[str], val_fraction: float, folds: Optional[int], fold: Optional[int],
          seed: int, groups: Optional[Sequence[str]] = None):
    """(training, validation) indices: fold `fold` of `folds` (trainer.data.folds), else the stratified split."""
    if folds is not None:
        return fold_split(labels, class_names, folds, fold, seed, groups)
    return stratified_split(labels, val_fraction, seed)


# --- datasets of image files ----------------------------------------------------------------
# Both builders take the same pipeline settings (trainer.config.schema.ImageData); they are spelt out in
# each signature because the registry accepts exactly the keys a builder names.

@DATASETS.register("image_folder")
def image_folder(root: str, val_root: Optional[str], batch_size: int, val_fraction: float, channels: int,
                 image_size, mean, std, interpolation, crop_pct, augment,
                 scale, ratio, hflip, vflip, color_jitter, auto_augment,
                 re_prob, re_mode, re_count, mixup, cutmix, mixup_prob, mixup_switch_prob,
                 mixup_mode, label_smoothing, sampler, class_fraction, num_workers,
                 skip_bad_files, cache, cache_dir, folds, fold, *, seed: int, pin_memory: bool = False,
                 model_name: str = "cnn") -> DataBundle:
    """root/<class name>/**/<image>: torchvision's ImageFolder layout; hidden folders are not classes."""
    settings = pipeline_settings(locals(), "root", "val_root")
    paths, labels, class_names = images.scan_class_folders(root, "data.root")
    paths, labels, facts = checked_files(paths, labels, skip_bad_files, f"data.root={root}", cache_dir)
    missing = sorted(set(class_names) - set(labels))
    if missing:
        raise UserError(f"class folder(s) {', '.join(missing)} of data.root={root} have no readable image left")
    val = None
    if val_root is not None:
        val_paths, val_labels, _ = images.scan_class_folders(val_root, "data.val_root", class_names)
        *val, val_facts = checked_files(val_paths, val_labels, skip_bad_files, f"data.val_root={val_root}", cache_dir)
        facts.update(val_facts)
    ids = [os.path.relpath(path, root) for path in paths]
    return image_bundle(paths, labels, val, class_names, source=f"data.root={root}", val_key="data.val_root",
                        facts=facts, ids=ids, groups=None, **settings)


@DATASETS.register("csv")
def csv(csv: str, image_dir: Optional[str], path_column: str, label_column: str, path_suffix: str,
        val_csv: Optional[str], batch_size: int, val_fraction: float, channels: int,
        image_size, mean, std, interpolation, crop_pct, augment,
        scale, ratio, hflip, vflip, color_jitter, auto_augment,
        re_prob, re_mode, re_count, mixup, cutmix, mixup_prob, mixup_switch_prob,
        mixup_mode, label_smoothing, sampler, class_fraction, num_workers,
        skip_bad_files, cache, cache_dir, folds, fold, group_column, *, seed: int, pin_memory: bool = False,
        model_name: str = "cnn") -> DataBundle:
    """A CSV with a column of image paths and a column of labels (strings or integers)."""
    settings = pipeline_settings(locals(), "csv", "image_dir", "path_column", "label_column", "path_suffix", "val_csv",
                                 "group_column")
    listed, labels, names = images.scan_csv(csv, image_dir, path_column, label_column, path_suffix, "data.csv")
    paths, labels, facts = checked_files(listed, labels, skip_bad_files, f"data.csv={csv}", cache_dir)
    name_of = dict(zip(listed, names))
    groups = None if group_column is None else csv_groups(csv, group_column, paths, listed)
    class_names = images.sorted_class_names(labels)
    val = None
    if val_csv is not None:
        val_paths, val_labels, _ = images.scan_csv(val_csv, image_dir, path_column, label_column, path_suffix, "data.val_csv")
        unseen = sorted(set(val_labels) - set(class_names))
        if unseen:
            raise UserError(
                f"data.val_csv={val_csv} has labels that are not in the training data: {', '.join(unseen[:20])}; "
                f"training classes: {', '.join(class_names)}"
            )
        *val, val_facts = checked_files(val_paths, val_labels, skip_bad_files, f"data.val_csv={val_csv}", cache_dir)
        facts.update(val_facts)
    return image_bundle(paths, labels, val, class_names, source=f"data.csv={csv}", val_key="data.val_csv",
                        facts=facts, ids=[name_of[path] for path in paths], groups=groups, **settings)


def pipeline_settings(arguments: Dict[str, Any], *own_keys: str) -> Dict[str, Any]:
    """A builder's arguments less those that only say where its files are: what image_bundle takes.
    Settings that cost nothing to check are checked here, before the files are."""
    image_cache.require_mode(arguments["cache"])
    recipe_named(arguments["augment"])
    check_re_count(arguments["re_count"])
    return {key: value for key, value in arguments.items() if key not in own_keys}


def image_bundle(paths: List[str], labels: List[str], val: Optional[tuple], class_names: List[str], *, source: str, val_key: str,
                 seed: int, pin_memory: bool, model_name: str, channels: int, batch_size: int, val_fraction: float,
                 class_fraction, sampler: str, num_workers, skip_bad_files: bool, mixup, cutmix, mixup_prob,
                 mixup_switch_prob, mixup_mode, label_smoothing, image_size, mean, std, interpolation, crop_pct,
                 cache: str, cache_dir: Optional[str], facts, folds: Optional[int], fold: Optional[int],
                 ids: List[str], groups: Optional[List[str]], **augmentation) -> DataBundle:
    """Subsample, split, and wrap checked image files in transforms and loaders. `augmentation`:
    the keyword arguments of trainer.data.transforms.train_transform (augment, scale, hflip, ...).
    `facts`: path -> (bytes, mtime, width, height) of the checked files (data/file_checks.py). `ids`: what names
    each of `paths` in oof_predictions.csv; `groups`: each one's group, kept in one fold (data.group_column)."""
    if not paths:
        raise UserError(f"{source}: no readable image is left")
    spec = resolve_input(model_name, channels, image_size, mean, std, interpolation, crop_pct)
    recipe = choose_recipe(augmentation.pop("augment"), spec["image_size"], augmentation["auto_augment"], augmentation["re_prob"])
    augmentation["hflip"] = recipe_hflip(recipe, augmentation["hflip"])
    check_augmentation(**augmentation)
    eval_tf = eval_transform(spec)
    in_batches = recipe == "imagenet" and imagenet_in_batches(augmentation["auto_augment"])
    if recipe in BATCHED:
        train_tf, train_size = pixels_transform(spec), decode_size(dict(spec, crop_pct=1.0))
    elif in_batches:  # the transform (a canvas) once the training images' sizes are known, below
        train_tf, train_size = None, canvas_size(spec["image_size"], augmentation["scale"])
    elif recipe == "imagenet":
        train_tf, train_size = train_transform(spec, **augmentation), decode_size(spec, augmentation["scale"])
    else:
        train_tf, train_size = eval_tf, decode_size(spec)
    index = {name: i for i, name in enumerate(class_names)}
    paths, targets = np.asarray(paths, dtype=object), np.asarray([index[label] for label in labels], dtype=np.int64)
    kept = subsample_classes(targets, class_names, class_fraction, seed)
    paths, targets, ids = paths[kept], targets[kept], np.asarray(ids, dtype=object)[kept]
    val_ids = None
    if val is None:
        if folds is None:
            require_two_per_class(targets, class_names, val_fraction, f", raise data.class_fraction, or give a validation set with {val_key}")
        train_idx, val_idx = split(targets, class_names, val_fraction, folds, fold, seed,
                                   None if groups is None else [groups[i] for i in kept])
        train = (paths[train_idx], targets[train_idx])
        val = (paths[val_idx], targets[val_idx])
        val_ids = list(ids[val_idx])
    else:
        train = (paths, targets)
        val = (np.asarray(val[0], dtype=object), np.asarray([index[label] for label in val[1]], dtype=np.int64))
    mix = build_mixup(len(class_names), batch_size, mixup, cutmix, mixup_prob, mixup_switch_prob, mixup_mode, label_smoothing)
    shift_pad = max(1, spec["image_size"] // BATCHED[recipe]) if recipe in BATCHED else None
    crop, erasing = None, None
    if in_batches:
        widths, heights = images.decoded_sizes_of(train[0], facts, train_size, read_missing=True)
        sizes = torch.from_numpy(np.stack([widths, heights], axis=1).astype(np.int64))
        canvas = canvas_size(spec["image_size"], augmentation["scale"], int(sizes.max()) if len(sizes) else None)
        train_tf = CanvasTransform(canvas, spec["interpolation"])
        crop = RandomResizedCrops(spec["image_size"], augmentation["scale"], augmentation["ratio"], sizes)
        if augmentation["re_prob"] > 0:
            erasing = KeyedErasing(augmentation["re_prob"], augmentation["re_mode"], augmentation["re_count"])
        log.info(f"data.augment=imagenet: in batches on the training device (random-resized crop by roi_align, flips, "
                 f"colour jitter, normalisation{', random erasing' if erasing else ''}); the loader only decodes "
                 f"each training image and stretches it to a {canvas} x {canvas} uint8 canvas (kept in the "
                 f"decoded-image cache when it is on)")
    elif recipe == "imagenet":
        log.info(f"data.augment=imagenet: per image in the loader (timm's transforms), because "
                 f"data.auto_augment={augmentation['auto_augment']} is set: its policies have no batched form")
    batch_transform = BatchTransform(seed, shift_pad, augmentation["hflip"], augmentation["vflip"], spec["mean"],
                                     spec["std"], mix, resized_crop=crop,
                                     color_jitter=augmentation["color_jitter"] if in_batches else 0.0, erasing=erasing)
    val_size, fit = decode_size(spec), spec["interpolation"]
    # the training images are stored as the loader hands them on (uint8: a batched recipe's pixels at the input
    # size, the batched imagenet recipe's canvases) and, once all are kept, gathered in whole batches
    pixel_side = spec["image_size"] if recipe in BATCHED else canvas if in_batches else None
    stores = image_cache.build_stores(cache, cache_dir, [(train[0], train_size, pixel_side), (val[0], val_size)], facts,
                                      channels, fit)
    train_set = images.ImageFiles(train[0], train[1], train_tf, channels, skip_bad_files, decode_size=train_size,
                                  fit=fit, cache=stores[0])
    val_set = images.ImageFiles(val[0], val[1], eval_tf, channels, skip_bad_files, decode_size=val_size, fit=fit, cache=stores[1])
    train_loader, val_loader = make_loaders(
        train_set, val_set, batch_size, num_workers, seed, pin_memory, sampler=sampler, train_labels=train[1],
        drop_last=mix is not None, loader_class=ImageLoader, random_transforms=recipe == "imagenet" and not in_batches,
    )
    log.info(
        f"data: {len(train_set)} training and {len(val_set)} validation images of {len(class_names)} classes "
        f"from {source}; input {channels}x{spec['image_size']}x{spec['image_size']}"
    )
    return DataBundle(train_loader, val_loader, list(class_names), channels, train[1], batch_transform=batch_transform,
                      val_ids=val_ids)
