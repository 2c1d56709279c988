"""Position-derived randomness: the vectorised keys and draws equal the one-at-a-time ones, and look uniform."""

import numpy as np
import torch

from trainer.data.positions import position_key, position_keys, uniforms


def test_batch_keys_equal_single_keys():
    positions = torch.arange(500)
    keys = position_keys(123, 4, positions)
    assert keys.tolist() == [position_key(123, 4, p) for p in range(500)]
    assert position_keys(2**62 + 5, 9, 31).item() == position_key(2**62 + 5, 9, 31)
    assert (keys >= 0).all()


def test_keys_depend_on_every_part():
    base = position_key(1, 2, 3)
    assert len({base, position_key(2, 2, 3), position_key(1, 3, 3), position_key(1, 2, 4), position_key(1, 2, 3, 0)}) == 5


def test_uniforms_are_uniform_and_independent_across_streams():
    keys = position_keys(7, 1, torch.arange(200_000))
    first, second = uniforms(keys, 0).numpy(), uniforms(keys, 1).numpy()
    assert first.min() >= 0 and first.max() < 1
    counts = np.histogram(first, bins=20, range=(0, 1))[0]
    expected = len(first) / 20
    assert ((counts - expected) ** 2 / expected).sum() < 45  # chi-square, 19 degrees of freedom: p < 1e-3 above 43.8
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.01
    assert abs(np.corrcoef(first[:-1], first[1:])[0, 1]) < 0.01
