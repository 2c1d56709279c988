"""The Engine: the one place where the train loop lives.

    fit:          for each epoch: train_epoch, validate, pick best, step the schedule, save, stop (early, or on a stop condition)?
    train_epoch:  model.train(); micro-batches with exact gradient accumulation; no host sync per step
    validate:     model.eval() under torch.inference_mode(); loss and metrics from the whole epoch

Callbacks only watch (progress, logs, files); every decision that changes the run is made here,
in the order written below.
"""

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from trainer.batches import accumulation_scales, loader_batch_sizes
from trainer.checkpoint import monitors_ema, rng_state, set_rng_state
from trainer.distributed import Place, all_reduce_sum, all_gather_objects, average_buffers, gather_in_order, unwrap
from trainer.errors import UserError
from trainer.metrics import epoch_metrics, epoch_regression_metrics
from trainer.run_files import RunFiles
from trainer.step_totals import StepTotals


@dataclass
class LoopSettings:
    max_epochs: int = 1
    accumulate: int = 1
    precision: str = "32"  # 32 | bf16 | fp16
    grad_clip_norm: Optional[float] = None
    grad_clip_value: Optional[float] = None
    channels_last: bool = False
    on_nonfinite: str = "stop"  # stop | skip
    monitor: str = "val/loss"
    mode: str = "min"
    patience: Optional[int] = None
    min_delta: float = 0.0
    save_top_k: int = 0
    save_checkpoints: bool = True


class NonFiniteLoss(UserError):
    pass


# A NaN or infinite training loss is looked for every this many optimizer steps (and at the epoch's end):
# one host sync (one all-reduce under torchrun) per check, so a long epoch trains at most this many steps
# on broken weights, and the loop stays free of a sync per step.
NONFINITE_CHECK_STEPS = 50


