"""Batches ahead of time: the sizes a loader will yield (and so the exact accumulation scales), and the
loader wrappers of the debugging controls (fewer batches, or the same few batches over and over)."""

import math
from typing import Any, List, Optional, Sequence

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


def accumulation_scales(batch_sizes: Optional[Sequence[int]], num_batches: int, accumulate: int,
                        global_sizes: Optional[Sequence[int]] = None, world_size: int = 1) -> List[float]:
    """The factor each micro-batch's mean loss is multiplied by before backward().

    Micro-batches are grouped into windows of `accumulate` (the last window may be shorter). With the
    batch sizes known, each loss is weighted by its share of the window's samples, so a window's
    gradient equals that of one batch made of all its samples, the uneven last batch included.
    Under several processes (`global_sizes`: each batch's samples summed over the `world_size` ranks),
    the share is of the window's samples on all ranks, times world_size because DDP averages the
    ranks' gradients: full batches of equal shares keep 1, a rank's smaller share of a last batch less.
    """
    if batch_sizes is None or global_sizes is None:
        global_sizes, world_size = batch_sizes, 1
    scales = []
    for start in range(0, num_batches, accumulate):
        window = range(start, min(start + accumulate, num_batches))
        if batch_sizes is None:
            scales += [1.0 / len(window)] * len(window)
        else:
            total = sum(global_sizes[i] for i in window)
            scales += [world_size * batch_sizes[i] / total for i in window]
    return scales


def loader_batch_sizes(loader) -> Optional[List[int]]:
    """Real samples of the batches a loader will yield (on this process), when they can be known before iterating."""
    if hasattr(loader, "batch_sizes"):
        return loader.batch_sizes()
    if hasattr(getattr(loader, "batch_sampler", None), "batch_sizes"):  # trainer.data.sampling.TrainBatches
        return loader.batch_sampler.batch_sizes()
    batch_size = getattr(loader, "batch_size", None)
    sampler = getattr(loader, "sampler", None)
    if batch_size is None or sampler is None or not hasattr(sampler, "__len__"):
        return None
    full, rest = divmod(len(sampler), batch_size)
    sizes = [batch_size] * full + ([rest] if rest and not loader.drop_last else [])
    return sizes if len(sizes) == len(loader) else None


def loader_global_sizes(loader) -> Optional[List[int]]:
    """Samples of each batch summed over all processes, when the loader knows them (TrainBatches); else None."""
    if hasattr(loader, "global_batch_sizes"):
        return loader.global_batch_sizes()
    sampler = getattr(loader, "batch_sampler", None)
    return sampler.global_batch_sizes() if hasattr(sampler, "global_batch_sizes") else None


class LimitedLoader:
    """The first `count` batches of a loader, every epoch."""

    def __init__(self, loader, count: int):
        self.loader, self.count = loader, count
        self.start = 0  # the next iteration's first batch (a run resumed inside an epoch)

    def __len__(self) -> int:
        return self.count

    def skip_batches(self, n: int) -> None:
        """The next iteration starts at batch n, through the wrapped loader's sampler (nothing earlier is read)."""
        self.loader.batch_sampler.skip_batches(n)  # trainer.data.sampling.TrainBatches
        self.start = n

    def __iter__(self):
        start, self.start = self.start, 0
        for i, batch in enumerate(self.loader, start):
            if i >= self.count:
                break
            yield batch

    def batch_sizes(self) -> Optional[List[int]]:
        sizes = loader_batch_sizes(self.loader)
        return None if sizes is None else sizes[: self.count]

    def global_batch_sizes(self) -> Optional[List[int]]:
        sizes = loader_global_sizes(self.loader)
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

    def skip_batches(self, n: int) -> None:
        self.start = n

    def __iter__(self):
        start, self.start = getattr(self, "start", 0), 0
        return iter(self.batches[start:])

    def batch_sizes(self) -> List[int]:
        return [len(batch[1]) for batch in self.batches]
