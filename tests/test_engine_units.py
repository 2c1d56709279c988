"""Gradient accumulation, optimizer-step counting and best-value logic of the Engine."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer.data.batches import accumulation_scales, loader_batch_sizes
from trainer.engine.loop import Engine
from trainer.engine.settings import LoopSettings, is_better
from trainer.optim.schedules import Schedule
import trainer.engine.loop as engine_module

NUM_FEATURES, NUM_CLASSES = 6, 3


# --- accumulation_scales ---------------------------------------------------------------------
def windows(num_batches, accumulate):
    """Step positions an optimizer takes: after every `accumulate` batches and after the last one."""
    return [i for i in range(num_batches) if (i + 1) % accumulate == 0 or i == num_batches - 1]


@pytest.mark.parametrize("num_batches", [1, 2, 3, 5, 7, 8, 10])
@pytest.mark.parametrize("accumulate", [1, 2, 3, 4, 8, 11])
@pytest.mark.parametrize("with_sizes", [False, True])
def test_accumulation_scales_windows_sum_to_one(num_batches, accumulate, with_sizes):
    sizes = [5] * (num_batches - 1) + [2] if with_sizes else None
    scales = accumulation_scales(sizes, num_batches, accumulate)
    assert len(scales) == num_batches
    steps = windows(num_batches, accumulate)
    assert len(steps) == math.ceil(num_batches / accumulate)
    start = 0
    for end in steps:
        assert sum(scales[start : end + 1]) == pytest.approx(1.0)
        if with_sizes:
            window = sizes[start : end + 1]
            assert scales[start : end + 1] == pytest.approx([s / sum(window) for s in window])
        else:
            assert scales[start : end + 1] == pytest.approx([1 / (end + 1 - start)] * (end + 1 - start))
        start = end + 1
    assert start == num_batches


def test_accumulation_scales_uneven_last_batch():
    assert accumulation_scales([4, 4, 4, 1], 4, 2) == pytest.approx([0.5, 0.5, 0.8, 0.2])
    assert accumulation_scales([4, 4, 4, 1], 4, 3) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert accumulation_scales(None, 4, 3) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert accumulation_scales([4, 4, 4, 1], 4, 1) == [1.0, 1.0, 1.0, 1.0]
    assert accumulation_scales([], 0, 2) == []


# --- loader_batch_sizes ----------------------------------------------------------------------
def dataset(n, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, NUM_FEATURES, generator=gen, dtype=dtype)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return TensorDataset(x, y)


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_batch_sizes(shuffle):
    ds = dataset(22)
    assert loader_batch_sizes(DataLoader(ds, batch_size=4, shuffle=shuffle)) == [4, 4, 4, 4, 4, 2]
    assert loader_batch_sizes(DataLoader(ds, batch_size=4, shuffle=shuffle, drop_last=True)) == [4] * 5
    assert loader_batch_sizes(DataLoader(ds, batch_size=11, shuffle=shuffle)) == [11, 11]
    assert loader_batch_sizes(DataLoader(ds, batch_size=30, shuffle=shuffle)) == [22]
    # sizes are the ones the loader really yields
    assert [len(y) for _, y in DataLoader(ds, batch_size=4, shuffle=shuffle)] == [4, 4, 4, 4, 4, 2]


def test_loader_batch_sizes_unknown_for_batch_sampler():
    ds = dataset(10)
    loader = DataLoader(ds, batch_sampler=[[0, 1, 2], [3], [4, 5, 6, 7, 8, 9]])
    assert loader_batch_sizes(loader) is None


# --- the Engine ------------------------------------------------------------------------------
def make_engine(model, accumulate, lr=0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    return Engine(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        Schedule(None),
        ["accuracy"],
        device=torch.device("cpu"),
        loop=LoopSettings(accumulate=accumulate),
        run_dir=None,
    )


def linear_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Linear(NUM_FEATURES, NUM_CLASSES).to(dtype)


def count_steps(engine):
    calls = []
    original = engine.optimizer.step

    def counting_step(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    engine.optimizer.step = counting_step
    return calls


@pytest.mark.parametrize("num_batches", [1, 2, 5, 7])
@pytest.mark.parametrize("accumulate", [1, 2, 3, 4])
def test_optimizer_steps_per_epoch(num_batches, accumulate):
    batch_size = 3
    loader = DataLoader(dataset(num_batches * batch_size - 1), batch_size=batch_size, shuffle=True)
    assert len(loader) == num_batches
    engine = make_engine(linear_model(), accumulate)
    calls = count_steps(engine)
    for epoch in range(1, 3):
        result = engine.train_epoch(loader)
        assert len(calls) == epoch * math.ceil(num_batches / accumulate)
        assert set(result) == {"train/loss", "train/accuracy"}
        assert math.isfinite(result["train/loss"]) and 0.0 <= result["train/accuracy"] <= 1.0


def params_after_one_epoch(batch_size, accumulate, n=22, dtype=torch.float64):
    model = linear_model(seed=1, dtype=dtype)
    engine = make_engine(model, accumulate, lr=0.5)
    loader = DataLoader(dataset(n, seed=2, dtype=dtype), batch_size=batch_size, shuffle=False)
    engine.train_epoch(loader)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("n,b,k", [(22, 4, 3), (22, 4, 2), (22, 5, 2), (17, 3, 4), (12, 4, 3)])
def test_accumulation_equals_large_batch(n, b, k):
    small = params_after_one_epoch(b, k, n)
    large = params_after_one_epoch(b * k, 1, n)
    initial = list(linear_model(seed=1, dtype=torch.float64).parameters())
    for s, l, p0 in zip(small, large, initial):
        torch.testing.assert_close(s, l, rtol=0, atol=1e-6)
        assert not torch.allclose(s, p0)  # training did move the weights


def test_accumulation_equals_large_batch_float32():
    small = params_after_one_epoch(4, 3, 22, dtype=torch.float32)
    large = params_after_one_epoch(12, 1, 22, dtype=torch.float32)
    for s, l in zip(small, large):
        torch.testing.assert_close(s, l, rtol=0, atol=1e-6)


def test_equal_scales_would_differ_on_uneven_window(monkeypatch):
    """The comparison above is sensitive: weighting micro-batches equally changes the result."""
    large = params_after_one_epoch(12, 1)
    monkeypatch.setattr(engine_module, "loader_batch_sizes", lambda loader: None)
    naive = params_after_one_epoch(4, 3)
    assert max((a - b).abs().max().item() for a, b in zip(naive, large)) > 1e-4


def test_no_gradients_carried_across_epochs():
    model = linear_model()
    engine = make_engine(model, accumulate=3)
    loader = DataLoader(dataset(20), batch_size=4)  # 5 batches: last window is shorter
    for _ in range(2):
        engine.train_epoch(loader)
        assert all(p.grad is None for p in model.parameters())


def test_second_epoch_does_not_see_first_epoch_gradients():
    """Two epochs of the engine equal two epochs of a hand-written large-batch loop."""
    n, b, k = 22, 4, 3
    model = linear_model(seed=3, dtype=torch.float64)
    reference = copy.deepcopy(model)
    engine = make_engine(model, accumulate=k, lr=0.3)
    data = dataset(n, seed=4, dtype=torch.float64)
    loader = DataLoader(data, batch_size=b, shuffle=False)
    opt = torch.optim.SGD(reference.parameters(), lr=0.3)
    x, y = data.tensors
    for _ in range(2):
        engine.train_epoch(loader)
        for start in range(0, n, b * k):
            opt.zero_grad()
            nn.functional.cross_entropy(reference(x[start : start + b * k]), y[start : start + b * k]).backward()
            opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-9)


# --- is_better -------------------------------------------------------------------------------
def test_is_better_min():
    assert is_better(0.5, None, "min")
    assert is_better(0.4, 0.5, "min")
    assert not is_better(0.5, 0.5, "min")
    assert not is_better(0.6, 0.5, "min")
    assert not is_better(0.45, 0.5, "min", min_delta=0.1)
    assert is_better(0.39, 0.5, "min", min_delta=0.1)
    assert is_better(-math.inf, None, "min") is False


def test_is_better_max():
    assert is_better(0.5, None, "max")
    assert is_better(0.6, 0.5, "max")
    assert not is_better(0.5, 0.5, "max")
    assert not is_better(0.4, 0.5, "max")
    assert not is_better(0.55, 0.5, "max", min_delta=0.1)
    assert is_better(0.61, 0.5, "max", min_delta=0.1)


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("best", [None, 0.5, -1e9, 1e9])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_is_better_non_finite_never_better(mode, best, value):
    assert is_better(value, best, mode) is False


# --- non-finite losses -----------------------------------------------------------------------
class CountingLoader:
    """A loader's batches, counting how many were taken; the inputs of batch `nan_at` (1-based) get a NaN."""

    def __init__(self, loader, nan_at=None):
        self.loader, self.nan_at, self.taken = loader, nan_at, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for inputs, targets in self.loader:
            self.taken += 1
            if self.taken == self.nan_at:
                inputs = inputs.clone()
                inputs[0, 0] = float("nan")
            yield inputs, targets


