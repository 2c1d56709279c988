"""DataLoaders: the training order (trainer.data.sampling: shuffled or class-balanced, from the seed and
the epoch), worker processes, pinned memory, and errors from worker processes that still name the file at fault."""

import os
import random
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer.data.images import UnreadableImage, message_of
from trainer.data.sampling import SAMPLERS, PositionedSamples, TrainBatches
from trainer.errors import UserError

def available_cpus() -> int:
    """CPU cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_processes() -> int:
    """Processes of this run on this machine: torchrun's LOCAL_WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_workers() -> int:
    """Loader workers of each process when data.num_workers is null: the cores this process may use,
    shared with the other processes of the run on this machine, less one for the process's own
    training loop (0, loading in the process itself, when that leaves none)."""
    return max(0, available_cpus() // local_processes() - 1)


def seed_worker(worker_id: int) -> None:
    """numpy and random in a worker follow torch's per-worker seed (base seed from the loader's
    generator + worker id). Training samples are seeded again each from its position (PositionedSamples)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ImageLoader(DataLoader):
    """A DataLoader that turns an unreadable image, also one met inside a worker process, into one
    UserError naming the file, instead of a worker's traceback.

    Once its dataset's pixel store holds every image (`all_stored`: a batched recipe, the first epoch
    done, trainer.data.image_cache), an epoch gathers each batch from the store in this process, in the
    batch sampler's order: the same batches the workers would collate, without per-image work, pickling
    or a worker competing with the training step for the cores."""

    def __iter__(self):
        all_stored = getattr(self.dataset, "all_stored", None)
        if self.batch_sampler is not None and all_stored is not None and all_stored():
            yield from self.stored_batches()
            return
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except UnreadableImage as err:
                message = message_of(err)
                # The re-raised exception and its traceback's frames form a reference cycle holding the
                # iterator; left to the garbage collector, its worker shutdown stalls for seconds.
                err.__traceback__ = None
                break
            yield batch
        # Outside the except block, so that no exception refers to the iterator: its workers stop now.
        del batches
        if self.persistent_workers:
            self._iterator = None
        raise UserError(message)

    def stored_batches(self):
        for items in self.batch_sampler:  # indices, or the training sampler's (index, epoch, position) items
            indices = [item[0] if isinstance(item, tuple) else item for item in items]
            images, targets = self.dataset.gather(indices)
            if self.pin_memory:
                images, targets = images.pin_memory(), targets.pin_memory()
            yield images, targets


def make_loaders(train_set, val_set, batch_size: int, num_workers: Optional[int], seed: int, pin_memory: bool,
                 sampler: str = "random", train_labels: Optional[np.ndarray] = None, drop_last: bool = False,
                 loader_class=DataLoader, random_transforms: bool = True):
    """Training and validation loaders. num_workers None means `default_workers()`. The training loader
    keeps its workers between epochs; the validation loader starts its own for each validation and ends
    them after it, so that no worker waits idle through training. random_transforms: whether the training
    set's samples draw anything (their draws are then seeded from their positions)."""
    if batch_size < 1:
        raise UserError(f"data.batch_size={batch_size} is not valid; use an integer >= 1")
    if num_workers is None:
        num_workers = default_workers()
    if num_workers < 0:
        raise UserError(f"data.num_workers={num_workers} is not valid; use 0 (load in the main process) or more")
    if sampler not in SAMPLERS:
        raise UserError(f"data.sampler={sampler} is not valid; use one of: {', '.join(SAMPLERS)}")
    common = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)
    if num_workers > 0:
        common["worker_init_fn"] = seed_worker
    # The order and each sample's transforms come from (seed, epoch, position) alone; the generator only keeps
    # the loader's own draw of a worker base seed (unused) off the global torch stream.
    order = TrainBatches(len(train_set), batch_size, seed, sampler, train_labels, drop_last)
    train = loader_class(PositionedSamples(train_set, seed, random_transforms), batch_sampler=order,
                         generator=torch.Generator().manual_seed(seed), **common)
    val = loader_class(val_set, batch_size=batch_size, shuffle=False, **dict(common, persistent_workers=False))
    return train, val


def stop_workers(*loaders) -> None:
    """End the persistent worker processes of these loaders (or of the loaders they wrap) now.

    Left alive, they are stopped by the interpreter's teardown, in whatever order it destroys things;
    at the end of a multi-process run that is also when the process group goes away.
    """
    for loader in loaders:
        while not isinstance(loader, DataLoader) and hasattr(loader, "loader"):  # LimitedLoader
            loader = loader.loader
        if isinstance(loader, DataLoader) and loader.persistent_workers:
            loader._iterator = None  # its only reference: the iterator's __del__ stops and joins the workers
