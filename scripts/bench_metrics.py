"""Seconds and peak memory of every metric over one epoch's predictions, the vectorised torch path against
the scikit-learn path it replaced (tests/sklearn_metrics.py keeps it), in one process.

    python scripts/bench_metrics.py                                   # 50,000 x 1,000 and 10,000 x 10
    python scripts/bench_metrics.py --sizes 10000x10 --repeats 5
    python scripts/bench_metrics.py --device cuda                     # the new path on a GPU (old: CPU)
    python scripts/bench_metrics.py --threads 1                       # one CPU thread

Predictions: float32 logits, normal with the true class raised by 2 (about a third of the images right),
labels drawn uniformly. Each metric alone is timed as `epoch_metrics` runs it (from the logits: the
float64 log-softmax and the counts it needs), the old one on the old path's numpy scores (made once, and
timed on their own, as `scores`); `all` is every metric of `metric=all` from the logits, as one validation
pass computes them. Seconds are the best of --repeats (the old path: of --old-repeats) wall-clock
seconds, with the process's CPU seconds beside them; the machine's load average is printed, since a
shared machine's other work slows both. Peak memory is the rise of the process's resident high-water
mark over what it held before (Linux /proc/self/clear_refs, with glibc told to return every large block
when it is freed; on a GPU, torch's peak allocated memory).
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the trainer package
sys.path.insert(0, str(ROOT / "tests"))  # sklearn_metrics: the old implementation

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sklearn_metrics import OLD_METRICS, old_log_softmax  # noqa: E402
from trainer.evaluation.epoch_predictions import EpochPredictions  # noqa: E402
from trainer.evaluation.metrics import METRICS, metric_values  # noqa: E402

MiB = 1 << 20


def resident(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


class PeakMemory:
    """Bytes the process's peak resident (or GPU) memory rose by inside the block."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM to the current resident size
            self.before = resident("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.rise = torch.cuda.max_memory_allocated() - self.before
        else:
            self.rise = resident("VmHWM") - self.before


def measure(fn, repeats: int, device: torch.device):
    """(best wall seconds, CPU seconds of that run, peak memory rise in bytes of the first run)."""
    best = None
    peak = None
    for _ in range(repeats):
        with PeakMemory(device) as memory:
            cpu, wall = time.process_time(), time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = memory.rise if peak is None else peak
        if best is None or wall < best[0]:
            best = (wall, cpu)
    return best[0], best[1], peak


def predictions(n: int, c: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g)
    logits[torch.arange(n), labels] += 2.0
    return logits.to(device), labels.to(device)


def new_path(names, logits, labels):
    return lambda: metric_values(names, EpochPredictions.from_logits(logits, labels))


def bench(n: int, c: int, args) -> None:
    device = torch.device(args.device)
    names = METRICS.names()
    logits, labels = predictions(n, c, device)
    cpu_logits, y = logits.cpu(), labels.cpu().numpy()
    new_path(names, logits, labels)()  # warm-up: first calls, thread pools
    rows = []
    with np.errstate(all="ignore"):
        scores = old_log_softmax(cpu_logits)
        rows.append(("scores", None, measure(lambda: old_log_softmax(cpu_logits), args.old_repeats, torch.device("cpu"))))
        for name in names:
            new = measure(new_path([name], logits, labels), args.repeats, device)
            old = measure(lambda: OLD_METRICS[name](y, scores), args.old_repeats, torch.device("cpu"))
            rows.append((name, new, old))
            print(f"  {name}: {new[0]:.3f} s against {old[0]:.3f} s", file=sys.stderr, flush=True)
        del scores

        def old_all():
            old_scores = old_log_softmax(cpu_logits)
            for name in names:
                OLD_METRICS[name](y, old_scores)

        rows.append(("all", measure(new_path(names, logits, labels), args.repeats, device),
                     measure(old_all, args.old_repeats, torch.device("cpu"))))

    print(f"\n{n:,} images x {c:,} classes, new path on {device}, {torch.get_num_threads()} torch threads, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| metric | new s (CPU s) | new peak MiB | old s (CPU s) | old peak MiB | old / new |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, new, old in rows:
        new_cells = ["", ""] if new is None else [f"{new[0]:.3f} ({new[1]:.3f})", f"{new[2] / MiB:.0f}"]
        ratio = "" if new is None else f"{old[0] / new[0]:.2g}x"
        print(f"| {name} | {new_cells[0]} | {new_cells[1]} | {old[0]:.3f} ({old[1]:.3f}) | {old[2] / MiB:.0f} | {ratio} |")


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc keeps freed memory resident once its threshold for mapping blocks of their own has grown,
        # and a later run's peak would not show; a fixed threshold returns every large block on free
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["50000x1000", "10000x10"], help="images x classes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--old-repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for size in args.sizes:
        n, c = (int(v) for v in size.lower().split("x"))
        bench(n, c, args)


if __name__ == "__main__":
    main()
