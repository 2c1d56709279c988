"""The Engine: the one place where the train loop lives.

    fit:          for each epoch: train it, pausing where the validation schedule says (validation_schedule.py);
                  at each pause validate, pick best, step the schedule, save, stop (early, or on a stop condition)?
    train_parts:  model.train(); micro-batches with exact gradient accumulation; no host sync per step
    validate:     model.eval() under torch.inference_mode(); loss and metrics from the whole validation set

Callbacks only watch (progress, logs, files); every decision that changes the run is made here,
in the order written below.
"""

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from trainer.checkpointing.checkpoint import monitors_ema, set_rng_state
from trainer.data.batch_augment import BatchTransform
from trainer.data.batches import accumulation_scales, loader_batch_sizes, loader_global_sizes
from trainer.data.sampling import training_order
from trainer.engine import run_state
from trainer.engine.distributed import all_reduce_sum, all_gather_objects, average_buffers, gather_in_order, unwrap
from trainer.engine.place import Place
from trainer.engine.run_files import RunFiles
from trainer.engine.settings import LoopSettings, is_better
from trainer.engine.step_checkpoints import StepCheckpoints, continue_inside_epoch, write_step_checkpoint
from trainer.engine.step_scalars import StepScalars, window_loss
from trainer.engine.step_totals import StepTotals
from trainer.engine.validation_schedule import TrainSinceRecord, ValidationSchedule
from trainer.errors import UserError
from trainer.evaluation.metrics import epoch_metrics, epoch_regression_metrics


class NonFiniteLoss(UserError):
    pass


# A NaN or infinite training loss is looked for every this many optimizer steps (and at the epoch's end):
# one host sync (one all-reduce under torchrun) per check, so a long epoch trains at most this many steps
# on broken weights, and the loop stays free of a sync per step.
NONFINITE_CHECK_STEPS = 50


