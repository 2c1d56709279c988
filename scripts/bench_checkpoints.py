"""The cost of checkpoints inside an epoch (checkpoint.every_n_steps): one process, the same epoch of the same
model trained with and without them, back to back.

    python scripts/bench_checkpoints.py                         # timm resnet18 on 32x32, CPU, every 2, 4 and 8 steps
    python scripts/bench_checkpoints.py --every 1 4 --repeats 5

Each repeat trains one epoch (in-memory data, no loader workers) without step checkpoints, then one with each
`--every` N, from the same weights, in an alternating order; last.ckpt goes to a temporary directory (the same
atomic write, fsync included, as a run's). Prints per N: the median epoch seconds, the median seconds of one
checkpoint write (timed around each save), and the share of the epoch the checkpoints took, (epoch with them -
epoch without) / epoch without; a shared machine varies by 10% or more from one epoch to the next, so the share
is also given from the timed writes alone (writes x seconds per write / epoch without), which varies less.
"""

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import WORKLOADS, make_loaders  # noqa: E402
from trainer.engine.loop import Engine  # noqa: E402
from trainer.engine.settings import LoopSettings  # noqa: E402
from trainer.engine.step_checkpoints import StepCheckpoints  # noqa: E402
from trainer.optim.schedules import Schedule  # noqa: E402


def one_epoch(model, train, every, run_dir):
    """(epoch seconds, seconds of each checkpoint write) of one epoch of a copy of `model`."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    engine = Engine(model, nn.CrossEntropyLoss(), optimizer, Schedule(None), ["accuracy"], device=torch.device("cpu"),
                    loop=LoopSettings(max_epochs=1, monitor="val/accuracy", mode="max", log_every_n_steps=None),
                    run_dir=run_dir, step_checkpoints=StepCheckpoints(every_n_steps=every))
    writes = []
    save = engine.files.save

    def timed_save(name, state):
        start = time.perf_counter()
        save(name, state)
        writes.append(time.perf_counter() - start)

    engine.files.save = timed_save
    start = time.perf_counter()
    engine.train_epoch(train, 1)
    return time.perf_counter() - start, writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="resnet18", choices=sorted(WORKLOADS))
    parser.add_argument("--every", type=int, nargs="+", default=[2, 4, 8], help="every_n_steps values (below the epoch's 16 steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=None, help="default: the workload's")
    args = parser.parse_args()
    factory, size, chans, classes, n_train, n_val, batch = WORKLOADS[args.workload]
    torch.manual_seed(0)
    model = factory()
    train, _ = make_loaders(size, chans, classes, args.train_images or n_train, n_val, batch, torch.device("cpu"))
    settings = [None] + args.every
    epochs = {every: [] for every in settings}
    writes = {every: [] for every in settings}
    with tempfile.TemporaryDirectory() as run_dir:
        one_epoch(model, train, None, run_dir)  # warm-up: allocator, kernels, page cache
        for repeat in range(args.repeats):
            for every in settings if repeat % 2 == 0 else reversed(settings):
                seconds, written = one_epoch(model, train, every, run_dir)
                epochs[every].append(seconds)
                writes[every].append(written)
    steps = len(train)
    base = statistics.median(epochs[None])
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"{args.workload}: {steps} optimizer steps per epoch of {batch} images {size}x{size}, weights {size_mb:.1f} MiB "
          f"(+ SGD momentum); CPU, {torch.get_num_threads()} threads; median of {args.repeats} epochs each")
    print(f"{'every_n_steps':>14} {'epoch s':>8} {'writes':>7} {'s/write':>8} {'share (epochs)':>15} {'share (writes)':>15}")
    print(f"{'off':>14} {base:8.2f} {0:7d} {'-':>8} {'-':>15} {'-':>15}")
    for every in args.every:
        median = statistics.median(epochs[every])
        count = len(writes[every][0])
        if not count:
            print(f"{every:>14} {median:8.2f} {0:7d}  (no step inside the epoch is a multiple of {every})")
            continue
        per_write = statistics.median([w for run in writes[every] for w in run])
        print(f"{every:>14} {median:8.2f} {count:7d} {per_write:8.3f} {(median - base) / base:15.1%} "
              f"{count * per_write / base:15.1%}")


if __name__ == "__main__":
    main()
