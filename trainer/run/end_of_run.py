"""What a finished training run adds to its directory: the per-class report and confusion matrix of best.ckpt."""

from trainer.engine.best_outputs import best_outputs
from trainer.evaluation.metrics import labels_and_probabilities
from trainer.reporting.class_reports import print_reports, write_reports


def report_best_checkpoint(engine, loader, run_dir: str, class_names, is_main: bool = True, show: bool = True) -> list:
    """The per-class table and confusion matrix of best.ckpt's chosen weights (`engine.best_outputs.best_outputs`),
    printed and written to the run directory by rank 0 (printed only when `show`: a sweep's jobs would bury
    its table). Returns the paths written."""
    from rich.console import Console

    outputs = best_outputs(engine, loader)
    if outputs is None or not is_main:
        return []
    y_true, prob = labels_and_probabilities(*outputs)
    if show:
        print_reports(Console(), y_true, prob, class_names)
    return write_reports(run_dir, y_true, prob, class_names)