class Engine:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: Optional[torch.optim.Optimizer],
        schedule: Any,
        metric_names: Sequence[str],
        *,
        device: torch.device,
        loop: Optional[LoopSettings] = None,
        ema: Optional[Any] = None,
        batch_transform: Optional[BatchTransform] = None,
        target_values: Optional[torch.Tensor] = None,
        run_dir: Optional[str] = None,
        run_info: Optional[Dict[str, Any]] = None,
        callbacks: Sequence[Any] = (),
        place: Optional[Place] = None,
        stop_conditions: Sequence[Any] = (),
        step_checkpoints: Optional[StepCheckpoints] = None,
        val_ids: Optional[Sequence[str]] = None,
    ):
        self.loop = loop or LoopSettings()
        self.place = place or Place()
        self.device = device
        self.model = model.to(device)
        # Validation runs on the plain module: no DistributedDataParallel collectives for uneven shards.
        self.eval_model = unwrap(model) if self.place.world_size > 1 else self.model
        self.loss_fn = loss_fn.to(device)
        self.optimizer = optimizer
        self.schedule = schedule
        self.metric_names = list(metric_names)
        self.ema = ema
        # Applied to each training batch on the device: batched augmentation, mixup/cutmix (trainer.data.batch_augment)
        self.batch_transform = batch_transform or BatchTransform(seed=0)
        self.mixup = self.batch_transform.mixup
        # Regression: label i stands for the number target_values[i]; the model predicts one value.
        self.target_values = None if target_values is None else target_values.to(device)
        if self.mixup is not None and self.target_values is not None:
            raise UserError("mixup/cutmix mix class labels; they cannot be used with task=regression")
        self.files = RunFiles(run_dir, self.loop.save_top_k, self.loop.save_checkpoints)
        self.run_info = dict(run_info or {})
        self.val_ids = val_ids  # names of the validation images in best_outputs' order (oof_predictions.csv)
        self.callbacks = list(callbacks)
        self.stop_conditions = list(stop_conditions)  # (engine, record) -> None, or (status, reason): the run ends
        self.stop_reason: Optional[str] = None
        self.step_checkpoints = step_checkpoints or StepCheckpoints(place=self.place)  # last.ckpt inside epochs
        self.non_blocking = device.type == "cuda"
        self.memory_format = torch.channels_last if self.loop.channels_last else torch.contiguous_format
        dtype = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.loop.precision]
        self.autocast_dtype = dtype
        self.fp16 = self.loop.precision == "fp16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.fp16)  # fp16 only: bf16 and 32 need no scaling
        # The GradScaler skips optimizer.step() when the fp16 gradients overflowed, without saying so; the hook
        # counts the steps really taken, so a skipped one steps neither the schedule nor the EMA (no extra sync).
        self._optimizer_calls = 0
        if optimizer is not None:
            optimizer.register_step_post_hook(self._count_optimizer_call)
        # Progress of the run: all of it goes into checkpoints.
        self.epoch = 0
        self.optimizer_steps = 0
        self.best_value: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.best_step: Optional[int] = None
        self.bad_epochs = 0  # validations (not epochs) since the best one
        self.inside_epoch = False  # a checkpoint written now is inside an epoch (resumable only with a position)
        self.position: Optional[Dict[str, Any]] = None  # where in its epoch a step checkpoint is (step_checkpoints.py)
        self.skipped_steps = 0
        self.history: List[Dict[str, float]] = []
        self._resumed_rng: Optional[dict] = None
        # Validation outputs (logits, targets) of the last epoch by prefix ("val/", "val_ema/"), and those of
        # the best epoch's chosen weights (as in best.ckpt), on every rank: the end-of-run report needs no file.
        self.last_outputs: Dict[str, tuple] = {}
        self.best_outputs: Optional[tuple] = None
        self._rank_rng: Optional[list] = None  # every rank's random streams, for rank 0's checkpoints
        self.validations: Optional[ValidationSchedule] = None  # known once the training loader's length is
        self.since_record = TrainSinceRecord(count_correct=self.mixup is None and self.target_values is None)
        self.step_scalars = StepScalars(self.loop.log_every_n_steps if self.callbacks else None)  # rank 0's only

    @property
    def max_epochs(self) -> int:
        return self.loop.max_epochs

    @property
    def monitor(self) -> str:
        return self.loop.monitor

    # --- the loop ---------------------------------------------------------------------------
    def fit(self, train_loader, val_loader) -> Dict[str, Any]:
        if self._resumed_rng is not None:  # exactly where the checkpoint left every random stream
            set_rng_state(self._resumed_rng)
        self.validations = ValidationSchedule.of(self.loop, len(train_loader))
        self._notify("on_fit_start", len(train_loader), len(val_loader))
        status, error = "completed", None
        try:
            if self.epoch == 0 and self.position is None and self.files.keeps_checkpoints:
                self.files.save("last.ckpt", self.state_dict())  # an interruption in epoch 1 resumes from the start
            while not self.validations.run_over(self.epoch, self.optimizer_steps):
                stopped = self.run_epoch(train_loader, val_loader, self.epoch + 1)
                if stopped is not None:
                    status = stopped
                    break
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException as err:
            status, error = "failed", f"{type(err).__name__}: {err}"
            raise
        finally:
            summary = self.summary(status, error)
            self.files.write_summary(summary)
            self._notify("on_train_steps", self.step_scalars.flush())
            self._notify("on_fit_end", summary)
        return summary

    def run_epoch(self, train_loader, val_loader, epoch: int) -> Optional[str]:
        """Train `epoch`, validating where the schedule says; the status when the run stops there (early stopping,
        or a stop condition), else None."""
        self._notify("on_epoch_start", epoch)
        order = training_order(train_loader)
        if order is not None:
            order.set_epoch(epoch)  # the epoch's order and augmentation: functions of (seed, epoch, position) alone
        self.inside_epoch = True
        for epoch_over in self.train_parts(train_loader, epoch):
            # Each rank updated BatchNorm statistics (and the EMA's) from its own batches: average them, so
            # that what is validated below is the one model every rank saves and goes on with.
            average_buffers(self.place, unwrap(self.model), getattr(self.ema, "module", None))
            if epoch_over and not self.validations.validates_epoch(epoch, self.optimizer_steps):
                self.schedule.after_epoch(None)  # scheduler=plateau waits for the next validation
                self._end_epoch(epoch)
                if self.files.keeps_checkpoints:
                    self.files.save("last.ckpt", self.state_dict())
            else:
                stopped = self.validate_and_decide(val_loader, epoch, epoch_over)
                if stopped is not None:
                    return stopped
        return None

    def validate_and_decide(self, val_loader, epoch: int, epoch_over: bool) -> Optional[str]:
        """One validation: its record, best, schedule, checkpoints, callbacks; the status when the run stops here
        (early stopping, or one of `stop_conditions`, e.g. a pruned trial), else None. Where a run stops inside
        an epoch, that epoch ends there (it counts as run)."""
        record = {"epoch": epoch, "step": self.optimizer_steps, **self.since_record.record(), **self.validate(val_loader)}
        record["seconds"] = self.since_record.seconds()  # of the steps since the last record, and this validation
        if self.monitor not in record:
            raise UserError(f"monitor={self.monitor} was not produced; this run produces: {', '.join(record)}")
        monitored = record[self.monitor]
        improved = is_better(monitored, self.best_value, self.loop.mode, self.loop.min_delta)
        if improved:
            self.best_value, self.best_epoch, self.best_step, self.bad_epochs = monitored, epoch, self.optimizer_steps, 0
            self.best_outputs = self._chosen_outputs()
        else:
            self.bad_epochs += 1
        stop = "stopped_early" if self.loop.patience is not None and self.bad_epochs >= self.loop.patience else None
        if epoch_over or stop:
            self.schedule.after_epoch(monitored)
            self._end_epoch(epoch)
        else:
            self.schedule.after_validation_inside_epoch(monitored)
        self.history.append(record)
        self.files.after_epoch(epoch, self.monitor, monitored, self.loop.mode, improved, self.state_dict,
                               step=self.optimizer_steps if self.validations.inside_epochs else None,
                               save_last=not self.inside_epoch)
        self._notify("on_epoch_end", record, improved)
        ended = None if stop else next(filter(None, (condition(self, record) for condition in self.stop_conditions)), None)
        if ended is not None:  # asked with the record saved; a stop inside an epoch ends the epoch there
            stop, self.stop_reason = ended
            if self.inside_epoch:
                self._end_epoch(epoch)
                if self.files.keeps_checkpoints:
                    self.files.save("last.ckpt", self.state_dict())
        return stop

    def _end_epoch(self, epoch: int) -> None:
        self.epoch, self.inside_epoch = epoch, False
        self._notify("on_train_steps", self.step_scalars.flush())  # before last.ckpt: a resumed run cannot redo them
        if self.place.world_size > 1 and self.loop.save_checkpoints:  # each rank resumes its own streams
            self._rank_rng = all_gather_objects(self._own_rng(), self.place)

    def train_epoch(self, loader, epoch: int = 0) -> Dict[str, float]:
        """One epoch without validation (units, benchmarks): its train record (lr, train/loss, train/accuracy)."""
        self.validations = self.validations or ValidationSchedule.of(self.loop, len(loader))
        for _ in self.train_parts(loader, epoch, validate_inside=False):
            pass
        return {key: value for key, value in self.since_record.record().items() if key != "lr"}

    def train_parts(self, loader, epoch: int = 0, validate_inside: bool = True) -> Iterator[bool]:
        """Train one epoch, pausing (yield False) after the optimizer steps the validation schedule validates
        inside it, and yield True when the epoch is over: its last batch, or trainer.max_steps reached. At each
        pause the train totals of the steps since the last one go to `since_record`, with one reduction."""
        self.model.train()
        num_batches, accumulate = len(loader), self.loop.accumulate
        # Each micro-batch's mean loss is weighted by its share of its window's samples over all ranks (DDP averages
        # the ranks' gradients): the gradient is the mean over the samples, uneven last batches included.
        sizes = loader_batch_sizes(loader)
        scales = accumulation_scales(sizes, num_batches, accumulate, loader_global_sizes(loader), self.place.world_size)
        # Inside an accumulation window DDP need not all-reduce: only the window's last backward does.
        defer_sync = accumulate > 1 and hasattr(self.model, "no_sync")
        steps = StepTotals(count_correct=self.since_record.count_correct)  # no accuracy for mixed targets or values
        skip_nonfinite = self.loop.on_nonfinite == "skip"
        backwards = 0  # micro-batches of the open window that reached backward()
        # windows closed, and the first batch: a run resumed inside this epoch does not read the batches done
        first, windows = continue_inside_epoch(self, steps, loader)
        order = training_order(loader)  # the epoch's sampler: each sample's augmentation is keyed by its position
        self.since_record.start(self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        for i, (inputs, targets) in enumerate(loader, first):
            inputs, targets = self._to_device(inputs, targets)
            inputs, loss_targets = self.batch_transform(inputs, targets, epoch, i, order)  # augmentation; mixup: soft targets
            if self.target_values is not None:  # regression (never mixed): the number each label stands for
                loss_targets = self.target_values[targets]
            closes_window = (i + 1) % accumulate == 0 or i == num_batches - 1
            with self.model.no_sync() if defer_sync and not closes_window else contextlib.nullcontext():
                with self._autocast():
                    logits = self.model(inputs)
                    loss = self.loss_fn(logits, loss_targets)
                if skip_nonfinite and not torch.isfinite(loss):  # opt-in: one host sync per micro-batch
                    self.skipped_steps += 1
                else:
                    scaled = loss if scales[i] == 1.0 else loss * scales[i]
                    (self.scaler.scale(scaled) if self.fp16 else scaled).backward()
                    backwards += 1
            steps.add(loss, logits, targets, None if sizes is None else sizes[i])  # references only: no kernel, no host sync
            self._notify("on_batch_end", "train")
            if not closes_window:
                continue
            if backwards:  # a window whose every loss was skipped has no gradient to step with
                n = i % accumulate + 1
                self._optimizer_step(epoch, lambda: window_loss(steps.losses[-n:], scales[i + 1 - n:i + 1]))
            backwards, windows = 0, windows + 1
            if not skip_nonfinite and windows % NONFINITE_CHECK_STEPS == 0:
                self._check_finite(steps, epoch, num_batches)
            cut = self.validations.steps_done(self.optimizer_steps)
            if i < num_batches - 1 and (cut or validate_inside and self.validations.validates_inside(epoch, windows)):
                self.since_record.add(self._train_totals(steps, epoch, skip_nonfinite, num_batches))
                yield cut
                if cut:
                    return
                steps = StepTotals(steps.count_correct, first_step=i + 1)
                self.since_record.start(self.optimizer.param_groups[0]["lr"])
                self.model.train()  # validation left it in eval mode
            if i < num_batches - 1 and self.step_checkpoints.active:
                write_step_checkpoint(self, steps, epoch, i + 1, windows)
        self.since_record.add(self._train_totals(steps, epoch, skip_nonfinite, num_batches))
        yield True

    def _check_finite(self, steps: StepTotals, epoch: int, num_batches: int) -> None:
        """Stop if a loss kept since the last check is NaN or infinite: one sync, one all-reduce (all ranks stop)."""
        if all_reduce_sum(steps.non_finite_since_check(self.device), self.place).item() > 0:
            raise NonFiniteLoss(steps.non_finite_report(self.device, epoch, num_batches))

    def _train_totals(self, steps: StepTotals, epoch: int, skip_nonfinite: bool, num_batches: int) -> torch.Tensor:
        """The totals of a part of an epoch (StepTotals.epoch_totals), summed over ranks; stops on a non-finite loss."""
        # One reduction per part: every rank sees the same totals and takes the same decisions.
        totals = all_reduce_sum(steps.epoch_totals(steps.step_losses(self.device)), self.place)
        if not skip_nonfinite and totals[4] > 0:
            raise NonFiniteLoss(steps.non_finite_report(self.device, epoch, num_batches))
        return totals

    def _count_optimizer_call(self, optimizer, args, kwargs) -> None:
        self._optimizer_calls += 1

    def _optimizer_step(self, epoch: int = 0, loss_of_window=None) -> None:
        logged, norm = self.step_scalars.wants(self.optimizer_steps + 1), None  # keep its loss, lr and gradient norm?
        if logged or self.loop.grad_clip_norm is not None or self.loop.grad_clip_value is not None:
            self.scaler.unscale_(self.optimizer)  # clip (and measure) the true gradients, not the fp16-scaled ones
            if self.loop.grad_clip_norm is not None:  # the norm before clipping, as logged
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.loop.grad_clip_norm)
            elif logged:
                norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
            if self.loop.grad_clip_value is not None:
                torch.nn.utils.clip_grad_value_(self.model.parameters(), self.loop.grad_clip_value)
        lr, calls = self.optimizer.param_groups[0]["lr"], self._optimizer_calls
        if self.fp16:
            self.scaler.step(self.optimizer)  # skipped if the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self._optimizer_calls == calls:
            return  # the GradScaler skipped it: not an optimizer step for the count, the EMA or the schedule
        self.optimizer_steps += 1
        if self.ema is not None:
            self.ema.update(unwrap(self.model), step=self.optimizer_steps)
        self.schedule.after_optimizer_step()
        if logged and loss_of_window is not None:  # the rows kept N steps ago are read now
            self._notify("on_train_steps", self.step_scalars.keep(self.optimizer_steps, epoch, loss_of_window, lr, norm))

    @torch.inference_mode()
    def predict(self, loader, model: Optional[nn.Module] = None):
        """Logits (float32) and targets of a whole loader, each one tensor on the device."""
        model = self.eval_model if model is None else model
        model.eval()
        logits, targets = [], []
        for inputs, target in loader:
            inputs, target = self._to_device(inputs, target)
            with self._autocast():
                logits.append(model(inputs))
            targets.append(target)
            self._notify("on_batch_end", "val")
        return gather_in_order(torch.cat(logits).float(), self.place), gather_in_order(torch.cat(targets), self.place)

    @torch.inference_mode()
    def validate(self, loader) -> Dict[str, float]:
        self.last_outputs = {"val/": self.predict(loader)}
        if self.ema is not None:
            self.last_outputs["val_ema/"] = self.predict(loader, self.ema.module)
        record = {}
        for prefix, outputs in self.last_outputs.items():
            record.update(self.score(*outputs, prefix=prefix))
        return record

    def _chosen_outputs(self) -> tuple:
        """On the CPU, the last validation outputs of the weights a checkpoint is chosen by (chosen_weights)."""
        prefix = "val_ema/" if monitors_ema(self.monitor) and "val_ema/" in self.last_outputs else "val/"
        return tuple(t.cpu() for t in self.last_outputs[prefix])

    def score(self, outputs: torch.Tensor, targets: torch.Tensor, prefix: str = "val/") -> Dict[str, float]:
        """Loss and metrics of one whole epoch's predictions."""
        if self.target_values is None:
            return epoch_metrics(self.metric_names, outputs, targets, self.loss_fn, prefix)
        return epoch_regression_metrics(self.metric_names, outputs, self.target_values[targets], self.loss_fn, prefix)

    def _to_device(self, inputs: torch.Tensor, targets: torch.Tensor):
        inputs = inputs.to(self.device, non_blocking=self.non_blocking)
        if inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=self.memory_format)
        return inputs, targets.to(self.device, non_blocking=self.non_blocking)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return run_state.state_of(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from a checkpoint written by `state_dict` (the model weights included)."""
        run_state.load_into(self, state)

    def _own_rng(self) -> Dict[str, Any]:
        return run_state.own_rng(self)

    def summary(self, status: str, error: Optional[str] = None) -> Dict[str, Any]:
        return run_state.summary_of(self, status, error)

    def _notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            handler = getattr(callback, event, None)  # on_train_steps is new: older observers lack it
            if handler is not None and (event != "on_train_steps" or args[0]):
                handler(self, *args)
