"""Learning-rate schedules as registry options: warmup, then a torch scheduler, per epoch or per step."""

import bisect
import math
from typing import Any, Callable, Dict, Optional

import torch

from trainer.config.registry import Registry
from trainer.errors import UserError

SCHEDULERS = Registry("scheduler")


def run_steps(max_epochs: int, steps_per_epoch: int, max_steps: Optional[int]) -> int:
    """The run's length in optimizer steps: max_epochs of them, or max_steps when that comes first."""
    planned = max_epochs * steps_per_epoch
    return planned if max_steps is None else min(planned, max_steps)


class Schedule:
    """A torch LR scheduler stepped per epoch (after validation) or per optimizer step, with optional warmup.

    Lengths in the config (step_size, milestones, t_max, warmup_epochs) are always in epochs; with
    `interval: step` they are converted to optimizer steps. During warmup a LinearLR ramps the learning
    rate up to its configured value; then the main scheduler takes over, over the rest of the run.
    Step and multistep instead count their epochs from the start of the run, warmup included: their
    `main` is one closed-form LambdaLR and `warmup` is None. ReduceLROnPlateau gets the monitored
    value after each validation (its patience counts validations, not epochs: with
    trainer.val_every_n_epochs or trainer.val_check_interval those are not one per epoch); its warmup
    is still in epochs.

    The run's length is trainer.max_epochs, or trainer.max_steps optimizer steps when that comes first
    (`run_units`): a schedule planned over the whole run ends where the run does.

    A schedule planned over the whole run (cosine without t_max, onecycle) has `replan`: when a resumed
    run is given more epochs, the schedule continues as if it had been planned for the new length from
    the start, instead of running past its end (cosine would rise again, onecycle would fail).
    """

    def __init__(self, main: Optional[Any] = None, interval: str = "epoch", warmup: Optional[Any] = None,
                 warmup_units: int = 0, main_units: Optional[int] = None, replan: Optional[Callable[[int], Any]] = None):
        self.main = main
        self.interval = interval
        self.warmup = warmup
        self.warmup_units = warmup_units
        self.main_units = main_units  # the main scheduler's length in units (for the run's max_epochs)
        self.replan = replan  # last_epoch -> the main scheduler over main_units, positioned after that many units
        self.units_done = 0
        self.needs_metric = isinstance(main, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def _advance(self, monitored: Optional[float]) -> None:
        if self.units_done < self.warmup_units:
            self.warmup.step()
        elif self.needs_metric:
            self.main.step(monitored)
        elif self.main is not None:
            self.main.step()
        self.units_done += 1

    def after_optimizer_step(self) -> None:
        if self.interval == "step":
            self._advance(None)

    def after_epoch(self, monitored: Optional[float]) -> None:
        """After each epoch; `monitored` is the value of the validation that ended it, None when none did."""
        waits_for_a_value = self.needs_metric and monitored is None and self.units_done >= self.warmup_units
        if self.interval == "epoch" and not waits_for_a_value:
            self._advance(monitored)

    def after_validation_inside_epoch(self, monitored: float) -> None:
        """ReduceLROnPlateau counts validations: one inside an epoch (trainer.val_check_interval) is one more."""
        if self.needs_metric and self.units_done >= self.warmup_units:
            self.main.step(monitored)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "units_done": self.units_done,
            "main_units": self.main_units,
            "main": None if self.main is None else self.main.state_dict(),
            "warmup": None if self.warmup is None else self.warmup.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue a stored schedule; call after the optimizer's own state is loaded."""
        self.units_done = state["units_done"]
        if self.warmup is not None:
            self.warmup.load_state_dict(state["warmup"])
        if self.main is None:
            return
        planned = state.get("main_units")
        if self.replan is not None and planned is not None and planned != self.main_units:
            main_done = self.units_done - self.warmup_units
            if main_done > 0:  # in closed form at the new length (before that, the fresh one is right)
                self.main = self.replan(main_done - 1)
        elif isinstance(self.main, torch.optim.lr_scheduler.LambdaLR) and "lr_lambdas" not in state["main"]:
            # step and multistep were torch's StepLR/MultiStepLR after a separate warmup, on a clock
            # that started when the warmup ended: such a stored position means something else now
            raise UserError("the checkpoint's learning-rate schedule was stored by an older version of this "
                            "scheduler, which counted its epochs from the end of the warmup; it cannot be continued: "
                            "start a new run")
        else:
            self.main.load_state_dict(state["main"])


INTERVALS = ("epoch", "step")


def check_schedule(interval: str, warmup_epochs: int, max_epochs: int) -> None:
    """The settings every scheduler shares (also checked before any data is loaded)."""
    if interval not in INTERVALS:
        raise UserError(f"scheduler.interval={interval} is not valid; use one of: {', '.join(INTERVALS)}")
    if not 0 <= warmup_epochs < max_epochs:
        raise UserError(
            f"scheduler.warmup_epochs={warmup_epochs} is not valid for a {max_epochs}-epoch run; "
            "use 0 <= warmup_epochs < trainer.max_epochs"
        )


def run_units(interval: str, warmup_epochs: int, max_epochs: int, steps_per_epoch: int, max_steps: Optional[int]) -> int:
    """The run's length in the schedule's units: optimizer steps, or the epochs the run reaches (the last one
    maybe cut short by trainer.max_steps). The warmup must end before the run does."""
    steps = run_steps(max_epochs, steps_per_epoch, max_steps)
    if warmup_epochs * steps_per_epoch >= steps:
        raise UserError(f"scheduler.warmup_epochs={warmup_epochs} is not valid for a run of trainer.max_steps="
                        f"{max_steps} optimizer steps ({steps_per_epoch} per epoch): the warmup must end before the run does")
    return steps if interval == "step" else math.ceil(steps / steps_per_epoch)


def make_schedule(main_factory, *, optimizer, interval: str, warmup_epochs: int, warmup_start_factor: float,
                  max_epochs: int, steps_per_epoch: int, max_steps: Optional[int] = None,
                  run_length_bound: bool = False) -> Schedule:
    """Build warmup first (it lowers the learning rate at once), then the main scheduler over the rest of the run.

    `main_factory(units_per_epoch, total_units, last_epoch=-1)` builds the main scheduler in the
    schedule's units. `run_length_bound`: its shape depends on the run's length, so a resumed run with
    more epochs re-plans it (`main_factory` must then honour `last_epoch`, as torch's schedulers do).
    """
    check_schedule(interval, warmup_epochs, max_epochs)
    per_epoch = steps_per_epoch if interval == "step" else 1
    warmup_units = warmup_epochs * per_epoch
    warmup = None
    if warmup_units:
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=warmup_start_factor, total_iters=warmup_units)
    main_units = run_units(interval, warmup_epochs, max_epochs, steps_per_epoch, max_steps) - warmup_units
    main = main_factory(per_epoch, main_units)
    replan = (lambda last_epoch: main_factory(per_epoch, main_units, last_epoch)) if run_length_bound else None
    return Schedule(main, interval, warmup, warmup_units, main_units, replan)


