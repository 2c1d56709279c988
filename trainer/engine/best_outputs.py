"""The validation outputs of the weights best.ckpt was chosen by, for the end-of-run report."""

import os

from trainer.checkpointing.checkpoint import chosen_weights, read_checkpoint
from trainer.engine.distributed import broadcast_from_main, unwrap


def best_outputs(engine, loader):
    """(logits, targets) of best.ckpt's chosen weights (`checkpoint.chosen_weights`: the EMA when the monitor
    is a val_ema/ metric), or None when the run has no best.ckpt (fast_dev_run, no finite value).

    They are the validation outputs the Engine kept when that epoch improved: no new prediction and no
    file. Only a resumed run without a better epoch since has none; then rank 0 alone reads best.ckpt
    and sends the chosen weights to the others, who need no shared disk, and all predict. Every rank
    calls this (it may hold collectives).
    """
    if not engine.loop.save_checkpoints or engine.best_epoch is None:
        return None
    if engine.best_outputs is not None:
        return engine.best_outputs
    return predict_with_best_weights(engine, loader)


def predict_with_best_weights(engine, loader):
    """(logits, targets) of best.ckpt's chosen weights, read by rank 0 alone and broadcast; None without the file.
    Every rank calls this (it holds collectives), and all take rank 0's answer."""
    weights = None
    if engine.place.is_main and engine.files.keeps_checkpoints:
        path = engine.files.checkpoint_path("best.ckpt")
        if os.path.isfile(path):
            weights = chosen_weights(read_checkpoint(path))
    weights = broadcast_from_main(weights)
    if weights is None:
        return None
    unwrap(engine.model).load_state_dict(weights)  # the run is over: its final weights are in last.ckpt
    return engine.predict(loader)
