"""Randomness that depends only on where the run is, not on how many draws came before.

Every random choice of a run is a function of its position: the epoch's order of the training set
from (seed, epoch); each sample's augmentation from (seed, epoch, position in the epoch's order);
anything drawn per process from the rank as well. A position's draws are made by a counter-based
hash (splitmix64), so they come out the same in any loader worker, any number of processes, and
after a resume at any step, and a batch of them is drawn in one vectorised pass.

    key = position_key(seed, epoch, position)          # one sample: an int in [0, 2**63)
    keys = position_keys(seed, epoch, positions)       # a batch: an int64 tensor
    u = uniforms(keys, stream=3)                       # one float64 in [0, 1) per key, per stream
"""

import random
from typing import Sequence, Union

import numpy as np
import torch

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _mix(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers that scatters neighbouring inputs."""
    x = (x + _GOLDEN) & _MASK
    x = ((x ^ (x >> 30)) * _M1) & _MASK
    x = ((x ^ (x >> 27)) * _M2) & _MASK
    return x ^ (x >> 31)


def position_key(*parts: int) -> int:
    """A key in [0, 2**63) for a position given as integers, e.g. (seed, epoch, position) or (seed, epoch, batch, rank)."""
    x = 0
    for part in parts:
        x = _mix(x ^ (int(part) & _MASK))
    return x >> 1


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 tensors holding 64-bit unsigned values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix_tensor(x: torch.Tensor) -> torch.Tensor:
    # int64 arithmetic wraps around in torch, as uint64 arithmetic does: the same bits as _mix
    x = x + _signed(_GOLDEN)
    x = (x ^ _shift_right(x, 30)) * _signed(_M1)
    x = (x ^ _shift_right(x, 27)) * _signed(_M2)
    return x ^ _shift_right(x, 31)


def position_keys(*parts: Union[int, Sequence[int], torch.Tensor]) -> torch.Tensor:
    """`position_key` for many positions at once: each part an int or a 1-d tensor (broadcast); int64 keys."""
    x = torch.zeros((), dtype=torch.int64)
    for part in parts:
        part = torch.as_tensor(part, dtype=torch.int64) if not isinstance(part, int) else torch.tensor(_signed(part & _MASK))
        x = _mix_tensor(x ^ part)
    return _shift_right(x, 1)


def uniforms(keys: torch.Tensor, stream: int = 0) -> torch.Tensor:
    """One float64 in [0, 1) per key for draw number `stream` of it: independent across keys and streams."""
    bits = _mix_tensor(keys.to(torch.int64) ^ _signed(position_key(stream)))
    return _shift_right(bits, 11).to(torch.float64) / float(1 << 53)


def seed_for(key: int) -> None:
    """Seed torch, numpy and Python's random from one position's key: what a per-sample transform draws."""
    torch.manual_seed(key)
    np.random.seed(key % 2**32)
    random.seed(key)
