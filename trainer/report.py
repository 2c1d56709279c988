"""`python -m trainer.report <run or sweep dir>`: a finished run's or sweep's table again, pictures redrawn.

    run dir    (metrics.csv or summary.json)   the per-epoch table; curves.png from metrics.csv
    sweep dir  (job dirs with .hydra/)          the jobs best first; sweep_summary.csv, sweep_seeds.csv
                                                when seeds repeat, sweep.png, and each job's curves.png;
                                                with folds (data.folds) the recipes by out-of-fold score:
                                                cv_summary.json, oof_predictions.csv, oof_confusion_matrix.png

The same reports end every sweep (trainer.sweeps.callback). Imports neither torch nor Hydra's app (torch only
to score a sweep with folds, with the project's metrics).
"""

import argparse
from pathlib import Path

from trainer.errors import UserError, reported_as_exit
from trainer.reporting.run_report import is_run_dir, report_run
from trainer.sweeps.report import report_sweep


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.report",
        description="Print a finished run's or sweep's table again and redraw its pictures.",
    )
    parser.add_argument("directory", help="a run directory (outputs/<date>/<time>) or a sweep directory (outputs/multirun/<date>/<time>)")
    args = parser.parse_args(argv)
    path = Path(args.directory)
    with reported_as_exit():
        if not path.is_dir():
            raise UserError(f"'{path}' is not a directory")
        if is_run_dir(path):
            report_run(path)
        elif any(path.rglob("overrides.yaml")):
            report_sweep(path)
        else:
            raise UserError(
                f"'{path}' is neither a run directory (metrics.csv, summary.json) "
                "nor a sweep directory (job directories with .hydra/overrides.yaml)"
            )


if __name__ == "__main__":
    main()
