"""Checkpoints inside an epoch: when the Engine writes last.ckpt at an optimizer-step boundary, what such a
checkpoint records of the epoch so far, and how a resumed run continues the epoch from there.

    StepCheckpoints   "checkpoint now?" after an optimizer step: every N steps (checkpoint.every_n_steps),
                      every M minutes (checkpoint.every_minutes, on rank 0's clock) or on a signal
                      (trainer.checkpoint_signal: write last.ckpt, then stop with REQUEUE_EXIT_STATUS).
    epoch_position    what a step checkpoint holds of its epoch: batches done, the steps' losses, sizes and
                      correct count so far (every rank's), the open record's totals are in since_record.
    continue_epoch    the resumed epoch's loader skips the batches done (the sampler's skip_batches): nothing
                      before the checkpoint is read again.

Under torchrun every rank must take the same decision at the same step. every_n_steps counts optimizer
steps, the same on every rank. The clock (rank 0's) and a signal (any rank's) are shared by one small
all-reduce every SHARE_EVERY_STEPS optimizer steps, not one per step; a single process looks every step.
"""

import os
import signal
import time
from contextlib import contextmanager
from typing import Any, Dict, Optional

import torch

from trainer.data.sampling import training_order
from trainer.engine.distributed import all_gather_objects, all_reduce_sum
from trainer.engine.place import Place
from trainer.errors import UserError

# The exit status of a run stopped by trainer.checkpoint_signal after writing last.ckpt: "requeue me". 75 is
# EX_TEMPFAIL of sysexits.h (a temporary failure: run the same command again). A job script can test for it.
REQUEUE_EXIT_STATUS = 75

# Under torchrun the clock and signals are shared every this many optimizer steps (one tiny all-reduce).
SHARE_EVERY_STEPS = 10

SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGHUP", "SIGCONT")


class StoppedToRequeue(KeyboardInterrupt):
    """Raised at the step boundary after last.ckpt was written for trainer.checkpoint_signal. A KeyboardInterrupt,
    so that the run's summary says "interrupted", as for Ctrl-C."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} at optimizer step {step}")
        self.signum, self.step = signum, step


def check_checkpoint_settings(checkpoint, trainer) -> None:
    """checkpoint.every_n_steps, checkpoint.every_minutes and trainer.checkpoint_signal, before any data is read."""
    every = checkpoint.every_n_steps
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise UserError(f"checkpoint.every_n_steps={every} is not valid; use an integer >= 1 (optimizer steps "
                        "between checkpoints inside an epoch), or null for checkpoints at epoch ends only")
    minutes = checkpoint.every_minutes
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
        raise UserError(f"checkpoint.every_minutes={minutes} is not valid; use a number of minutes > 0 (e.g. 30), "
                        "or null for no checkpoints by the clock")
    signal_number(trainer.checkpoint_signal)


def signal_number(name: Optional[str]) -> Optional[int]:
    """trainer.checkpoint_signal as a signal number (None: off)."""
    if name is None:
        return None
    text = str(name).upper()
    text = text if text.startswith("SIG") else "SIG" + text
    if text not in SIGNALS or not hasattr(signal, text):
        raise UserError(f"trainer.checkpoint_signal={name} is not valid; use one of: {', '.join(SIGNALS)}, "
                        "or null for none (SLURM's --signal sends SIGUSR1 unless told otherwise)")
    return int(getattr(signal, text))


def submitit_signal() -> Optional[int]:
    """Inside a job that submitit started (hydra/launcher=slurm): the signal SLURM sends it before its time limit
    or a pre-emption (submitit's SUBMITIT_PREEMPT_SIGNAL, USR2 unless set). submitit's own handler for it
    requeues the job; the trainer writes last.ckpt first, then calls that handler."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return int(getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")))


def requeue_signals(checkpoint_signal: Optional[str]) -> tuple:
    """The signals that write last.ckpt at the next step and stop the run: trainer.checkpoint_signal, and
    submitit's inside a submitit job."""
    return signal_number(checkpoint_signal), submitit_signal()


class StepCheckpoints:
    def __init__(self, every_n_steps: Optional[int] = None, every_minutes: Optional[float] = None,
                 place: Optional[Place] = None):
        self.every_n_steps = every_n_steps
        self.seconds = None if every_minutes is None else every_minutes * 60.0
        self.place = place or Place()
        self.last_saved = time.monotonic()
        self.received: Optional[int] = None  # the signal this process got, not yet acted on
        self.watched: set = set()
        self.previous: Dict[int, Any] = {}  # signal -> the handler it had before (submitit's requeue, for one)

    @property
    def active(self) -> bool:
        return self.every_n_steps is not None or self.seconds is not None or bool(self.watched)

    @contextmanager
    def watching(self, *signums: Optional[int]):
        """While training, these signals ask for last.ckpt at the next step boundary and a stop."""
        signums = [s for s in dict.fromkeys(signums) if s is not None]
        for signum in signums:
            self.previous[signum] = signal.signal(signum, self._receive)
            self.watched.add(signum)
        try:
            yield
        finally:
            for signum in signums:
                signal.signal(signum, self.previous[signum])
                self.watched.discard(signum)

    def _receive(self, signum, frame) -> None:
        self.received = signum

    def due(self, step: int, device: torch.device) -> Optional[str]:
        """After optimizer step `step` (inside an epoch): None, "save" (last.ckpt, go on) or "stop" (last.ckpt,
        then StoppedToRequeue). The same answer on every rank."""
        by_count = self.every_n_steps is not None and step % self.every_n_steps == 0
        if self.seconds is None and not self.watched:
            return "save" if by_count else None
        clock = self.seconds is not None and self.place.rank == 0 and time.monotonic() - self.last_saved >= self.seconds
        stop = self.received is not None
        if self.place.world_size > 1:
            if step % SHARE_EVERY_STEPS:
                return "save" if by_count else None
            flags = all_reduce_sum(torch.tensor([float(clock), float(stop)], device=device), self.place).tolist()
            clock, stop = flags[0] > 0, flags[1] > 0
        return "stop" if stop else "save" if by_count or clock else None

    def saved(self) -> None:
        self.last_saved = time.monotonic()


