"""Step and multistep count their epochs from the start of the run, warmup included (as timm does with
warmup_prefix=False): checked through Schedule stepped as the Engine steps it, on resume, and in a real run."""

import warnings

import pytest
import torch

from conftest import read_csv, run_module, schedule_rates
from trainer.config.registry import build, schema_defaults
from trainer.optim.schedules import SCHEDULERS

LR = 0.1
START = 0.01 * LR  # the schema's warmup_start_factor


def make(name, *, max_epochs, steps_per_epoch, **options):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    schedule = build(SCHEDULERS, {**schema_defaults("scheduler", name), **options}, optimizer=optimizer,
                     max_epochs=max_epochs, steps_per_epoch=steps_per_epoch, mode="max")
    return optimizer, schedule


def run(optimizer, schedule, epochs, steps_per_epoch):
    """The rate of every optimizer step, the schedule stepped as Engine.fit and train_epoch step it."""
    return schedule_rates(optimizer, schedule, epochs, steps_per_epoch, monitored=0.5)


def per_epoch(rates, steps_per_epoch):
    return rates[::steps_per_epoch]


def ramp(unit, warmup_units):
    return START + (LR - START) * unit / warmup_units


# multistep [4], gamma 0.1 after a 2-epoch warmup: the decay starts the 5th epoch (index 4), not the 7th
MULTISTEP_EPOCHS = [START, ramp(1, 2), LR, LR, LR * 0.1, LR * 0.1, LR * 0.1, LR * 0.1]
# step_size 3, gamma 0.5 after a 2-epoch warmup: decays after epochs 3 and 6 of the run
STEP_EPOCHS = [START, ramp(1, 2), LR, LR / 2, LR / 2, LR / 2, LR / 4, LR / 4]
CASES = {
    "multistep": (dict(milestones=[4], gamma=0.1, warmup_epochs=2), MULTISTEP_EPOCHS),
    "step": (dict(step_size=3, gamma=0.5, warmup_epochs=2), STEP_EPOCHS),
}


