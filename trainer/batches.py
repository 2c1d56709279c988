"""Batches ahead of time: the sizes a loader will yield, and the loader wrappers of the debugging controls
(fewer batches, or the same few batches over and over)."""

import math
from typing import Any, List, Optional

from trainer.errors import UserError


def batch_count(limit: Any, available: int, key: str) -> int:
    """An int is a number of batches; a float in (0, 1] is a share of them (at least one batch)."""
    if limit is None:
        return available
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        raise UserError(f"{key}={limit} is not valid; use an integer >= 1 (batches) or a float in (0, 1] (a share)")
    if isinstance(limit, float):
        if not 0 < limit <= 1:
            raise UserError(f"{key}={limit} is not valid; a share of the batches must be in (0, 1]")
        return max(1, math.floor(limit * available))
    if limit < 1:
        raise UserError(f"{key}={limit} is not valid; use an integer >= 1 (batches) or a float in (0, 1] (a share)")
    return min(limit, available)


def loader_batch_sizes(loader) -> Optional[List[int]]:
    """Sizes of the batches a loader will yield, when they can be known before iterating."""
    if hasattr(loader, "batch_sizes"):
        return loader.batch_sizes()
    batch_size = getattr(loader, "batch_size", None)
    sampler = getattr(loader, "sampler", None)
    if batch_size is None or sampler is None or not hasattr(sampler, "__len__"):
        return None
    full, rest = divmod(len(sampler), batch_size)
    sizes = [batch_size] * full + ([rest] if rest and not loader.drop_last else [])
    return sizes if len(sizes) == len(loader) else None


class LimitedLoader:
    """The first `count` batches of a loader, every epoch."""

    def __init__(self, loader, count: int):
        self.loader, self.count = loader, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.count:
                break
            yield batch

    def batch_sizes(self) -> Optional[List[int]]:
        sizes = loader_batch_sizes(self.loader)
        return None if sizes is None else sizes[: self.count]

    def __getattr__(self, name: str) -> Any:  # generator, dataset, sampler... of the wrapped loader
        return getattr(self.loader, name)


class FixedBatches:
    """The same first N batches of a loader, drawn once and replayed (for overfitting a few batches)."""

    def __init__(self, loader, count: int):
        self.batches = []
        for batch in loader:
            if len(self.batches) == count:
                break
            self.batches.append(batch)
        if len(self.batches) < count:
            raise UserError(f"trainer.overfit_batches={count} but the training data has only {len(self.batches)} batches")

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def batch_sizes(self) -> List[int]:
        return [len(batch[1]) for batch in self.batches]
