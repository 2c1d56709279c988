"""What a training epoch keeps of its steps: each step's loss and batch size, and for train accuracy
its outputs, all as references on the device. No host sync and no kernel per step; the argmax for
accuracy runs over many steps' outputs at once; the epoch ends with one reduction (`epoch_totals`).
Every few optimizer steps the engine asks whether a loss kept since its last look was non-finite
(`non_finite_since_check`): one small kernel and one sync per check, not per step.
"""

from typing import List, Optional

import torch


class StepTotals:
    def __init__(self, count_correct: bool, chunk_elements: int = 1 << 20, first_step: int = 0):
        """count_correct: False for mixed (soft) targets and for regression, which have no accuracy.
        chunk_elements: outputs kept before they are reduced to a count of correct predictions
        (4 MiB of float32), so memory stays bounded whatever the epoch's length.
        first_step: the micro-batches of the epoch before these (a part of an epoch after a validation in it)."""
        self.count_correct = count_correct
        self.first_step = first_step
        self.chunk_elements = chunk_elements
        self.losses: List[torch.Tensor] = []
        self.sizes: List[int] = []
        self._outputs: List[torch.Tensor] = []
        self._targets: List[torch.Tensor] = []
        self._elements = 0
        self._correct: List[torch.Tensor] = []
        self._checked = 0  # steps whose loss non_finite_since_check has looked at

    def add(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, size: Optional[int] = None) -> None:
        """size: the batch's real samples where fewer than its rows (a rank's stand-in sample: trainer.data.sampling)."""
        if size is not None and size < targets.shape[0]:
            outputs, targets = outputs[:size], targets[:size]
        self.losses.append(loss.detach())
        self.sizes.append(targets.shape[0])
        if self.count_correct:
            self._outputs.append(outputs.detach())
            self._targets.append(targets)
            self._elements += outputs.numel()
            if self._elements >= self.chunk_elements:
                self._count_correct()

    def _count_correct(self) -> None:
        if self._outputs:
            predicted = torch.cat(self._outputs).argmax(dim=1)
            self._correct.append((predicted == torch.cat(self._targets)).sum())
            self._outputs, self._targets, self._elements = [], [], 0

    def step_losses(self, device: torch.device) -> torch.Tensor:
        """Every step's loss, float32, in step order."""
        return torch.stack(self.losses).float() if self.losses else torch.zeros(0, device=device)

    def epoch_totals(self, step_losses: torch.Tensor) -> torch.Tensor:
        """[sum of size * loss over finite steps, samples of finite steps, all samples, correct, non-finite steps]:
        one tensor, so processes can add theirs together with one all-reduce."""
        sizes = torch.tensor(self.sizes, dtype=torch.float32).to(step_losses.device)
        finite = torch.isfinite(step_losses)
        self._count_correct()
        correct = torch.stack(self._correct).sum().float() if self._correct else sizes.new_zeros(())
        return torch.stack([
            torch.where(finite, step_losses * sizes, 0.0).sum(), torch.where(finite, sizes, 0.0).sum(), sizes.sum(),
            correct, (~finite).sum().float(),
        ])

    def first_non_finite(self, step_losses: torch.Tensor) -> Optional[int]:
        """The 1-based number of the first step whose loss is NaN or infinite, or None."""
        bad = (~torch.isfinite(step_losses)).nonzero()
        return int(bad[0]) + 1 if len(bad) else None

    def non_finite_since_check(self, device: torch.device) -> torch.Tensor:
        """How many losses kept since the last call are NaN or infinite, as a device tensor (no sync here)."""
        new, self._checked = self.losses[self._checked:], len(self.losses)
        if not new:
            return torch.zeros(1, device=device)
        return (~torch.isfinite(torch.stack(new).float())).sum().float().reshape(1)

    def non_finite_report(self, device: torch.device, epoch: int, num_batches: int) -> str:
        """What a run that stops for a non-finite loss says: the first such step, and how far the epoch went."""
        step_losses = self.step_losses(device)
        step = self.first_non_finite(step_losses)
        if step is None:
            return f"the training loss became non-finite on another process in epoch {epoch}"
        return (
            f"the training loss became {step_losses[step - 1].item()} in epoch {epoch}, step {self.first_step + step} "
            f"of {num_batches} (stopped after step {self.first_step + len(step_losses)}; best.ckpt is untouched); "
            "lower optimizer.lr, set "
            "trainer.grad_clip_norm, or skip such steps with trainer.on_nonfinite=skip"
        )
