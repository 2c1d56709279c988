"""`python -m trainer.evaluate ckpt_path=<run>/checkpoints/best.ckpt`: the validation metrics of a checkpoint.

Model and data are rebuilt from the config stored in the checkpoint, so the numbers equal those
recorded for that epoch: val/* of the raw weights and, when the run kept an EMA, val_ema/* of it.
The per-class report and the confusion matrix are of the weights the checkpoint was chosen by (the
EMA when the run monitored val_ema/...), which it names. Prints them all, and writes beside the
checkpoint `<stem>.metrics.json`, `<stem>.per_class.csv|json` and `<stem>.confusion_matrix.csv|png`
(stem: `best` for best.ckpt).
"""

import sys

import hydra
from omegaconf import DictConfig

from trainer.config.schema import CONF_DIR, register_configs, with_current_defaults
from trainer.errors import UserError, reported_as_exit
from trainer.run.command_line import print_command_help

register_configs()

REQUIRED_KEYS = ("model", "config", "class_names", "epoch")


def evaluate(cfg: DictConfig) -> dict:
    import copy
    import os
    import types

    from omegaconf import OmegaConf
    from rich.console import Console

    # heavy (torch, timm, scikit-learn): imported here so that --help answers without them
    from trainer.checkpointing.checkpoint import chosen_by_ema, load_model_state, read_checkpoint
    from trainer.engine.loop import Engine
    from trainer.engine.settings import LoopSettings
    from trainer.engine.run_files import write_json
    from trainer.evaluation.metrics import labels_and_probabilities
    from trainer.reporting.class_reports import print_reports, write_reports
    from trainer.reporting.tables import format_value
    from trainer.run import assembly, environment

    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError("ckpt_path is required: python -m trainer.evaluate ckpt_path=<run dir>/checkpoints/best.ckpt")
    path = cfg.ckpt_path
    ckpt = read_checkpoint(path)
    missing = [key for key in REQUIRED_KEYS if not (isinstance(ckpt, dict) and key in ckpt)]
    if missing:
        raise UserError(f"'{path}' is not a trainer checkpoint (missing: {', '.join(missing)})")
    run_cfg = OmegaConf.create(with_current_defaults(ckpt["config"]))
    # The checkpoint holds the weights: never fetch pretrained ones or read the original weights file again.
    run_cfg.model.weights = None
    if "pretrained" in run_cfg.model:
        run_cfg.model.pretrained = False
    device = environment.resolve_device(cfg.device)
    environment.seed_everything(run_cfg.seed)
    data = assembly.build_data(run_cfg, device)
    if list(data.class_names) != list(ckpt["class_names"]):
        raise UserError(f"the data's classes {data.class_names} differ from the checkpoint's {ckpt['class_names']}")
    model, loss_fn = assembly.build_model_and_loss(run_cfg, data)
    load_model_state(model, ckpt["model"], path)
    ema = None
    if ckpt.get("ema") is not None:  # the run validated an EMA of its weights too: so do we
        ema_model = copy.deepcopy(model)
        load_model_state(ema_model, ckpt["ema"], path)
        ema = types.SimpleNamespace(module=ema_model.to(device))
    precision = str(run_cfg.trainer.get("precision", "32"))
    loop = LoopSettings(precision=precision if device.type == "cuda" or precision != "fp16" else "32",
                        channels_last=run_cfg.trainer.get("channels_last", False))
    engine = Engine(assembly.prepare_model(run_cfg, model, device), loss_fn, None, None, run_cfg.metric.names,
                    device=device, loop=loop, ema=ema, target_values=assembly.regression_targets(run_cfg, data))
    # One prediction pass per set of weights feeds both the metrics (computed as Engine.validate computes
    # them, so the metrics.csv row is reproduced: val/* raw, val_ema/* EMA) and the reports.
    logits, targets = engine.predict(data.val_loader)
    metrics = engine.score(logits, targets)
    if ema is not None:
        ema_logits, ema_targets = engine.predict(data.val_loader, ema.module)
        metrics.update(engine.score(ema_logits, ema_targets, prefix="val_ema/"))
    # The reports describe the weights the checkpoint was chosen by, as every later use of it runs them.
    uses_ema = chosen_by_ema(ckpt)
    if uses_ema:
        logits, targets = ema_logits, ema_targets
    weights = weights_line(uses_ema, ckpt)
    classification = engine.target_values is None

    print(f"checkpoint: {path} (epoch {ckpt['epoch']})")
    print(f"weights: {weights}")
    console = Console()
    console.print(metrics_table(metrics, format_value))
    if classification:
        y_true, prob = labels_and_probabilities(logits, targets)
        print_reports(console, y_true, prob, data.class_names)

    stem = os.path.splitext(path)[0]
    output = cfg.output or stem + ".metrics.json"
    result = {"checkpoint": os.path.abspath(path), "epoch": ckpt["epoch"], "weights": "ema" if uses_ema else "raw",
              "metrics": metrics}
    write_json(result, output)
    directory, name = os.path.split(stem)
    reports = write_reports(directory, y_true, prob, data.class_names, prefix=name + ".") if classification else []
    for written in [output, *reports]:
        print(f"written: {written}")
    return result


def weights_line(uses_ema: bool, ckpt: dict) -> str:
    """Which weights the reports (and predict) use, and why: the metric the run chose its checkpoints by."""
    monitor = ckpt.get("monitor") or "its monitor"
    if uses_ema:
        return f"EMA (the run monitored {monitor})"
    if ckpt.get("ema") is not None:
        return f"raw, not the EMA (the run monitored {monitor})"
    return "raw (the run kept no EMA)"


def metrics_table(metrics: dict, format_value):
    from trainer.reporting.tables import titled_table  # rich: only when a table is printed

    table = titled_table("validation metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, format_value(value))
    return table


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported_as_exit():
        evaluate(cfg)


if __name__ == "__main__":
    if not print_command_help("evaluate", sys.argv):
        main()
