"""One epoch's labels and class scores, and the counts that every metric in trainer/metrics.py is made
of: each computed once however many metrics use it, vectorised in torch on the device that holds the
predictions, in memory bounded by a few blocks of `ROW_CHUNK` or `CHUNK` elements and a few numbers per
image: at 50,000 x 1,000 some 100 MiB besides the logits, where a float64 copy of them alone is 400 MiB.

The scores are the float64 log-softmax of the logits (`from_logits`), or the scores given (`from_scores`:
probabilities or anything else in the same order). The N x C float64 log-softmax is never held whole:
a row's scores are its logits (made exact in float64) less one float64 number per row, the row's
log-sum-exp (`offsets`), recomputed, bit for bit the same, for each block of rows or columns that needs
them (`log_softmax()` makes the whole of it, for callers that want it).

Two kinds of counts:
- within an image (a row): its predicted class, and how many classes score above and level with its
  true class (`greater`, `tied`): accuracy, F1..., top-k, mrr, ndcg;
- within a class (a column): for each image, how many images score below and level with it in the
  column of its own class (`below`, `level`), and how many of those are of that class (`positives_below`):
  roc_auc and map. Each column is sorted once, and each image finds its place by binary search.
"""

from functools import cached_property
from typing import Optional, Tuple

import numpy as np
import torch

# Elements worked on at once, in a block of rows or of columns: 4M (32 MiB of float64). Smaller row blocks
# stay in the cache between the operations on them (5% less CPU time at 256K), but each operation is a
# parallel region of torch's threads, and on a loaded machine every region waits for a descheduled thread.
ROW_CHUNK = 1 << 22
CHUNK = 1 << 22
TILE_ROWS = 256


