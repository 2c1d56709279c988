"""The Engine: the one place where the train loop lives.

    fit:          for each epoch: train_epoch, validate, pick best, step the schedule, save, stop early?
    train_epoch:  model.train(); micro-batches with gradient accumulation; no host sync per step
    validate:     model.eval() under torch.inference_mode(); loss and metrics from the whole epoch

Callbacks only watch (progress, logs, files); every decision that changes the run is made here,
in the order written below.
"""

import json
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from trainer.checkpoint import rng_state, save_checkpoint
from trainer.metrics import compute_metrics


def accumulation_scales(batch_sizes: Optional[Sequence[int]], num_batches: int, accumulate: int) -> List[float]:
    """The factor each micro-batch's mean loss is multiplied by before backward().

    Micro-batches are grouped into windows of `accumulate` (the last window may be shorter). With the
    batch sizes known, each loss is weighted by its share of the window's samples, so a window's
    gradient equals that of one batch made of all its samples, the uneven last batch included.
    """
    scales = []
    for start in range(0, num_batches, accumulate):
        window = range(start, min(start + accumulate, num_batches))
        if batch_sizes is None:
            scales += [1.0 / len(window)] * len(window)
        else:
            total = sum(batch_sizes[i] for i in window)
            scales += [batch_sizes[i] / total for i in window]
    return scales


def loader_batch_sizes(loader) -> Optional[List[int]]:
    """Sizes of the batches a DataLoader will yield, when they can be known before iterating."""
    batch_size = getattr(loader, "batch_size", None)
    sampler = getattr(loader, "sampler", None)
    if batch_size is None or sampler is None or not hasattr(sampler, "__len__"):
        return None
    n = len(sampler)
    full, rest = divmod(n, batch_size)
    sizes = [batch_size] * full + ([rest] if rest and not loader.drop_last else [])
    return sizes if len(sizes) == len(loader) else None


def is_better(value: float, best: Optional[float], mode: str, min_delta: float = 0.0) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: such values are written as null."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
        max_epochs: int = 1,
        accumulate: int = 1,
        monitor: str = "val/loss",
        mode: str = "min",
        patience: Optional[int] = None,
        min_delta: float = 0.0,
        grad_clip_norm: Optional[float] = None,
        run_dir: Optional[str] = None,
        run_info: Optional[Dict[str, Any]] = None,
        callbacks: Sequence[Any] = (),
    ):
        self.device = device
        self.model = model.to(device)
        self.loss_fn = loss_fn.to(device)
        self.optimizer = optimizer
        self.schedule = schedule
        self.metric_names = list(metric_names)
        self.max_epochs = max_epochs
        self.accumulate = accumulate
        self.monitor, self.mode = monitor, mode
        self.patience, self.min_delta = patience, min_delta
        self.grad_clip_norm = grad_clip_norm
        self.run_dir = run_dir
        self.run_info = dict(run_info or {})
        self.callbacks = list(callbacks)
        self.non_blocking = device.type == "cuda"
        # Progress of the run: all of it goes into checkpoints.
        self.epoch = 0
        self.best_value: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.bad_epochs = 0
        self.history: List[Dict[str, float]] = []

    # --- the loop ---------------------------------------------------------------------------
    def fit(self, train_loader, val_loader) -> Dict[str, Any]:
        self._notify("on_fit_start", len(train_loader), len(val_loader))
        status = "completed"
        try:
            while self.epoch < self.max_epochs:
                epoch = self.epoch + 1
                started = time.perf_counter()
                self._notify("on_epoch_start", epoch)
                lr = self.optimizer.param_groups[0]["lr"]
                record = {"epoch": epoch, "lr": lr, **self.train_epoch(train_loader), **self.validate(val_loader)}
                record["seconds"] = time.perf_counter() - started
                monitored = record[self.monitor]
                improved = is_better(monitored, self.best_value, self.mode, self.min_delta)
                if improved:
                    self.best_value, self.best_epoch, self.bad_epochs = monitored, epoch, 0
                else:
                    self.bad_epochs += 1
                self.schedule.step(monitored)
                self.epoch = epoch
                self.history.append(record)
                self._save_checkpoints(improved)
                self._notify("on_epoch_end", record, improved)
                if self.patience is not None and self.bad_epochs >= self.patience:
                    status = "stopped_early"
                    break
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            summary = self.summary(status)
            self._write_summary(summary)
            self._notify("on_fit_end", summary)
        return summary

    def train_epoch(self, loader) -> Dict[str, float]:
        self.model.train()
        scales = accumulation_scales(loader_batch_sizes(loader), len(loader), self.accumulate)
        last = len(scales) - 1
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        self.optimizer.zero_grad(set_to_none=True)
        for i, (inputs, targets) in enumerate(loader):
            inputs = inputs.to(self.device, non_blocking=self.non_blocking)
            targets = targets.to(self.device, non_blocking=self.non_blocking)
            logits = self.model(inputs)
            loss = self.loss_fn(logits, targets)
            (loss * scales[i]).backward()
            if (i + 1) % self.accumulate == 0 or i == last:
                if self.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(targets)
            correct += (logits.detach().argmax(dim=1) == targets).sum()
            seen += len(targets)
            self._notify("on_batch_end", "train")
        return {"train/loss": loss_sum.item() / seen, "train/accuracy": correct.item() / seen}

    @torch.inference_mode()
    def predict(self, loader):
        """Logits and targets of a whole loader, each one tensor on the device."""
        self.model.eval()
        logits, targets = [], []
        for inputs, target in loader:
            logits.append(self.model(inputs.to(self.device, non_blocking=self.non_blocking)))
            targets.append(target)
            self._notify("on_batch_end", "val")
        return torch.cat(logits).float(), torch.cat(targets).to(self.device)

    @torch.inference_mode()
    def validate(self, loader) -> Dict[str, float]:
        logits, targets = self.predict(loader)
        loss = self.loss_fn(logits, targets)
        prob = torch.softmax(logits, dim=1).cpu().numpy()
        return {"val/loss": loss.item(), **compute_metrics(self.metric_names, targets.cpu().numpy(), prob)}

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        model = getattr(self.model, "module", self.model)  # unwrapped (DDP, compile)
        return {
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "epoch": self.epoch,
            "monitor": self.monitor,
            "mode": self.mode,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "rng": rng_state(),
            **self.run_info,
        }

    def summary(self, status: str) -> Dict[str, Any]:
        return {
            "status": status,
            "monitor": self.monitor,
            "mode": self.mode,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "epochs_run": self.epoch,
            "final": self.history[-1] if self.history else {},
        }

    def _save_checkpoints(self, improved: bool) -> None:
        if self.run_dir is None:
            return
        state = self.state_dict()
        directory = os.path.join(self.run_dir, "checkpoints")
        if improved:
            save_checkpoint(state, os.path.join(directory, "best.ckpt"))
        save_checkpoint(state, os.path.join(directory, "last.ckpt"))

    def _write_summary(self, summary: Dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        path = os.path.join(self.run_dir, "summary.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(finite_or_none(summary), f, indent=2)
        os.replace(tmp, path)

    def _notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)