def is_better(value: float, best: Optional[float], mode: str, min_delta: float = 0.0) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


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
        mixup: Optional[Any] = None,
        target_values: Optional[torch.Tensor] = None,
        run_dir: Optional[str] = None,
        run_info: Optional[Dict[str, Any]] = None,
        callbacks: Sequence[Any] = (),
        place: Optional[Place] = None,
        stop_conditions: Sequence[Any] = (),
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
        self.mixup = mixup
        # Regression: label i stands for the number target_values[i]; the model predicts one value.
        self.target_values = None if target_values is None else target_values.to(device)
        if self.mixup is not None and self.target_values is not None:
            raise UserError("mixup/cutmix mix class labels; they cannot be used with task=regression")
        self.files = RunFiles(run_dir, self.loop.save_top_k, self.loop.save_checkpoints)
        self.run_info = dict(run_info or {})
        self.callbacks = list(callbacks)
        self.stop_conditions = list(stop_conditions)  # (engine, record) -> None, or (status, reason): the run ends
        self.stop_reason: Optional[str] = None
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
        self.bad_epochs = 0
        self.skipped_steps = 0
        self.history: List[Dict[str, float]] = []
        self._train_generator: Optional[torch.Generator] = None  # the training loader's shuffling
        self._resumed_rng: Optional[tuple] = None
        # Validation outputs (logits, targets) of the last epoch by prefix ("val/", "val_ema/"), and those of
        # the best epoch's chosen weights (as in best.ckpt), on every rank: the end-of-run report needs no file.
        self.last_outputs: Dict[str, tuple] = {}
        self.best_outputs: Optional[tuple] = None
        self._rank_rng: Optional[list] = None  # every rank's random streams, for rank 0's checkpoints

    @property
    def max_epochs(self) -> int:
        return self.loop.max_epochs

    @property
    def monitor(self) -> str:
        return self.loop.monitor

    # --- the loop ---------------------------------------------------------------------------
    def fit(self, train_loader, val_loader) -> Dict[str, Any]:
        self._train_generator = getattr(train_loader, "generator", None)
        if self._resumed_rng is not None:  # exactly where the checkpoint left every random stream
            generators, loader_state = self._resumed_rng
            set_rng_state(generators)
            if loader_state is not None and self._train_generator is not None:
                self._train_generator.set_state(loader_state)
        self._notify("on_fit_start", len(train_loader), len(val_loader))
        status, error = "completed", None
        try:
            if self.epoch == 0 and self.files.keeps_checkpoints:
                self.files.save("last.ckpt", self.state_dict())  # an interruption in epoch 1 resumes from the start
            while self.epoch < self.loop.max_epochs:
                epoch = self.epoch + 1
                started = time.perf_counter()
                self._notify("on_epoch_start", epoch)
                sampler = getattr(train_loader, "sampler", None)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)  # DistributedSampler: a new permutation each epoch
                lr = self.optimizer.param_groups[0]["lr"]
                trained = self.train_epoch(train_loader, epoch)
                # Each rank updated BatchNorm statistics (and the EMA's) from its own batches: average them, so
                # that what is validated below is the one model every rank saves and goes on with.
                average_buffers(self.place, unwrap(self.model), getattr(self.ema, "module", None))
                record = {"epoch": epoch, "lr": lr, **trained, **self.validate(val_loader)}
                record["seconds"] = time.perf_counter() - started
                if self.monitor not in record:
                    raise UserError(f"monitor={self.monitor} was not produced; this run produces: {', '.join(record)}")
                monitored = record[self.monitor]
                improved = is_better(monitored, self.best_value, self.loop.mode, self.loop.min_delta)
                if improved:
                    self.best_value, self.best_epoch, self.bad_epochs = monitored, epoch, 0
                    self.best_outputs = self._chosen_outputs()
                else:
                    self.bad_epochs += 1
                self.schedule.after_epoch(monitored)
                self.epoch = epoch
                self.history.append(record)
                if self.place.world_size > 1 and self.loop.save_checkpoints:  # each rank resumes its own streams
                    self._rank_rng = all_gather_objects(self._own_rng(), self.place)
                self.files.after_epoch(epoch, self.monitor, monitored, self.loop.mode, improved, self.state_dict)
                self._notify("on_epoch_end", record, improved)
                if self.loop.patience is not None and self.bad_epochs >= self.loop.patience:
                    status = "stopped_early"
                    break
                stop = next(filter(None, (condition(self, record) for condition in self.stop_conditions)), None)
                if stop is not None:
                    status, self.stop_reason = stop
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
            self._notify("on_fit_end", summary)
        return summary

    def train_epoch(self, loader, epoch: int = 0) -> Dict[str, float]:
        self.model.train()
        num_batches, accumulate = len(loader), self.loop.accumulate
        scales = accumulation_scales(loader_batch_sizes(loader), num_batches, accumulate)
        # Inside an accumulation window DDP need not all-reduce: only the window's last backward does.
        defer_sync = accumulate > 1 and hasattr(self.model, "no_sync")
        # No accuracy for mixed targets or for values (regression).
        steps = StepTotals(count_correct=self.mixup is None and self.target_values is None)
        skip_nonfinite = self.loop.on_nonfinite == "skip"
        backwards = 0  # micro-batches of the open window that reached backward()
        windows = 0
        self.optimizer.zero_grad(set_to_none=True)
        for i, (inputs, targets) in enumerate(loader):
            inputs, targets = self._to_device(inputs, targets)
            loss_targets = targets if self.target_values is None else self.target_values[targets]
            if self.mixup is not None:  # soft targets for the configured loss (every loss has a soft form)
                inputs, loss_targets = self.mixup(inputs, targets)
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
            steps.add(loss, logits, targets)  # references only: no kernel, no host sync
            if closes_window:
                if backwards:  # a window whose every loss was skipped has no gradient to step with
                    self._optimizer_step()
                backwards, windows = 0, windows + 1
                if not skip_nonfinite and windows % NONFINITE_CHECK_STEPS == 0:
                    self._check_finite(steps, epoch, num_batches)
            self._notify("on_batch_end", "train")
        return self._train_record(steps, epoch, skip_nonfinite, num_batches)

    def _check_finite(self, steps: StepTotals, epoch: int, num_batches: int) -> None:
        """Stop if a loss kept since the last check is NaN or infinite: one sync, one all-reduce (all ranks stop)."""
        if all_reduce_sum(steps.non_finite_since_check(self.device), self.place).item() > 0:
            raise NonFiniteLoss(steps.non_finite_report(self.device, epoch, num_batches))

    def _train_record(self, steps: StepTotals, epoch: int, skip_nonfinite: bool, num_batches: int) -> Dict[str, float]:
        """train/loss (the sample-weighted mean of the finite step losses) and train/accuracy of one epoch."""
        step_losses = steps.step_losses(self.device)
        # One reduction per epoch: every rank sees the same totals and takes the same decisions.
        weighted_loss, finite_samples, samples, correct, non_finite = all_reduce_sum(steps.epoch_totals(step_losses), self.place)
        if not skip_nonfinite and non_finite > 0:
            raise NonFiniteLoss(steps.non_finite_report(self.device, epoch, num_batches))
        record = {"train/loss": (weighted_loss / finite_samples).item()}
        if steps.count_correct:
            record["train/accuracy"] = (correct / samples).item()
        return record

    def _count_optimizer_call(self, optimizer, args, kwargs) -> None:
        self._optimizer_calls += 1

    def _optimizer_step(self) -> None:
        if self.loop.grad_clip_norm is not None or self.loop.grad_clip_value is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
            if self.loop.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.loop.grad_clip_norm)
            if self.loop.grad_clip_value is not None:
                torch.nn.utils.clip_grad_value_(self.model.parameters(), self.loop.grad_clip_value)
        calls = self._optimizer_calls
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
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": None if self.ema is None else self.ema.module.state_dict(),
            "epoch": self.epoch,
            "optimizer_steps": self.optimizer_steps,
            "monitor": self.loop.monitor,
            "mode": self.loop.mode,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "skipped_steps": self.skipped_steps,
            "top_k": self.files.top_k,
            "history": self.history,
            **self._own_rng(),
            "rank_rng": self._rank_rng,
            **self.run_info,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from a checkpoint written by `state_dict` (the model weights included)."""
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        for key in ("epoch", "optimizer_steps", "best_value", "best_epoch", "bad_epochs", "skipped_steps", "history"):
            setattr(self, key, state[key])
        self.files.top_k = state["top_k"]
        ranks = state.get("rank_rng") or []  # a rank the checkpoint lacks (more processes) keeps its fresh seeding
        own = state if self.place.rank == 0 else ranks[self.place.rank] if len(ranks) == self.place.world_size else None
        self._resumed_rng = None if own is None else (own["rng"], own.get("loader_rng"))

    def _own_rng(self) -> Dict[str, Any]:
        return {"rng": rng_state(),
                "loader_rng": None if self._train_generator is None else self._train_generator.get_state()}

    def summary(self, status: str, error: Optional[str] = None) -> Dict[str, Any]:
        summary = {
            "status": status,
            "monitor": self.loop.monitor,
            "mode": self.loop.mode,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "epochs_run": self.epoch,
            "final": self.history[-1] if self.history else {},
        }
        if self.skipped_steps:
            summary["skipped_nonfinite_steps"] = self.skipped_steps
        if status == "stopped_early":
            summary["reason"] = (
                f"{self.loop.monitor} did not improve by more than {self.loop.min_delta} for {self.loop.patience} epochs"
            )
        elif self.stop_reason is not None:
            summary["reason"] = self.stop_reason
        if error is not None:
            summary["error"] = error
        return summary

    def _notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)