def _sort_rows(block: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending. On a CPU numpy's vectorised sort does it in place (torch's CPU sort is an
    order of magnitude slower on float64), in as many threads as torch uses; elsewhere torch.sort."""
    if block.device.type != "cpu":
        return torch.sort(block, dim=1).values
    rows = block.numpy()
    threads = min(torch.get_num_threads(), len(rows))
    if threads < 2:
        rows.sort(axis=1)
        return block
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL while it sorts
        list(pool.map(lambda part: part.sort(axis=1), np.array_split(rows, threads)))
    return block


class EpochPredictions:
    """Labels (N,) and scores (N, C) of one epoch: for logits, the scores are values.double() - offsets[:, None]
    (their float64 log-softmax); otherwise the values themselves."""

    def __init__(self, labels: torch.Tensor, values: torch.Tensor, logits: bool):
        self.values = values
        self.logits = logits
        self.labels = labels.to(values.device, torch.long)
        self.num_images, self.num_classes = values.shape
        self.device = values.device

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor) -> "EpochPredictions":
        """Scores are the float64 log-softmax of the logits."""
        logits = logits.detach()
        if not logits.is_floating_point():
            logits = logits.to(torch.float64)
        return cls(labels.detach(), logits, True)

    @classmethod
    def from_scores(cls, labels, scores) -> "EpochPredictions":
        """Scores as given (tensors or numpy arrays): probabilities, log-probabilities or other scores."""
        scores = torch.as_tensor(scores).detach()
        if not scores.is_floating_point():
            scores = scores.to(torch.float64)
        return cls(torch.as_tensor(labels).detach(), scores, False)

    def log_softmax(self) -> torch.Tensor:
        """The scores as one float64 (N, C) tensor (for callers that want them whole)."""
        scores = self._scores(0, self.num_images, torch.empty(self.values.shape, dtype=torch.float64, device=self.device))
        return scores.to(torch.float64)

    @property
    def offsets(self) -> Optional[torch.Tensor]:
        """Each row's float64 log-sum-exp (N,) for logits (NaN in a row holding NaN or +inf), else None."""
        return self._row_counts[5]

    def _scores(self, start: int, stop: int, buffer: Optional[torch.Tensor]) -> torch.Tensor:
        """Rows start:stop of the scores: the values themselves for scores, else float64 in `buffer`."""
        values = self.values[start:stop]
        if not self.logits:
            return values
        return buffer[: len(values)].copy_(values).sub_(self.offsets[start:stop, None])

    # --- within an image -----------------------------------------------------------------------
    @cached_property
    def _row_counts(self) -> Tuple[torch.Tensor, ...]:
        """One pass over the rows, a chunk at a time: the logits' normalisers, then the scores' counts."""
        n, c, device = self.num_images, self.num_classes, self.device
        predicted = torch.empty(n, dtype=torch.long, device=device)
        true_scores = torch.empty(n, dtype=torch.float64 if self.logits else self.values.dtype, device=device)
        greater = torch.empty(n, dtype=torch.long, device=device)
        tied = torch.empty(n, dtype=torch.long, device=device)
        offsets = torch.empty(n, dtype=torch.float64, device=device) if self.logits else None
        nan = torch.zeros((), dtype=torch.bool, device=device)
        rows = max(1, ROW_CHUNK // max(1, c))
        work = torch.empty((min(rows, n), c), dtype=torch.float64, device=device) if self.logits else None
        flags = torch.empty((min(rows, n), c), dtype=torch.bool, device=device)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            values, mask = self.values[start:stop], flags[: stop - start]
            if self.logits:
                scores = work[: stop - start]
                top = values.amax(dim=1).to(torch.float64)
                scores.copy_(values).sub_(top[:, None]).exp_()
                offsets[start:stop] = norm = scores.sum(dim=1).log_().add_(top)
                scores.copy_(values).sub_(norm[:, None])  # the float64 log-softmax
            else:
                scores = values
                nan |= torch.ne(scores, scores, out=mask).any()  # only NaN differs from itself
            predicted[start:stop] = scores.argmax(dim=1)  # the first of tied maxima, as numpy's argmax
            true = scores.gather(1, self.labels[start:stop, None])
            true_scores[start:stop] = true[:, 0]
            greater[start:stop] = torch.gt(scores, true, out=mask).sum(dim=1)
            tied[start:stop] = torch.eq(scores, true, out=mask).sum(dim=1)
        if self.logits:
            nan = offsets.isnan().any()  # a NaN or +inf logit makes its row's normaliser NaN
        return predicted, true_scores, greater, tied, nan, offsets

    @property
    def predicted(self) -> torch.Tensor:
        """Each image's highest-scoring class (N,); the lowest index among tied maxima."""
        return self._row_counts[0]

    @property
    def true_scores(self) -> torch.Tensor:
        """Each image's score for its true class (N,)."""
        return self._row_counts[1]

    @property
    def greater(self) -> torch.Tensor:
        """How many classes score above each image's true class (N,)."""
        return self._row_counts[2]

    @property
    def tied(self) -> torch.Tensor:
        """How many classes score the same as each image's true class, itself included (N,): 1 without ties."""
        return self._row_counts[3]

    @cached_property
    def has_nan(self) -> bool:
        """Whether any score is NaN (a ranking of them is undefined)."""
        return bool(self._row_counts[4])

    @cached_property
    def tied_after(self) -> torch.Tensor:
        """How many classes with a higher index than each image's true class tie with it (N,); only rows
        with ties are looked at again."""
        out = torch.zeros(self.num_images, dtype=torch.long, device=self.device)
        rows = (self.tied > 1).nonzero()[:, 0]
        if len(rows) == 0:
            return out
        per_chunk = max(1, CHUNK // max(1, self.num_classes))
        classes = torch.arange(self.num_classes, device=self.device)
        for start in range(0, len(rows), per_chunk):
            chosen = rows[start:start + per_chunk]
            scores = self.values[chosen].to(torch.float64)
            if self.logits:
                scores -= self.offsets[chosen, None]
            labels = self.labels[chosen, None]
            level = (scores == self.true_scores[chosen, None].to(torch.float64)) & (classes > labels)
            out[chosen] = level.sum(dim=1)
        return out

    # --- per class ----------------------------------------------------------------------------
    def class_count(self, classes: torch.Tensor) -> torch.Tensor:
        return torch.bincount(classes, minlength=self.num_classes)

    @cached_property
    def support(self) -> torch.Tensor:
        """Images of each class (C,)."""
        return self.class_count(self.labels)

    @cached_property
    def predicted_count(self) -> torch.Tensor:
        """Images predicted as each class (C,)."""
        return self.class_count(self.predicted)

    @cached_property
    def true_positives(self) -> torch.Tensor:
        """Images of each class predicted as it (C,)."""
        return self.class_count(self.labels[self.predicted == self.labels])

    # --- within a class -----------------------------------------------------------------------
    @cached_property
    def _column_counts(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(below, level) for each image in its own class's column: the images whose score for that class
        is lower, and equal (itself included)."""
        n, labels = self.num_images, self.labels
        support = self.support
        present = (support > 0).nonzero()[:, 0]
        support_host = support.tolist()
        by_class = torch.argsort(labels, stable=True)  # images grouped by class, classes in order
        first = torch.cumsum(support, 0) - support  # where each class starts in by_class
        first_host = first.tolist()
        true_scores = self.true_scores.to(torch.float64)
        below = torch.empty(n, dtype=torch.long, device=self.device)
        level = torch.empty(n, dtype=torch.long, device=self.device)
        per_block = max(1, CHUNK // max(1, n))
        block = torch.empty((min(per_block, len(present)), n), dtype=torch.float64, device=self.device)
        present_host = present.tolist()
        for start in range(0, len(present), per_block):
            classes = present_host[start:start + per_block]
            rows = self._columns(classes, block[: len(classes)])
            ordered = _sort_rows(rows)
            images = by_class[first_host[classes[0]]:first_host[classes[-1]] + support_host[classes[-1]]]
            image_labels = labels[images]
            row = torch.searchsorted(present[start:start + len(classes)], image_labels)
            place = torch.arange(len(images), device=self.device) - (first[image_labels] - first_host[classes[0]])
            queries = torch.full((len(classes), max(support_host[c] for c in classes)), float("inf"),
                                 dtype=torch.float64, device=self.device)
            queries[row, place] = true_scores[images]
            lower = torch.searchsorted(ordered, queries)[row, place]
            below[images] = lower
            level[images] = torch.searchsorted(ordered, queries, right=True)[row, place] - lower
        return below, level

    def _columns(self, classes: list, out: torch.Tensor) -> torch.Tensor:
        """The scores of `classes` (a list of increasing class indices) as float64 rows (len(classes), N) in `out`."""
        contiguous = classes[-1] - classes[0] + 1 == len(classes)
        chosen = None if contiguous else torch.tensor(classes, device=self.device)

        def columns(values):
            return values[:, classes[0]:classes[-1] + 1] if contiguous else values.index_select(1, chosen)

        if self.device.type == "cpu":  # transposed a tile at a time, each in the cache: 2.5x faster than at once
            for start in range(0, self.num_images, TILE_ROWS):
                out[:, start:start + TILE_ROWS].copy_(columns(self.values[start:start + TILE_ROWS]).T)
        else:
            out.copy_(columns(self.values).T)
        if self.logits:
            out -= self.offsets[None, :]
        return out

    @property
    def below(self) -> torch.Tensor:
        """How many images score lower than each image in the column of its true class (N,)."""
        return self._column_counts[0]

    @property
    def level(self) -> torch.Tensor:
        """How many images score the same as each image in the column of its true class, itself included (N,)."""
        return self._column_counts[1]

    @cached_property
    def positives_below(self) -> torch.Tensor:
        """How many images of each image's own class score lower than it for that class (N,)."""
        labels, scores = self.labels, self.true_scores.to(torch.float64)
        order = torch.argsort(scores, stable=True)
        order = order[torch.argsort(labels[order], stable=True)]  # by class, then by score
        grouped_labels, grouped_scores = labels[order], scores[order]
        new = torch.ones(self.num_images, dtype=torch.bool, device=self.device)
        new[1:] = (grouped_labels[1:] != grouped_labels[:-1]) | (grouped_scores[1:] != grouped_scores[:-1])
        positions = torch.arange(self.num_images, device=self.device)
        group_start = torch.cummax(torch.where(new, positions, 0), dim=0).values
        class_start = torch.cumsum(self.support, 0) - self.support
        out = torch.empty_like(order)
        out[order] = group_start - class_start[grouped_labels]
        return out