def _common(interval, warmup_epochs, warmup_start_factor):
    if not 0 < warmup_start_factor <= 1:
        raise UserError(f"scheduler.warmup_start_factor={warmup_start_factor} is not valid; use 0 < factor <= 1")
    return dict(interval=interval, warmup_epochs=warmup_epochs, warmup_start_factor=warmup_start_factor)


@SCHEDULERS.register("none")
def no_schedule(interval, warmup_epochs, warmup_start_factor, *, optimizer, max_epochs, steps_per_epoch, max_steps=None):
    return make_schedule(lambda per_epoch, units: None, optimizer=optimizer, max_epochs=max_epochs,
                         steps_per_epoch=steps_per_epoch, max_steps=max_steps, **_common(interval, warmup_epochs, warmup_start_factor))


def decays_on_the_run_clock(decays_after: Callable[[int], int], gamma: float, *, optimizer, interval: str,
                            warmup_epochs: int, warmup_start_factor: float, max_epochs: int, steps_per_epoch: int,
                            max_steps: Optional[int] = None) -> Schedule:
    """The rate after `e` epochs of the run is lr * gamma ** decays_after(e): step and multistep.

    Their epochs are epochs of the run, counted from its start as the config says and as timm counts
    them (warmup_prefix=False), not from the end of the warmup. So one closed-form LambdaLR covers
    the whole run, the linear warmup included: a main scheduler stepped after a separate warmup
    would start its clock only when the warmup ends. A decay that falls within the warmup takes
    effect when the warmup ends (as in timm): the warmup ramps up to lr, then the rate is
    lr * gamma ** (the decays passed by then).
    """
    check_schedule(interval, warmup_epochs, max_epochs)
    per_epoch = steps_per_epoch if interval == "step" else 1
    warmup_units = warmup_epochs * per_epoch

    def factor(unit: int) -> float:
        if unit < warmup_units:  # LinearLR's ramp, in closed form
            return warmup_start_factor + (1 - warmup_start_factor) * unit / warmup_units
        return gamma ** decays_after(unit // per_epoch)

    total_units = run_units(interval, warmup_epochs, max_epochs, steps_per_epoch, max_steps)
    return Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, factor), interval, main_units=total_units)


@SCHEDULERS.register("step")
def step(step_size, gamma, interval, warmup_epochs, warmup_start_factor, *, optimizer, max_epochs, steps_per_epoch, max_steps=None):
    if step_size < 1:
        raise UserError(f"scheduler.step_size={step_size} is not valid; use an integer >= 1 (epochs)")
    return decays_on_the_run_clock(
        lambda epochs: epochs // step_size, gamma, optimizer=optimizer, max_epochs=max_epochs,
        steps_per_epoch=steps_per_epoch, max_steps=max_steps, **_common(interval, warmup_epochs, warmup_start_factor),
    )


