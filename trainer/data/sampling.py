"""The training order: every epoch's order of the training set, split into global batches and shared
between processes, and the per-sample seeding of random transforms, all from where the run is.

    order of epoch e      torch.Generator seeded with position_key(seed, e): a permutation (data.sampler=random)
                          or draws with replacement weighted by 1 / class count (data.sampler=balanced)
    global batch g        epoch positions [g*B, (g+1)*B), B = data.batch_size x processes (batch_size is per process)
    rank r's batch g      a contiguous slice of global batch g: the same samples however many processes share it
    sample at position p  its transforms draw from position_key(seed, e, p) (as trainer.data.positions.seed_for seeds)

Nothing depends on how many draws came before, so loader workers, processes and the point a run was
resumed at change nothing. The DataLoader gets `TrainBatches` as its batch_sampler and the training set
wrapped in `PositionedSamples`; the sampler's items are (index, epoch, position).

The last global batch of an epoch may be partial (dropped with drop_last, as mixup needs): it is split
across ranks as evenly as contiguous slices allow, and `batch_sizes` / `global_batch_sizes` let the
engine weigh each rank's mean loss by its share of the global batch (trainer.data.batches), so the
gradient DDP averages is the mean over the global batch's samples. A rank whose slice is empty (fewer
samples than processes) still loads one sample, whose loss is weighted 0: it must take part in DDP's
all-reduce; its batch size is 0 and it counts in no total.
"""

import random
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from trainer.data.positions import position_key
from trainer.errors import UserError

SAMPLERS = ("random", "balanced")


def epoch_order(size: int, seed: int, epoch: int, kind: str = "random", labels: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The dataset indices of epoch `epoch`'s positions 0 .. size-1: a function of (seed, epoch) alone."""
    generator = torch.Generator().manual_seed(position_key(seed, epoch))
    if kind == "balanced":  # every class equally often on average, with replacement
        labels = np.asarray(labels)
        weights = 1.0 / np.bincount(labels)[labels]
        return torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), size, replacement=True, generator=generator)
    return torch.randperm(size, generator=generator)


class TrainBatches(Sampler):
    """The batch sampler of the training loader: this rank's share of every global batch of the epoch.

    API: set_epoch(epoch); skip_batches(n) (the next iteration starts at this rank's batch n, without
    touching the earlier samples); batch_positions(i) (the epoch positions this rank loads for batch i);
    batch_sizes() / global_batch_sizes() (real samples of each batch: this rank's / all ranks'); len()
    in batches, the same on every rank.
    """

    def __init__(self, size: int, batch_size: int, seed: int, kind: str = "random", labels: Optional[Sequence[int]] = None,
                 drop_last: bool = False, world_size: int = 1, rank: int = 0):
        if kind not in SAMPLERS:
            raise UserError(f"data.sampler={kind} is not valid; use one of: {', '.join(SAMPLERS)}")
        if kind == "balanced" and labels is None:
            raise ValueError("data.sampler=balanced needs the training labels")
        self.size, self.batch_size, self.seed, self.kind = size, batch_size, seed, kind
        self.labels = None if labels is None else np.asarray(labels)
        self.drop_last, self.world_size, self.rank = drop_last, world_size, rank
        self.global_batch = batch_size * world_size
        if drop_last and size < self.global_batch:
            raise UserError(
                f"the training set has {size} images, fewer than one global batch (data.batch_size={batch_size}"
                f"{f' x {world_size} processes' if world_size > 1 else ''}), and mixup/cutmix drop the last partial "
                "batch: lower data.batch_size"
            )
        self.epoch = 0
        self._skip = 0
        self._order: Optional[Tuple[int, torch.Tensor]] = None  # (epoch, its order), drawn once per epoch

    def shard(self, world_size: int, rank: int) -> "TrainBatches":
        """The same order, for rank `rank` of `world_size` processes (each loading batch_size per batch)."""
        return TrainBatches(self.size, self.batch_size, self.seed, self.kind, self.labels, self.drop_last, world_size, rank)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, n: int) -> None:
        """The next iteration (of this epoch) starts at this rank's batch n; batches before it are not loaded."""
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot skip {n} of {len(self)} batches")
        self._skip = n

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.global_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self) -> torch.Tensor:
        """This epoch's dataset index at every position."""
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, epoch_order(self.size, self.seed, self.epoch, self.kind, self.labels))
        return self._order[1]

    def _slice(self, i: int) -> Tuple[int, int]:
        """[start, stop) epoch positions of this rank's part of global batch i (contiguous; empty for a rank
        left without samples in a last batch smaller than the number of processes)."""
        start = i * self.global_batch
        n = min(self.global_batch, self.size - start)
        return start + (self.rank * n) // self.world_size, start + ((self.rank + 1) * n) // self.world_size

    def batch_positions(self, i: int) -> torch.Tensor:
        """The epoch positions this rank loads for its batch i: its slice, or, where that is empty, the global
        batch's first position (loaded only to join the all-reduce; its loss is weighted 0)."""
        start, stop = self._slice(i)
        if start == stop:
            return torch.tensor([i * self.global_batch])
        return torch.arange(start, stop)

    def batch_sizes(self) -> List[int]:
        """Real samples in each of this rank's batches (0 where it loads only a stand-in)."""
        return [stop - start for start, stop in map(self._slice, range(len(self)))]

    def global_batch_sizes(self) -> List[int]:
        return [min(self.global_batch, self.size - i * self.global_batch) for i in range(len(self))]

    def __iter__(self) -> Iterator[List[Tuple[int, int, int]]]:
        order, epoch = self.order(), self.epoch
        first, self._skip = self._skip, 0
        for i in range(first, len(self)):
            positions = self.batch_positions(i)
            yield [(int(index), epoch, int(position)) for index, position in zip(order[positions], positions)]


