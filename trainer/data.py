"""Datasets and loaders. Each dataset builder returns a DataBundle: loaders plus what the model needs to know."""

from dataclasses import dataclass
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from trainer.errors import UserError
from trainer.registry import Registry

DATASETS = Registry("dataset")


@dataclass
class DataBundle:
    train_loader: DataLoader
    val_loader: DataLoader
    class_names: List[str]
    in_chans: int
    train_labels: np.ndarray  # for class weights and samplers

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


def make_loaders(train_set, val_set, batch_size: int, num_workers: int, seed: int, pin_memory: bool):
    if batch_size < 1:
        raise UserError(f"data.batch_size={batch_size} is not valid; use an integer >= 1")
    if num_workers < 0:
        raise UserError(f"data.num_workers={num_workers} is not valid; use 0 (load in the main process) or more")
    generator = torch.Generator().manual_seed(seed)
    common = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator, **common)
    val = DataLoader(val_set, batch_size=batch_size, shuffle=False, **common)
    return train, val


@DATASETS.register("digits")
def digits(batch_size: int = 64, val_fraction: float = 0.2, image_size: int = 8, num_workers: int = 0, *, seed: int, pin_memory: bool = False) -> DataBundle:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): no download."""
    from sklearn.datasets import load_digits

    if image_size < 8:
        raise UserError(f"data.image_size={image_size} is not valid for digits; use 8 or more")
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = bunch.target.astype(np.int64)
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    targets = torch.from_numpy(labels)
    train_set = TensorDataset(images[train_idx], targets[train_idx])
    val_set = TensorDataset(images[val_idx], targets[val_idx])
    train_loader, val_loader = make_loaders(train_set, val_set, batch_size, num_workers, seed, pin_memory)
    return DataBundle(train_loader, val_loader, [str(c) for c in bunch.target_names], 1, labels[train_idx.numpy()])
