"""Many processes through torchrun: process group, sharded loaders, gathered predictions.

`torchrun --nproc_per_node=N -m trainer ...` starts N copies of the same command; torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...) tells each its place. Backend: nccl
when the processes have GPUs, gloo on CPUs. Rank 0 alone writes files and draws progress.
"""

import datetime
import os
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from trainer.data.sampling import training_order
from trainer.engine.place import Place, current_place
from trainer.errors import UserError


def init_process_group() -> Place:
    """Join torchrun's process group once (before Hydra, so all ranks can agree on one run directory)."""
    place = current_place()
    if place.launched and not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(place.local_rank)
        backend, store = "nccl" if use_cuda else "gloo", attempt_store(place)
        if store is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=store, rank=place.rank, world_size=place.world_size)
    return place


def attempt_store(place: Place):
    """The store the processes of this torchrun attempt meet in, or None (torch's default).

    Workers share torchrun's own store, one for all attempts: after `--max-restarts` restarted the group, a
    process could read the address another one published in the attempt before (dead by now) and fail with
    "Gloo connectFullMesh failed ... Connection refused". A prefix per attempt keeps each attempt's keys apart."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), place.world_size, is_master=False,
                          timeout=datetime.timedelta(minutes=30))
    return dist.PrefixStore(f"trainer/attempt_{attempt}", store)


def broadcast_from_main(value):
    """rank 0's value on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def close_process_group() -> None:
    """Leave the process group before the interpreter exits. Left to the interpreter's teardown, gloo's
    threads can be destroyed while still joinable, and the process aborts (`terminate called without an
    active exception`) after its work is done; torchrun then stops the other ranks mid-report."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one process's own random draws (dropout, mixup; not the data order or augmentation, which come
    from positions: trainer.data.sampling).

    Rank 0 keeps `seed` itself, so a single-process run draws what it always drew; any other rank gets
    a seed derived from (seed, rank) alone, so each process draws differently yet reproducibly.
    """
    if rank == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint32)[0])


def average_buffers(place: Place, *modules: Optional[nn.Module]) -> None:
    """Make every rank's floating buffers (BatchNorm running statistics) of `modules` (None: skipped) their
    mean across ranks.

    DDP keeps the parameters equal but each process updates its buffers from its own batches, so without
    this the ranks would validate different models and none of them would be the one rank 0 saves.
    Integer buffers (num_batches_tracked) count the same steps on every rank and are left alone.
    """
    if place.world_size == 1 or not dist.is_initialized():
        return
    buffers = [b for module in modules if module is not None for b in module.buffers() if b.is_floating_point()]
    # one all-reduce per dtype and device, not one per buffer; sorted, so that every rank reduces in one order
    for kind in sorted({(str(b.dtype), str(b.device)) for b in buffers}):
        group = [b for b in buffers if (str(b.dtype), str(b.device)) == kind]
        flat = torch.cat([b.detach().reshape(-1) for b in group])
        dist.all_reduce(flat)
        flat /= place.world_size
        offset = 0
        for b in group:
            b.detach().copy_(flat[offset: offset + b.numel()].view_as(b))
            offset += b.numel()


def device_for(place: Place, requested: torch.device) -> torch.device:
    if place.launched and requested.type == "cuda":
        return torch.device("cuda", place.local_rank)
    return requested


def shard_loaders(train_loader: DataLoader, val_loader: DataLoader, place: Place, seed: int):
    """Each rank trains on its slice of every global batch and validates on every world_size-th sample.

    Training: the same order on every rank (trainer.data.sampling.TrainBatches, from the seed and the epoch);
    rank r loads a contiguous slice of each global batch of batch_size x world_size positions, so the
    global batches, and each sample's augmentation (from its position), are those of one process with the
    global batch. Validation is split without padding, so gathering the ranks' predictions covers each
    sample exactly once. The loaders keep their class (ImageLoader names unreadable files).
    """
    order = training_order(train_loader)
    if order is None:
        raise UserError(f"the training loader's sampler {type(train_loader.batch_sampler).__name__} cannot be split "
                        "across processes")
    common = dict(
        num_workers=train_loader.num_workers,
        pin_memory=train_loader.pin_memory,
        persistent_workers=train_loader.persistent_workers,
        worker_init_fn=train_loader.worker_init_fn,
        collate_fn=train_loader.collate_fn,
    )
    train = type(train_loader)(train_loader.dataset, batch_sampler=order.shard(place.world_size, place.rank),
                               generator=train_loader.generator, **common)
    val_indices = list(range(place.rank, len(val_loader.dataset), place.world_size))
    val = type(val_loader)(val_loader.dataset, sampler=val_indices, **dict(
        common, batch_size=val_loader.batch_size, num_workers=val_loader.num_workers,
        persistent_workers=val_loader.persistent_workers, worker_init_fn=val_loader.worker_init_fn))
    return train, val


def gather_in_order(tensor: torch.Tensor, place: Place) -> torch.Tensor:
    """Concatenate every rank's rows back into dataset order (rank r holds rows r, r+W, r+2W, ...)."""
    if place.world_size == 1 or not dist.is_initialized():
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(place.world_size)]
    dist.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in range(place.world_size)]
    dist.all_gather(parts, padded)
    total = int(sum(s.item() for s in sizes))
    ordered = torch.empty((total, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    for rank, (part, size) in enumerate(zip(parts, sizes)):
        ordered[rank::place.world_size] = part[: int(size.item())]
    return ordered


def all_gather_objects(value, place: Place) -> list:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if place.world_size == 1 or not dist.is_initialized():
        return [value]
    values = [None] * place.world_size
    dist.all_gather_object(values, value)
    return values


def all_reduce_sum(tensor: torch.Tensor, place: Optional[Place]) -> torch.Tensor:
    if place is not None and place.world_size > 1 and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
