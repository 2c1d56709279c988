"""StepTotals: an epoch's train loss and accuracy from per-step references, reduced once."""

import math

import pytest
import torch

from trainer.engine.step_totals import StepTotals


def random_epoch(steps, batch, classes, seed=0, last=None):
    g = torch.Generator().manual_seed(seed)
    sizes = [batch] * (steps - 1) + [last or batch]
    return [(torch.rand((), generator=g) * 3, torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,), generator=g))
            for n in sizes]


@pytest.mark.parametrize("chunk_elements", [1, 50, 1 << 20])  # every step, every few steps, once per epoch
def test_totals_equal_a_direct_computation(chunk_elements):
    epoch = random_epoch(steps=9, batch=8, classes=5, last=3)
    totals = StepTotals(count_correct=True, chunk_elements=chunk_elements)
    for loss, outputs, targets in epoch:
        totals.add(loss, outputs, targets)
    step_losses = totals.step_losses(torch.device("cpu"))
    weighted, finite_samples, samples, correct, non_finite = totals.epoch_totals(step_losses).tolist()
    sizes = [len(targets) for _, _, targets in epoch]
    assert samples == finite_samples == sum(sizes) == 67
    assert weighted / samples == pytest.approx(sum(float(loss) * n for (loss, _, _), n in zip(epoch, sizes)) / sum(sizes))
    assert correct == sum(int((outputs.argmax(1) == targets).sum()) for _, outputs, targets in epoch)
    assert non_finite == 0 and totals.first_non_finite(step_losses) is None


def test_non_finite_steps_are_left_out_of_the_loss_and_found():
    epoch = random_epoch(steps=5, batch=4, classes=3)
    epoch[2] = (torch.tensor(float("nan")),) + epoch[2][1:]
    epoch[4] = (torch.tensor(float("inf")),) + epoch[4][1:]
    totals = StepTotals(count_correct=False)
    for step in epoch:
        totals.add(*step)
    step_losses = totals.step_losses(torch.device("cpu"))
    weighted, finite_samples, samples, correct, non_finite = totals.epoch_totals(step_losses).tolist()
    assert math.isfinite(weighted)
    assert weighted / finite_samples == pytest.approx(sum(float(epoch[i][0]) for i in (0, 1, 3)) / 3)
    assert (finite_samples, samples, correct, non_finite) == (12, 20, 0, 2)
    assert totals.first_non_finite(step_losses) == 3


def test_outputs_are_not_kept_past_a_chunk():
    totals = StepTotals(count_correct=True, chunk_elements=100)
    for loss, outputs, targets in random_epoch(steps=20, batch=10, classes=4):  # 40 elements a step
        totals.add(loss, outputs, targets)
        assert sum(o.numel() for o in totals._outputs) < 100