def seed_streams(key: int) -> None:
    """What trainer.data.positions.seed_for seeds, on the CPU: the same draws from torch, numpy and Python's
    random. seed_for's torch.manual_seed also seeds every accelerator's generator, which costs about 0.7 ms a
    call (more than decoding a small image) and which no transform on the CPU draws from."""
    torch.default_generator.manual_seed(key)
    np.random.seed(key % 2**32)
    random.seed(key)


class PositionedSamples(Dataset):
    """dataset[index] for an (index, epoch, position) item, with every random draw of its transforms seeded
    from position_key(seed, epoch, position): the same in any loader worker and in the main process.

    In a worker the global streams are simply reseeded (nothing else draws there); in the main process
    (data.num_workers=0) they are restored after each batch (`__getitems__`: saving numpy's state costs
    about 0.1 ms, once a batch, not once a sample), so the training step's own draws (dropout, mixup) do
    not depend on whether samples were loaded in this process. `random_transforms=False` (digits: tensors
    in memory, no transform) skips the seeding.
    """

    def __init__(self, dataset: Dataset, seed: int, random_transforms: bool = True):
        self.dataset, self.seed, self.random_transforms = dataset, seed, random_transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, item: Tuple[int, int, int]):
        index, epoch, position = item
        if self.random_transforms:
            seed_streams(position_key(self.seed, epoch, position))
        return self.dataset[index]

    def __getitem__(self, item: Tuple[int, int, int]):
        return self.__getitems__([item])[0]

    def __getitems__(self, items: Sequence[Tuple[int, int, int]]) -> list:
        """A batch's samples (the DataLoader's fetcher asks for a whole batch at once)."""
        if get_worker_info() is not None or not self.random_transforms:
            return [self._load(item) for item in items]
        python, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            return [self._load(item) for item in items]
        finally:
            random.setstate(python)
            np.random.set_state(numpy_state)
            torch.set_rng_state(torch_state)

    def __getattr__(self, name: str):  # transform, paths, targets... of the wrapped dataset
        if name.startswith("__") or name == "dataset":  # not yet set while unpickling in a worker
            raise AttributeError(name)
        return getattr(self.dataset, name)


def training_order(loader) -> Optional[TrainBatches]:
    """The TrainBatches of a training loader (or of the loader a LimitedLoader wraps), or None (FixedBatches)."""
    sampler = getattr(loader, "batch_sampler", None)
    return sampler if isinstance(sampler, TrainBatches) else None