@pytest.mark.parametrize("accumulate", [1, 3])
def test_a_nan_loss_stops_a_long_epoch_within_the_check_interval(accumulate):
    from trainer.engine.loop import NONFINITE_CHECK_STEPS, NonFiniteLoss

    num_batches, nan_at = 400, 137
    loader = CountingLoader(DataLoader(dataset(2 * num_batches), batch_size=2), nan_at)
    engine = make_engine(linear_model(), accumulate)
    with pytest.raises(NonFiniteLoss) as raised:
        engine.train_epoch(loader, epoch=3)
    # noticed at the first check after it: at most NONFINITE_CHECK_STEPS optimizer steps later, not at the epoch's end
    assert nan_at <= loader.taken <= nan_at + NONFINITE_CHECK_STEPS * accumulate
    assert loader.taken < num_batches
    assert f"epoch 3, step {nan_at} of {num_batches} (stopped after step {loader.taken};" in str(raised.value)


def test_a_finite_epoch_looks_for_non_finite_losses_once_per_interval(monkeypatch):
    from trainer.engine.loop import NONFINITE_CHECK_STEPS
    from trainer.engine.step_totals import StepTotals

    looked = []
    original = StepTotals.non_finite_since_check
    monkeypatch.setattr(StepTotals, "non_finite_since_check",
                        lambda self, device: looked.append(len(self.losses)) or original(self, device))
    num_batches, accumulate = 7 * NONFINITE_CHECK_STEPS + 3, 2
    engine = make_engine(linear_model(), accumulate)
    result = engine.train_epoch(DataLoader(dataset(num_batches), batch_size=1))
    assert math.isfinite(result["train/loss"])
    windows = math.ceil(num_batches / accumulate)
    interval = NONFINITE_CHECK_STEPS * accumulate
    assert looked == [interval * k for k in range(1, windows // NONFINITE_CHECK_STEPS + 1)]  # one sync per check


class LossAt:
    """A loss that is NaN at the given training calls (1-based) and 1e30 times too large at others."""

    def __init__(self, loss_fn, nan=(), huge=()):
        self.loss_fn, self.nan, self.huge, self.calls = loss_fn, set(nan), set(huge), 0

    def to(self, device):
        return self

    def __call__(self, logits, targets):
        loss = self.loss_fn(logits, targets)
        if not torch.is_grad_enabled():
            return loss
        self.calls += 1
        if self.calls in self.nan:
            return loss * float("nan")
        return loss * 1e30 if self.calls in self.huge else loss


@pytest.mark.parametrize("precision", ["32", "fp16"])
def test_a_skipped_window_steps_neither_the_optimizer_nor_the_schedule_nor_the_ema(precision):
    """Batches of 2, accumulate=2: window 2 (calls 3 and 4) has only NaN losses and is skipped; window 5
    has an overflowing loss, whose step fp16's GradScaler skips (float32 takes it)."""
    from timm.utils import ModelEmaV3

    model = linear_model(seed=5)
    loss_fn = LossAt(nn.CrossEntropyLoss(), nan=(3, 4), huge=(9,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = Engine(
        model, loss_fn, optimizer, Schedule(None), ["accuracy"], device=torch.device("cpu"),
        loop=LoopSettings(accumulate=2, precision=precision, on_nonfinite="skip"), ema=ModelEmaV3(model, decay=0.9),
    )
    window = lambda: (loss_fn.calls + 1) // 2  # noqa: E731  the window of the latest training call
    stepped, scheduled, averaged = [], [], []
    optimizer.register_step_post_hook(lambda *args: stepped.append(window()))
    engine.schedule.after_optimizer_step = lambda: scheduled.append(window())
    update = engine.ema.update
    engine.ema.update = lambda model, step: averaged.append((window(), step)) or update(model, step=step)

    result = engine.train_epoch(DataLoader(dataset(24, seed=6), batch_size=2))  # 12 batches, 6 windows
    expected = [1, 3, 4, 5, 6] if precision == "32" else [1, 3, 4, 6]
    assert stepped == scheduled == expected
    assert averaged == [(w, n) for n, w in enumerate(expected, 1)]  # EMA steps count the steps taken
    assert engine.optimizer_steps == len(expected) and engine.skipped_steps == 2
    assert math.isfinite(result["train/loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert engine.scaler.is_enabled() == (precision == "fp16")


# --- EMA -------------------------------------------------------------------------------------
def test_ema_is_the_decay_formula_over_the_raw_weights_of_each_step():
    """ModelEmaV3 as build_ema makes it: the first step copies the weights (timm's decay is 0 at step 1),
    then e_t = d e_(t-1) + (1 - d) w_t after every optimizer step, replayed here from the recorded weights."""
    from conftest import compose_train
    from trainer.run.assembly import build_ema

    decay = 0.8
    model = linear_model(seed=7, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    engine = Engine(model, nn.CrossEntropyLoss(), optimizer, Schedule(None), ["accuracy"], device=torch.device("cpu"),
                    loop=LoopSettings(accumulate=2), ema=build_ema(compose_train(f"trainer.ema_decay={decay}"), model))
    raw = []
    optimizer.register_step_post_hook(lambda *args: raw.append([p.detach().clone() for p in model.parameters()]))
    loader = DataLoader(dataset(40, seed=8, dtype=torch.float64), batch_size=4)
    for epoch in range(2):
        engine.train_epoch(loader)
    assert len(raw) == engine.optimizer_steps == 10
    expected = None
    for weights in raw:
        expected = weights if expected is None else [decay * e + (1 - decay) * w for e, w in zip(expected, weights)]
    for ema, reference, now in zip(engine.ema.module.parameters(), expected, model.parameters()):
        torch.testing.assert_close(ema, reference, rtol=0, atol=1e-12)
        assert (ema - now).abs().max() > 1e-3  # the average lags the weights: the comparison can tell them apart


def _rank_with_a_nan(rank, port, result_dir):
    """One of two gloo processes, each with its own model (no DDP, so the NaN stays on rank 1): rank 0 sees only
    finite losses and must stop at the same check as rank 1, through the check's all-reduce."""
    import datetime
    import json
    import os
    from pathlib import Path

    import torch.distributed as dist

    from trainer.engine.loop import NonFiniteLoss
    from trainer.engine.place import Place

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    model = linear_model()
    engine = Engine(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), Schedule(None), ["accuracy"],
                    device=torch.device("cpu"), place=Place(rank, 2, rank, True))
    loader = CountingLoader(DataLoader(dataset(800, seed=rank), batch_size=2), nan_at=137 if rank == 1 else None)
    try:
        engine.train_epoch(loader, epoch=1)
        outcome = "finished"
    except NonFiniteLoss as err:
        outcome = str(err)
    (Path(result_dir) / f"{rank}.json").write_text(json.dumps({"taken": loader.taken, "outcome": outcome}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_all_processes_stop_at_the_same_check(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    from trainer.engine.loop import NONFINITE_CHECK_STEPS

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_with_a_nan, args=(port, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    stop = (137 // NONFINITE_CHECK_STEPS + 1) * NONFINITE_CHECK_STEPS
    assert [r["taken"] for r in ranks] == [stop, stop]
    assert ranks[0]["outcome"] == "the training loss became non-finite on another process in epoch 1"
    assert "epoch 1, step 137 of 400" in ranks[1]["outcome"]
