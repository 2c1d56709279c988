"""`python -m trainer.lr_preview [train overrides]`: draw the learning-rate schedule a run would use, without training.

The data is read once (for the number of optimizer steps per epoch) and the model is built (for its
parameter groups); then the schedule is stepped exactly as the Engine steps it. ReduceLROnPlateau
depends on the monitored metric: the preview assumes it never improves after the first epoch.

Like a run, the preview writes into a directory of its own, outputs/lr_preview/<date>/<time>/
(lr_schedule.png and .hydra/), never into the current directory; `output=<path>` puts the PNG there
and writes nothing else.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from trainer.config.schema import CONF_DIR, register_configs
from trainer.errors import reported_as_exit
from trainer.run import command_line

register_configs()


def schedule_lrs(cfg: DictConfig, steps_per_epoch: int, model) -> list:
    """Per optimizer step: (epoch, step within epoch, learning rate of every parameter group)."""
    import warnings

    # heavy (torch, timm, scikit-learn): imported here so that --help answers without them
    from trainer.optim.schedules import run_steps
    from trainer.run import assembly

    optimizer, schedule = assembly.build_optimization(cfg, model, steps_per_epoch)
    total = run_steps(cfg.trainer.max_epochs, steps_per_epoch, cfg.trainer.get("max_steps"))  # max_steps may end it
    rows = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        for epoch in range(1, cfg.trainer.max_epochs + 1):
            for step in range(min(steps_per_epoch, total - len(rows))):
                rows.append((epoch, step, [group["lr"] for group in optimizer.param_groups]))
                schedule.after_optimizer_step()
            schedule.after_epoch(0.0)
            if len(rows) == total:
                break
    return rows


def preview(cfg: DictConfig) -> list:
    import math

    import torch
    from rich.console import Console

    # heavy (torch, timm, scikit-learn): imported here so that --help answers without them
    from trainer.reporting.tables import format_value, titled_table
    from trainer.run import assembly, checks, environment

    checks.check_config(cfg)
    environment.seed_everything(cfg.seed)
    data = assembly.build_data(cfg, torch.device("cpu"))  # the preview trains nothing
    model, _ = assembly.build_model_and_loss(cfg, data)
    train_loader, _ = assembly.training_loaders(cfg, data)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.trainer.accumulate)
    rows = schedule_lrs(cfg, steps_per_epoch, model)
    if all(len(set(lrs)) == 1 for _, _, lrs in rows):  # groups differ only in weight decay: one column
        rows = [(epoch, step, lrs[:1]) for epoch, step, lrs in rows]

    table = titled_table(f"scheduler={cfg.scheduler.name}: learning rate at the start of each epoch")
    table.add_column("epoch", justify="right")
    groups = len(rows[0][2])
    for g in range(groups):
        table.add_column("lr" if groups == 1 else f"lr (group {g})", justify="right")
    for epoch, step, lrs in rows:
        if step == 0:
            table.add_row(str(epoch), *(format_value(lr) for lr in lrs))
    Console().print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    x = [epoch - 1 + step / steps_per_epoch for epoch, step, _ in rows]
    for g in range(groups):
        ax.plot(x, [lrs[g] for _, _, lrs in rows], label=f"group {g}" if groups > 1 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"scheduler={cfg.scheduler.name}, interval={cfg.scheduler.get('interval', 'epoch')}, "
                 f"warmup_epochs={cfg.scheduler.get('warmup_epochs', 0)}")
    if groups > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = cfg.output or os.path.join(HydraConfig.get().runtime.output_dir, "lr_schedule.png")
    fig.savefig(path)
    plt.close(fig)
    print(f"written: {path}")
    return rows


@hydra.main(config_path=CONF_DIR, config_name="lr_preview", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported_as_exit():
        preview(cfg)


def prepare(argv: list) -> None:
    """The train command's key check (plus `output`); an explicit output=<path> is the only file written."""
    command_line.refuse(command_line.unknown_keys_problem(argv, CONF_DIR, extra_top_level=["output"]))
    output = command_line.value_of(argv, "output")
    if output not in (None, "null") and command_line.value_of(argv, "hydra.run.dir") is None:
        argv += [f"hydra.run.dir={os.path.dirname(os.path.abspath(output))}", "hydra.output_subdir=null"]
    command_line.refuse(command_line.output_dir_problem(argv))


if __name__ == "__main__":
    prepare(sys.argv)
    main()
