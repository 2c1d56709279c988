"""The Engine against a plain PyTorch loop: same model, same in-memory data, same steps, one process.

    python scripts/bench_engine.py                      # tiny CNN on 8x8 and timm resnet18 on 32x32
    python scripts/bench_engine.py --workload linear    # a linear classifier: nearly all loop, little compute
    python scripts/bench_engine.py --workload resnet50  # resnet50 at 224x224 (for a GPU), bf16 + channels_last

Each repeat runs `--epochs` epochs of the plain loop (the lecture notes' loop: zero_grad, forward,
loss, backward, step, then an eval pass under no_grad) and a fit of as many epochs by the Engine
(progress bar drawing to an off-screen terminal, per-epoch metrics, no checkpoints), back to back,
each from the same initial weights; the order alternates between repeats. Prints the median images
per second of each, their ratio (Engine / plain), and a 90% bootstrap interval of that ratio: on a
shared 2-core machine one run of the same loop varies by 10% or more, so the interval says how far
the ratio can be trusted.
"""

import argparse
import contextlib
import functools
import io
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config.registry import schema_defaults  # noqa: E402
from trainer.engine.loop import Engine  # noqa: E402
from trainer.engine.settings import LoopSettings  # noqa: E402
from trainer.optim.schedules import Schedule  # noqa: E402
from trainer.parts.models import build_model  # noqa: E402
from trainer.reporting.callbacks import EpochLog, RichProgress  # noqa: E402

WORKLOADS = {
    # name: (model factory, image size, channels, classes, train images, val images, batch size)
    "linear": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 8, 1, 10, 16384, 2048, 64),
    "tiny_cnn": (lambda: build_model(schema_defaults("model", "cnn"), 1, 10), 8, 1, 10, 4096, 512, 64),
    "resnet18": (lambda: __import__("timm").create_model("resnet18", num_classes=10, in_chans=3), 32, 3, 10, 1024, 256, 64),
    "resnet50": (lambda: __import__("timm").create_model("resnet50", num_classes=1000, in_chans=3), 224, 3, 1000, 2560, 256, 128),
}


def make_loaders(size, chans, classes, n_train, n_val, batch, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, chans, size, size, generator=g)
    y = torch.randint(0, classes, (n_train + n_val,), generator=g)
    pin = device.type == "cuda"
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=batch, shuffle=True,
                       generator=torch.Generator().manual_seed(1), pin_memory=pin)
    val = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=batch, pin_memory=pin)
    return train, val


def autocast(device, precision):
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_fit(model, train, val, device, precision, channels_last, epochs=1):
    """The lecture notes' loop, with the same device settings the Engine gets."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(epochs):
        accuracy = plain_epoch(model, train, val, device, precision, channels_last, criterion, optimizer)
    return accuracy


def plain_epoch(model, train, val, device, precision, channels_last, criterion, optimizer):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.train()
    for inputs, labels in train:
        inputs = inputs.to(device, non_blocking=True).contiguous(memory_format=fmt)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad()
        with autocast(device, precision):
            outputs = model(inputs)
            loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in val:
            inputs = inputs.to(device, non_blocking=True).contiguous(memory_format=fmt)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, precision):
                predicted = model(inputs).argmax(1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return correct / total


def engine_fit(model, train, val, device, precision, channels_last, epochs=1, progress_bar=True):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    callbacks = [EpochLog()]
    if progress_bar:
        callbacks.append(RichProgress(Console(file=io.StringIO(), force_terminal=True)))  # drawn, to nowhere
    engine = Engine(
        model, nn.CrossEntropyLoss(), optimizer, Schedule(None), ["accuracy", "f1"], device=device,
        loop=LoopSettings(max_epochs=epochs, precision=precision, channels_last=channels_last, monitor="val/accuracy", mode="max"),
        callbacks=callbacks,
    )
    return engine.fit(train, val)["final"]["val/accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS), help="default: tiny_cnn and resnet18 (repeat the option for several)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per repeat, for both loops")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true", help="run the Engine without its progress bar")
    parser.add_argument("--precision", default=None, choices=["32", "bf16"], help="default: bf16 on CUDA, 32 on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "32")
    channels_last = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    import logging

    logging.getLogger("trainer").setLevel(logging.WARNING)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"precision {precision}, channels_last {channels_last}, torch {torch.__version__}")
    for name in args.workload or ["tiny_cnn", "resnet18"]:
        factory, size, chans, classes, n_train, n_val, batch = WORKLOADS[name]
        train, val = make_loaders(size, chans, classes, n_train, n_val, batch, device)
        torch.manual_seed(0)
        initial = factory().state_dict()
        rates = {"plain": [], "engine": []}
        runners = {"plain": functools.partial(plain_fit, epochs=args.epochs),
                   "engine": functools.partial(engine_fit, epochs=args.epochs, progress_bar=not args.no_progress)}
        for repeat in range(args.repeats + 1):  # the first round warms up (allocator, cudnn autotune)
            for kind in ("plain", "engine") if repeat % 2 == 0 else ("engine", "plain"):
                model = factory()
                model.load_state_dict(initial)
                model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
                sync(device)
                started = time.perf_counter()
                runners[kind](model, train, val, device, precision, channels_last)
                sync(device)
                if repeat:
                    rates[kind].append(args.epochs * (n_train + n_val) / (time.perf_counter() - started))
        plain, engine = statistics.median(rates["plain"]), statistics.median(rates["engine"])
        low, high = bootstrap_interval(rates["engine"], rates["plain"])
        best = max(rates["engine"]) / max(rates["plain"])
        print(f"{name:9s} plain {plain:10.1f} img/s   engine {engine:10.1f} img/s   "
              f"ratio {engine / plain:.3f} (90% interval {low:.3f}-{high:.3f}; fastest runs {best:.3f})   ({args.repeats} repeats "
              f"of {args.epochs} epochs, {n_train} train + {n_val} val images of {chans}x{size}x{size}, batch {batch})")


def bootstrap_interval(engine, plain, rounds=2000, seed=0):
    """5th and 95th percentiles of median(engine) / median(plain) over resamples of the repeats."""
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(engine, k=len(engine))) / statistics.median(rng.choices(plain, k=len(plain)))
                    for _ in range(rounds))
    return ratios[int(0.05 * rounds)], ratios[int(0.95 * rounds) - 1]


if __name__ == "__main__":
    main()
