"""When the Engine validates, and what the record of a validation says about the training since the last one.

    ValidationSchedule  decides "validate now?" from epoch and optimizer-step counts: after every N-th epoch
                        (trainer.val_every_n_epochs) and always after the run's last; inside the epochs it
                        validates, every few optimizer steps (trainer.val_check_interval); and where the run
                        ends (trainer.max_epochs or trainer.max_steps, whichever comes first).
    TrainSinceRecord    the train totals (loss, accuracy) of the steps since the previous record, on the device.

Every validation is one record (a row of metrics.csv, an `on_epoch_end` event), keyed by its epoch and by
its optimizer step. Best checkpoint, top-k, early stopping (trainer.patience) and scheduler=plateau all
count validations, not epochs. This module imports no torch at module level.
"""

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

from trainer.errors import UserError
from trainer.optim.schedules import run_steps


def check_validation_settings(t) -> None:
    """The trainer.* keys of this module, checked before any data is loaded (`t`: the trainer config)."""
    if isinstance(t.val_every_n_epochs, bool) or t.val_every_n_epochs < 1:
        raise UserError(f"trainer.val_every_n_epochs={t.val_every_n_epochs} is not valid; use an integer >= 1 "
                        "(1 = validate after every epoch; the last epoch is always validated)")
    if t.max_steps is not None and t.max_steps < 1:
        raise UserError(f"trainer.max_steps={t.max_steps} is not valid; use an integer >= 1 (optimizer steps), "
                        "or null for no limit")
    interval_steps(t.val_check_interval, None)


def interval_steps(value: Any, steps_per_epoch: Optional[int]) -> Optional[int]:
    """trainer.val_check_interval as optimizer steps between validations inside an epoch (None: only at its end).

    A float in (0, 1] is a share of the epoch's optimizer steps (at least one); an int is a number of steps, at
    most an epoch's. `steps_per_epoch=None` checks the value alone (before the data is known).
    """
    key = "trainer.val_check_interval"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{key}={value} is not valid; use a float in (0, 1] (a share of an epoch), an integer >= 1 "
                        "(optimizer steps), or null (validate only at the end of an epoch)")
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise UserError(f"{key}={value} is not valid; a share of an epoch must be in (0, 1] (0.25: four "
                            "validations per epoch); for a number of optimizer steps give an integer")
        steps = None if steps_per_epoch is None else max(1, math.floor(value * steps_per_epoch))
    else:
        if value < 1:
            raise UserError(f"{key}={value} is not valid; a number of optimizer steps must be >= 1 "
                            "(or give a float in (0, 1]: a share of an epoch)")
        steps = value
    if steps_per_epoch is None:
        return None
    if steps > steps_per_epoch:
        raise UserError(f"{key}={value} is more than the {steps_per_epoch} optimizer steps an epoch has here; "
                        f"use at most {steps_per_epoch}, or a float in (0, 1] (a share of an epoch)")
    return steps if steps < steps_per_epoch else None


def optimizer_steps_per_epoch(num_batches: int, accumulate: int) -> int:
    """One optimizer step per window of `accumulate` batches, the last window possibly shorter."""
    return math.ceil(num_batches / accumulate)


@dataclass(frozen=True)
class ValidationSchedule:
    steps_per_epoch: int
    max_epochs: int
    every_n_epochs: int = 1
    interval: Optional[int] = None  # optimizer steps between validations inside an epoch; None: none inside
    max_steps: Optional[int] = None

    @classmethod
    def of(cls, loop, num_batches: int) -> "ValidationSchedule":
        """From the Engine's LoopSettings and the training loader's length (raises UserError for a bad interval)."""
        steps_per_epoch = optimizer_steps_per_epoch(num_batches, loop.accumulate)
        return cls(steps_per_epoch, loop.max_epochs, loop.val_every_n_epochs,
                   interval_steps(loop.val_check_interval, steps_per_epoch), loop.max_steps)

    @property
    def run_steps(self) -> int:
        """The optimizer steps the run will take (when none is skipped): its length for the LR schedule too."""
        return run_steps(self.max_epochs, self.steps_per_epoch, self.max_steps)

    @property
    def last_epoch(self) -> int:
        """The epoch in which the run is planned to end (max_steps may end it before max_epochs)."""
        return math.ceil(self.run_steps / self.steps_per_epoch)

    @property
    def inside_epochs(self) -> bool:
        return self.interval is not None

    def steps_done(self, optimizer_steps: int) -> bool:
        return self.max_steps is not None and optimizer_steps >= self.max_steps

    def run_over(self, epochs_done: int, optimizer_steps: int) -> bool:
        return epochs_done >= self.max_epochs or self.steps_done(optimizer_steps)

    def validates_epoch(self, epoch: int, optimizer_steps: int) -> bool:
        """At the end of `epoch` (or where max_steps cut it): every N-th epoch, and the run's last, always."""
        return epoch % self.every_n_epochs == 0 or self.run_over(epoch, optimizer_steps)

    def validates_inside(self, epoch: int, window: int) -> bool:
        """After the `window`-th optimizer step of `epoch` (1-based), before its end: every `interval` steps of
        the epochs that are validated. A skipped step (fp16 overflow) still counts here: the plan is per window."""
        return (self.interval is not None and window % self.interval == 0 and window < self.steps_per_epoch
                and (epoch % self.every_n_epochs == 0 or epoch == self.last_epoch))

    def validations_in(self, epoch: int) -> int:
        """How many times `epoch` validates, as planned (for a progress bar)."""
        inside = 0
        if self.interval is not None and (epoch % self.every_n_epochs == 0 or epoch == self.last_epoch):
            inside = (self.steps_per_epoch - 1) // self.interval
        return inside + int(epoch % self.every_n_epochs == 0 or epoch >= self.last_epoch)


class TrainSinceRecord:
    """What the next record says of training: the learning rate at the first step since the previous record,
    and the train totals of those steps (StepTotals.epoch_totals, added up over parts of epochs), kept on
    the device until the record is made. A resumed run gets them back from the checkpoint (`state`)."""

    def __init__(self, count_correct: bool):
        self.count_correct = count_correct
        self.lr: Optional[float] = None
        self.totals = None  # a device tensor, or None before the first step
        self.started = time.perf_counter()

    def start(self, lr: float) -> None:
        """At the beginning of a part of an epoch: the first one since the record sets the record's lr."""
        if self.lr is None:
            self.lr, self.started = lr, time.perf_counter()

    def add(self, totals) -> None:
        self.totals = totals if self.totals is None else self.totals + totals

    def record(self) -> Dict[str, float]:
        """lr, train/loss (sample-weighted mean of the finite step losses), train/accuracy; then starts afresh."""
        record: Dict[str, float] = {"lr": math.nan if self.lr is None else self.lr}
        if self.totals is not None:
            weighted_loss, finite_samples, samples, correct, _ = self.totals
            record["train/loss"] = (weighted_loss / finite_samples).item()
            if self.count_correct:
                record["train/accuracy"] = (correct / samples).item()
        self.lr, self.totals = None, None
        return record

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def state(self) -> Dict[str, Any]:
        return {"lr": self.lr, "totals": None if self.totals is None else [float(v) for v in self.totals.tolist()]}

    def load(self, state: Optional[Dict[str, Any]], device) -> None:
        import torch  # heavy: this module is imported by build's checks

        state = state or {}
        self.lr = state.get("lr")
        totals = state.get("totals")
        self.totals = None if totals is None else torch.tensor(totals, dtype=torch.float32, device=device)
