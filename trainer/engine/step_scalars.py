"""Per-step scalars for long runs: every N-th optimizer step's train loss, learning rate and gradient norm.

The Engine keeps them as device tensors (the learning rate is a Python number already) and reads them
back in one transfer when the next N-th step is kept, N steps later, when the device has long finished
them: one host sync per N steps, none per step, and none that waits for the step just launched. The rows
go to the callbacks' `on_train_steps(engine, rows)` (metrics_steps.csv, TensorBoard); the rest are read
when the run ends. Under torchrun the loss is rank 0's own window; the gradient norm is that of the
all-reduced gradients, the same on every rank.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch



def window_loss(losses: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
    """The loss an optimizer step's gradient was computed from: its micro-batches' losses, each weighted by its
    accumulation scale (their share of the window's samples), as a device tensor."""
    stacked = torch.stack(list(losses)).float()
    return (stacked * torch.tensor(list(scales), dtype=torch.float32, device=stacked.device)).sum()


class StepScalars:
    def __init__(self, every: Optional[int]):
        """every: keep every N-th optimizer step; 0 or None keeps none."""
        self.every = every or 0
        self.kept: List[tuple] = []  # (step, epoch, loss tensor, lr, grad-norm tensor)

    def wants(self, step: int) -> bool:
        """Whether optimizer step number `step` (1-based, over the whole run) is kept."""
        return self.every > 0 and step % self.every == 0

    def keep(self, step: int, epoch: int, loss: Callable[[], torch.Tensor], lr: float,
             grad_norm: torch.Tensor) -> List[Dict[str, Any]]:
        """Keep this step's scalars; return the rows of the steps kept before it, read from the device now."""
        ready, self.kept = self.kept, []
        self.kept.append((step, epoch, loss().detach(), lr, grad_norm.detach()))
        return read(ready)

    def flush(self) -> List[Dict[str, Any]]:
        """Every row still kept (at the end of the run)."""
        ready, self.kept = self.kept, []
        return read(ready)


def read(kept: List[tuple]) -> List[Dict[str, Any]]:
    """One device-to-host transfer for all of them."""
    if not kept:
        return []
    values = torch.stack([torch.stack([loss.float(), norm.float().to(loss.device)]) for _, _, loss, _, norm in kept])
    return [{"step": step, "epoch": epoch, "train/loss": loss, "lr": lr, "grad_norm": norm}
            for (step, epoch, _, lr, _), (loss, norm) in zip(kept, values.tolist())]