def write_step_checkpoint(engine, steps, epoch: int, batches_done: int, windows: int) -> None:
    """last.ckpt at this step boundary inside the epoch, if checkpoint.every_n_steps, every_minutes or
    trainer.checkpoint_signal say so (every rank agrees); after a signal the run stops here (StoppedToRequeue)."""
    decision = engine.step_checkpoints.due(engine.optimizer_steps, engine.device)
    if decision is None:
        return
    engine._notify("on_train_steps", engine.step_scalars.flush())  # before last.ckpt: a resumed run cannot redo them
    engine.position = epoch_position(steps, batches_done, windows, engine.place)
    if engine.loop.save_checkpoints and engine.place.world_size > 1:  # each rank resumes its own streams
        engine._rank_rng = all_gather_objects(engine._own_rng(), engine.place)
    engine.files.save("last.ckpt", engine.state_dict())
    engine.position = None
    engine.step_checkpoints.saved()
    if decision == "stop":
        engine.stop_reason = (f"trainer.checkpoint_signal: last.ckpt written in epoch {epoch} at optimizer step "
                              f"{engine.optimizer_steps}; the same command continues it (resume=auto or resume=<run dir>)")
        raise StoppedToRequeue(engine.step_checkpoints.received, engine.optimizer_steps)


def continue_inside_epoch(engine, steps, loader):
    """(first batch, optimizer windows closed) of the epoch about to be trained: (0, 0), or where the step
    checkpoint a run resumed from left it, with that epoch's steps so far given back to `steps`."""
    position, engine.position = engine.position, None
    if position is None:
        return 0, 0
    written_by = len(position["rank_steps"])
    if written_by != engine.place.world_size:  # another split of the epoch's global batches
        raise UserError(f"the checkpoint was written inside an epoch by {written_by} process(es); continue it with "
                        f"{written_by} (torchrun --nproc_per_node={written_by}), or from a checkpoint of an epoch's end")
    restore_steps(steps, position, engine.place.rank, engine.device)
    continue_epoch(loader, position["batches_done"])
    return position["batches_done"], position["windows"]


def epoch_position(steps, batches_done: int, windows: int, place: Place) -> Dict[str, Any]:
    """What a step checkpoint records of its epoch: batches done and, of every rank, its steps so far (one
    gather, at checkpoints only). Restored by `restore_steps`, the epoch's train/loss and train/accuracy are
    computed from the very same numbers as an uninterrupted epoch's."""
    steps._count_correct()
    own = {"losses": [float(v) for v in steps.step_losses(torch.device("cpu")).tolist()] if steps.losses else [],
           "sizes": list(steps.sizes), "first_step": steps.first_step,
           "correct": float(sum(c.item() for c in steps._correct))}
    return {"batches_done": batches_done, "windows": windows, "rank_steps": all_gather_objects(own, place)}


def restore_steps(steps, position: Dict[str, Any], rank: int, device: torch.device) -> None:
    """Give a fresh StepTotals the steps this rank had taken of the epoch when the checkpoint was written."""
    own = position["rank_steps"][rank]
    steps.first_step = own["first_step"]
    steps.losses = [torch.tensor(v, dtype=torch.float32, device=device) for v in own["losses"]]
    steps.sizes = list(own["sizes"])
    steps._correct = [torch.tensor(int(own["correct"]), dtype=torch.long, device=device)] if steps.count_correct else []
    steps._checked = len(steps.losses)


def continue_epoch(loader, batches_done: int) -> None:
    """The next iteration of `loader` starts at its batch `batches_done`, without reading the earlier ones."""
    if hasattr(loader, "skip_batches"):  # LimitedLoader, FixedBatches
        loader.skip_batches(batches_done)
        return
    order = training_order(loader)
    if order is None:
        raise UserError("this run's training batches cannot start an epoch in its middle; resume from a checkpoint "
                        "written at the end of an epoch")
    order.skip_batches(batches_done)


def resumable_inside(state: Dict[str, Any]) -> bool:
    """A checkpoint written by the Engine at a step boundary inside an epoch (last.ckpt), not at a validation."""
    return state.get("epoch_position") is not None
