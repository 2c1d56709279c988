"""What one process of a run draws: its first training batch as the engine augments it and a dropout pass of its model.

    [torchrun --nproc_per_node=N] tests/rank_draws.py OUT_DIR OVERRIDE...

Builds the run's parts with trainer.run.assembly.assemble, exactly as `python -m trainer` does, and saves
OUT_DIR/rank<R>.pt. Run by tests/test_distributed.py.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir

from trainer.run import assembly

from trainer.config.schema import CONF_DIR, register_configs
from trainer.engine import distributed


def main(out_dir: str, overrides) -> None:
    place = distributed.init_process_group()
    register_configs()
    with initialize_config_dir(CONF_DIR, version_base=None):
        cfg = compose("train", overrides=["progress=false", *overrides])
    engine, train_loader, _ = assembly.assemble(cfg, None)
    inputs, targets = next(iter(train_loader))
    inputs, _ = engine.batch_transform(inputs, targets, 1, 0)  # the first batch as the engine augments it
    model = distributed.unwrap(engine.model).train()
    # the same input on every rank, made without touching the global random streams
    fixed = torch.randn(4, *inputs.shape[1:], generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        dropped = model(fixed)
    torch.save({"batch": inputs, "dropout": dropped}, Path(out_dir) / f"rank{place.rank}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
