"""What a finished training run adds to its directory: the per-class report and confusion matrix of best.ckpt,
and for a cross-validation fold (data.folds) its out-of-fold predictions."""

import logging
import os

from trainer.engine.best_outputs import best_outputs
from trainer.evaluation.metrics import labels_and_probabilities
from trainer.reporting.class_reports import print_reports, write_reports
from trainer.reporting.oof_predictions import OOF_CSV, write_oof_rows


def report_best_checkpoint(engine, loader, run_dir: str, class_names, is_main: bool = True, show: bool = True,
                           data=None) -> list:
    """The per-class table and confusion matrix of best.ckpt's chosen weights (`engine.best_outputs.best_outputs`),
    printed and written to the run directory by rank 0 (printed only when `show`: a sweep's jobs would bury
    its table), and oof_predictions.csv when `data` (the run's data config) holds out a fold. Returns the paths
    written."""
    from rich.console import Console

    outputs = best_outputs(engine, loader)
    if outputs is None or not is_main:
        return []
    y_true, prob = labels_and_probabilities(*outputs)
    if show:
        print_reports(Console(), y_true, prob, class_names)
    written = write_reports(run_dir, y_true, prob, class_names)
    if data is not None and data.get("folds") is not None:
        written += write_fold_predictions(run_dir, engine.val_ids, y_true, prob, class_names, data)
    return written


def write_fold_predictions(run_dir: str, ids, y_true, prob, class_names, data) -> list:
    """oof_predictions.csv of this fold. The outputs are in validation order (gathered back into it under
    torchrun, `engine.distributed.gather_in_order`), which is the order of `ids`."""
    if ids is None or len(ids) != len(y_true):
        logging.getLogger("trainer").warning(
            f"warning: {OOF_CSV} not written: the best epoch's validation saw {len(y_true)} of "
            f"{'?' if ids is None else len(ids)} images of fold {data.fold} (trainer.limit_val_batches, overfit_batches)")
        return []
    id_column = "id" if data.name == "digits" else "path"
    path = os.path.join(run_dir, OOF_CSV)
    return [write_oof_rows(path, id_column, ids, y_true, prob, class_names, [data.fold] * len(ids))]
