"""The training order (trainer.data.sampling): a function of (seed, epoch, position) alone, the same global
batches for any number of processes, exact loss weights for uneven last batches, and resuming inside an epoch."""

import numpy as np
import pytest
import torch

from trainer.data.batches import accumulation_scales
from trainer.data.positions import position_key
from trainer.data.sampling import PositionedSamples, TrainBatches, epoch_order
from trainer.errors import UserError


def global_batches(size, batch_size, world_size, epoch, **kwargs):
    """Every global batch of an epoch as the list of (index, position) the ranks load together, real samples only."""
    ranks = [TrainBatches(size, batch_size, seed=7, **kwargs).shard(world_size, r) for r in range(world_size)]
    for rank in ranks:
        rank.set_epoch(epoch)
    assert len({len(rank) for rank in ranks}) == 1  # every rank takes the same number of steps
    batches = []
    for per_rank, sizes in zip(zip(*ranks), zip(*(rank.batch_sizes() for rank in ranks))):
        batches.append([(i, p) for batch, n in zip(per_rank, sizes) for i, _, p in batch[:n]])
    return batches


@pytest.mark.parametrize("size", [100, 96, 65])
def test_one_and_two_processes_share_the_same_global_batches(size):
    one = global_batches(size, 64, 1, epoch=3)
    two = global_batches(size, 32, 2, epoch=3)
    assert one == two
    # an epoch covers every sample once, in the order of (seed, epoch) alone: an independent reference
    reference = torch.randperm(size, generator=torch.Generator().manual_seed(position_key(7, 3))).tolist()
    assert [i for batch in one for i, _ in batch] == reference
    assert [p for batch in one for _, p in batch] == list(range(size))
    assert global_batches(size, 64, 1, epoch=4) != one


def test_a_last_batch_smaller_than_the_processes_leaves_a_rank_a_stand_in():
    # 65 samples, global batch 64 on 2 ranks: the last global batch has 1 sample
    ranks = [TrainBatches(65, 32, seed=0).shard(2, r) for r in range(2)]
    assert ranks[0].batch_sizes() == [32, 0] and ranks[1].batch_sizes() == [32, 1]
    assert ranks[0].global_batch_sizes() == [64, 1]
    stand_in = list(ranks[0])[1]
    assert len(stand_in) == 1  # it still loads one sample, to join the all-reduce
    assert ranks[0].batch_positions(1).tolist() == [64] and ranks[1].batch_positions(1).tolist() == [64]
    # its loss weighs nothing; the other rank's weighs twice its mean, as DDP halves the sum of gradients
    scales = [accumulation_scales(r.batch_sizes(), 2, 1, r.global_batch_sizes(), 2) for r in ranks]
    assert scales == [[1.0, 0.0], [1.0, 2.0]]


def test_loss_weights_make_the_gradient_the_mean_over_the_global_batch():
    # a 2-sample-per-rank last batch split 3/2: with weights w_r, the DDP average (sum_r w_r mean_r) / 2 must be
    # the plain mean over the 5 samples, for any per-sample losses
    ranks = [TrainBatches(13, 4, seed=0).shard(2, r) for r in range(2)]
    losses = torch.arange(13, dtype=torch.float64) ** 1.5
    for accumulate in (1, 2):
        scales = [accumulation_scales(r.batch_sizes(), len(r), accumulate, r.global_batch_sizes(), 2) for r in ranks]
        windows = [range(s, min(s + accumulate, len(ranks[0]))) for s in range(0, len(ranks[0]), accumulate)]
        for window in windows:
            ddp = sum(scales[k][i] * losses[ranks[k].batch_positions(i)][: ranks[k].batch_sizes()[i]].mean()
                      for k in range(2) for i in window if ranks[k].batch_sizes()[i]) / 2
            positions = torch.cat([torch.arange(i * 8, min((i + 1) * 8, 13)) for i in window])
            assert float(ddp) == pytest.approx(float(losses[positions].mean()), rel=1e-12)


def test_drop_last_drops_the_partial_global_batch():
    order = TrainBatches(100, 32, seed=0, drop_last=True).shard(2, 1)
    assert len(order) == 1 and order.batch_sizes() == [32]
    with pytest.raises(UserError, match="fewer than one global batch .*data.batch_size=32 x 2 processes"):
        TrainBatches(60, 32, seed=0, drop_last=True).shard(2, 0)


def test_skip_batches_starts_the_next_iteration_there_once():
    order = TrainBatches(50, 8, seed=1).shard(2, 1)
    order.set_epoch(2)
    whole = list(order)
    order.skip_batches(2)
    assert list(order) == whole[2:]
    assert list(order) == whole  # one iteration only
    order.skip_batches(len(order))
    assert list(order) == []
    for i, batch in enumerate(whole):
        assert [p for _, _, p in batch] == order.batch_positions(i).tolist()
        assert all(e == 2 for _, e, _ in batch)


def test_balanced_order_draws_with_replacement_by_inverse_class_frequency():
    labels = np.array([0] * 90 + [1] * 10)
    order = TrainBatches(100, 10, seed=3, kind="balanced", labels=labels)
    drawn = []
    for epoch in range(1, 41):
        order.set_epoch(epoch)
        drawn += [i for batch in order for i, _, _ in batch]
    assert len(drawn) == 4000
    assert np.bincount(labels[drawn]) / len(drawn) == pytest.approx([0.5, 0.5], abs=0.03)
    assert len(set(drawn[:100])) < 100  # with replacement
    one = global_batches(100, 10, 1, epoch=5, kind="balanced", labels=labels)
    assert one == global_batches(100, 5, 2, epoch=5, kind="balanced", labels=labels)
    assert [i for b in one for i, _ in b] == epoch_order(100, 7, 5, "balanced", labels).tolist()


class Draws(torch.utils.data.Dataset):
    """A 'transform' that draws from every global stream, as timm's do."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        import random

        return torch.tensor([index, random.random(), np.random.rand(), torch.rand(()).item()], dtype=torch.float64)


def test_a_sample_draws_from_its_position_and_leaves_the_main_process_streams_alone():
    data = PositionedSamples(Draws(), seed=5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = data[(3, 1, 17)]
    assert torch.equal(torch.get_rng_state(), before)  # dropout and mixup draws do not depend on loading here
    assert torch.equal(data[(3, 1, 17)], first)
    assert not torch.equal(data[(3, 1, 18)], first) and not torch.equal(data[(3, 2, 17)], first)
    # in loader workers, however many, each sample draws the same
    order = TrainBatches(10, 3, seed=5)
    order.set_epoch(1)
    loaded = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(data, batch_sampler=order, num_workers=workers)
        loaded[workers] = torch.cat(list(loader))
    assert torch.equal(loaded[0], loaded[2])


def test_seed_streams_draws_as_seed_for_does():
    import random

    from trainer.data.positions import seed_for
    from trainer.data.sampling import seed_streams

    key = position_key(3, 2, 41)
    drawn = []
    for seed in (seed_for, seed_streams):
        seed(key)
        drawn.append((random.random(), np.random.rand(), torch.rand(3).tolist()))
    assert drawn[0] == drawn[1]
