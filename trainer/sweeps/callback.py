"""The Hydra callback that ends every sweep with its table (hydra.callbacks.sweep_summary in conf/train.yaml)."""

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from trainer.errors import UserError


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from trainer.sweeps.report import report_sweep

        try:
            report_sweep(config.hydra.sweep.dir, redraw_runs=False)  # each job drew its own curves.png
        except UserError as error:  # e.g. no job ran: nothing to rank, and nothing to undo
            logging.getLogger("trainer").warning(f"no sweep table: {error}")