@pytest.mark.parametrize("name", list(CASES))
def test_per_epoch_decays_fall_on_epochs_of_the_run(name):
    options, expected = CASES[name]
    optimizer, schedule = make(name, max_epochs=8, steps_per_epoch=3, interval="epoch", **options)
    rates = run(optimizer, schedule, 8, 3)
    assert rates == pytest.approx([rate for rate in expected for _ in range(3)], rel=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_per_step_decays_fall_on_the_first_step_of_their_epoch(name):
    options, expected_epochs = CASES[name]
    steps = 3
    optimizer, schedule = make(name, max_epochs=8, steps_per_epoch=steps, interval="step", **options)
    rates = run(optimizer, schedule, 8, steps)
    warmup_units = 2 * steps
    expected = [ramp(u, warmup_units) if u < warmup_units else expected_epochs[u // steps] for u in range(8 * steps)]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert per_epoch(rates, steps) == pytest.approx(expected_epochs, rel=1e-12)


def test_without_warmup_the_rates_are_unchanged():
    optimizer, schedule = make("multistep", max_epochs=6, steps_per_epoch=2, milestones=[2, 4], gamma=0.1,
                               interval="epoch", warmup_epochs=0)
    assert per_epoch(run(optimizer, schedule, 6, 2), 2) == pytest.approx(
        [LR, LR, LR * 0.1, LR * 0.1, LR * 0.01, LR * 0.01], rel=1e-12)


def test_a_milestone_within_the_warmup_takes_effect_when_the_warmup_ends():
    # milestones 1 and 5, warmup 3 epochs: the warmup ramps up to LR; the decay at 1 applies from epoch 3 on
    optimizer, schedule = make("multistep", max_epochs=7, steps_per_epoch=1, milestones=[1, 5], gamma=0.1,
                               interval="epoch", warmup_epochs=3)
    expected = [START, ramp(1, 3), ramp(2, 3), LR * 0.1, LR * 0.1, LR * 0.01, LR * 0.01]
    assert run(optimizer, schedule, 7, 1) == pytest.approx(expected, rel=1e-12)


def test_step_matches_timm_with_warmup_not_a_prefix():
    # timm's StepLRScheduler (warmup_prefix=False: decay epochs count from the start) as a second reference
    from timm.scheduler import StepLRScheduler

    optimizer, schedule = make("step", max_epochs=12, steps_per_epoch=1, step_size=2, gamma=0.3,
                               interval="epoch", warmup_epochs=3)
    ours = run(optimizer, schedule, 12, 1)
    reference_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    timm_schedule = StepLRScheduler(reference_opt, decay_t=2, decay_rate=0.3, warmup_t=3, warmup_lr_init=START,
                                    warmup_prefix=False)
    expected = []
    for epoch in range(12):
        timm_schedule.step(epoch)
        expected.append(reference_opt.param_groups[0]["lr"])
    assert ours == pytest.approx(expected, rel=1e-12)


def test_head_lr_group_follows_the_same_factors():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": LR}, {"params": [model.bias], "lr": 10 * LR}])
    schedule = build(SCHEDULERS, {**schema_defaults("scheduler", "multistep"), "milestones": [4], "warmup_epochs": 2},
                     optimizer=optimizer, max_epochs=8, steps_per_epoch=1)
    heads = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(8):
            heads.append(optimizer.param_groups[1]["lr"])
            optimizer.step()
            schedule.after_epoch(0.0)
    assert heads == pytest.approx([10 * rate for rate in MULTISTEP_EPOCHS], rel=1e-12)


@pytest.mark.parametrize("interval", ["epoch", "step"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("done", [1, 3, 5])  # within the warmup, before and after a decay
def test_resume_continues_on_the_same_clock(name, interval, done):
    options, _ = CASES[name]
    steps = 2
    optimizer, schedule = make(name, max_epochs=8, steps_per_epoch=steps, interval=interval, **options)
    unbroken = run(optimizer, schedule, 8, steps)
    optimizer, schedule = make(name, max_epochs=8, steps_per_epoch=steps, interval=interval, **options)
    run(optimizer, schedule, done, steps)
    saved = optimizer.state_dict(), schedule.state_dict()
    # a resumed run may also be given more epochs: the decays stay where they were
    optimizer, schedule = make(name, max_epochs=10, steps_per_epoch=steps, interval=interval, **options)
    optimizer.load_state_dict(saved[0])
    schedule.load_state_dict(saved[1])
    assert run(optimizer, schedule, 8 - done, steps) == pytest.approx(unbroken[done * steps:], rel=1e-12)


@pytest.mark.parametrize("interval", ["epoch", pytest.param("step", marks=pytest.mark.slow)])
def test_a_run_records_the_decay_in_the_epoch_the_config_names(tmp_path, interval):
    run_dir = tmp_path / "run"
    result = run_module(
        "trainer", "scheduler=multistep", "scheduler.milestones=[4]", "scheduler.warmup_epochs=2",
        f"scheduler.interval={interval}", "optimizer=sgd", f"optimizer.lr={LR}", "trainer.max_epochs=6",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "progress=false",
        f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lrs = [float(row["lr"]) for row in read_csv(run_dir / "metrics.csv")]
    # the rate each epoch starts with; per step, the second epoch starts halfway up the 4-step ramp
    assert lrs == pytest.approx(MULTISTEP_EPOCHS[:6], rel=1e-6)


def test_a_step_schedule_stored_by_the_older_version_is_refused_with_a_message():
    from trainer.errors import UserError

    optimizer, schedule = make("step", max_epochs=8, steps_per_epoch=1, step_size=3, gamma=0.5, interval="epoch",
                               warmup_epochs=0)
    old = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR), 3, 0.5)
    stored = {"units_done": 2, "main_units": 8, "main": old.state_dict(), "warmup": None}
    with pytest.raises(UserError, match="stored by an older version of this scheduler"):
        schedule.load_state_dict(stored)


@pytest.mark.slow
def test_a_resumed_run_keeps_the_decays_where_an_unbroken_run_has_them(tmp_path):
    common = ["scheduler=multistep", "scheduler.milestones=[4]", "scheduler.warmup_epochs=2", "optimizer=sgd",
              f"optimizer.lr={LR}", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "progress=false"]
    unbroken, resumed = tmp_path / "unbroken", tmp_path / "resumed"
    for args in ([*common, "trainer.max_epochs=6", f"hydra.run.dir={unbroken}"],
                 [*common, "trainer.max_epochs=3", f"hydra.run.dir={resumed}"],
                 [f"resume={resumed}", "trainer.max_epochs=6"]):
        result = run_module("trainer", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    lrs = [float(row["lr"]) for row in read_csv(resumed / "metrics.csv")]
    assert lrs == pytest.approx([float(row["lr"]) for row in read_csv(unbroken / "metrics.csv")], rel=1e-9)
    assert lrs == pytest.approx(MULTISTEP_EPOCHS[:6], rel=1e-6)
