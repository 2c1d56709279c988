"""The Hydra callback that ends every sweep with its table (hydra.callbacks.sweep_summary in conf/train.yaml)."""

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from trainer.report import report_sweep

        report_sweep(config.hydra.sweep.dir, redraw_runs=False)