@SCHEDULERS.register("multistep")
def multistep(milestones, gamma, interval, warmup_epochs, warmup_start_factor, *, optimizer, max_epochs, steps_per_epoch, max_steps=None):
    milestones = list(milestones)
    if any(m < 1 for m in milestones) or milestones != sorted(milestones):
        raise UserError(f"scheduler.milestones={milestones} is not valid; use increasing epochs >= 1")
    return decays_on_the_run_clock(
        lambda epochs: bisect.bisect_right(milestones, epochs), gamma, optimizer=optimizer, max_epochs=max_epochs,
        steps_per_epoch=steps_per_epoch, max_steps=max_steps, **_common(interval, warmup_epochs, warmup_start_factor),
    )


@SCHEDULERS.register("exponential")
def exponential(gamma, interval, warmup_epochs, warmup_start_factor, *, optimizer, max_epochs, steps_per_epoch, max_steps=None):
    if not 0 < gamma <= 1:
        raise UserError(f"scheduler.gamma={gamma} is not valid; use 0 < gamma <= 1 (the factor per epoch)")
    return make_schedule(
        lambda per_epoch, units: torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma ** (1.0 / per_epoch)),
        optimizer=optimizer, max_epochs=max_epochs, steps_per_epoch=steps_per_epoch, max_steps=max_steps,
        **_common(interval, warmup_epochs, warmup_start_factor),
    )


@SCHEDULERS.register("cosine")
def cosine(t_max, eta_min, interval, warmup_epochs, warmup_start_factor, *, optimizer, max_epochs, steps_per_epoch, max_steps=None):
    if t_max is not None and t_max < 1:
        raise UserError(f"scheduler.t_max={t_max} is not valid; use an integer >= 1 (epochs) or null (the rest of the run)")

    def cosine_over(per_epoch, units, last_epoch=-1):
        period = units if t_max is None else t_max * per_epoch
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=period, eta_min=eta_min, last_epoch=last_epoch)
        if last_epoch >= 0:  # torch steps a cosine from the current rate: put the rate on the new curve first
            for group in optimizer.param_groups:
                group["lr"] = eta_min + (group["initial_lr"] - eta_min) * (1 + math.cos(math.pi * scheduler.last_epoch / period)) / 2
        return scheduler

    return make_schedule(
        cosine_over, optimizer=optimizer, max_epochs=max_epochs, steps_per_epoch=steps_per_epoch, max_steps=max_steps,
        run_length_bound=t_max is None, **_common(interval, warmup_epochs, warmup_start_factor),
    )


@SCHEDULERS.register("plateau")
def plateau(factor, patience, threshold, cooldown, min_lr, interval, warmup_epochs, warmup_start_factor, *, optimizer, max_epochs, steps_per_epoch, mode, max_steps=None):
    if not 0 < factor < 1:
        raise UserError(f"scheduler.factor={factor} is not valid; use 0 < factor < 1")
    if interval != "epoch":
        raise UserError("scheduler=plateau follows the monitored metric, which exists once per epoch: use scheduler.interval=epoch")
    return make_schedule(
        lambda per_epoch, units: torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold, cooldown=cooldown, min_lr=min_lr),
        optimizer=optimizer, max_epochs=max_epochs, steps_per_epoch=steps_per_epoch, max_steps=max_steps,
        **_common(interval, warmup_epochs, warmup_start_factor),
    )


@SCHEDULERS.register("onecycle")
def onecycle(pct_start, div_factor, final_div_factor, anneal_strategy, interval, warmup_epochs, warmup_start_factor, *, optimizer, max_epochs, steps_per_epoch, max_steps=None):
    if warmup_epochs:
        raise UserError("scheduler=onecycle warms up by itself (scheduler.pct_start): leave scheduler.warmup_epochs=0")
    if anneal_strategy not in ("cos", "linear"):
        raise UserError(f"scheduler.anneal_strategy={anneal_strategy} is not valid; use cos or linear")
    max_lrs = [group["lr"] for group in optimizer.param_groups]
    return make_schedule(
        lambda per_epoch, units, last_epoch=-1: torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lrs, total_steps=units, pct_start=pct_start, div_factor=div_factor,
            final_div_factor=final_div_factor, anneal_strategy=anneal_strategy, last_epoch=last_epoch),
        optimizer=optimizer, max_epochs=max_epochs, steps_per_epoch=steps_per_epoch, max_steps=max_steps, run_length_bound=True,
        **_common(interval, warmup_epochs, warmup_start_factor),
    )
