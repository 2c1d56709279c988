"""How a failing sweep job is written down (record_failed_job), without running a sweep."""

import json
import logging

from trainer.engine.run_files import record_failed_job, summary_stamp
from trainer.errors import UserError


def write(path, data):
    path.write_text(json.dumps(data))


def test_a_job_that_failed_before_training_gets_a_summary_of_its_own(tmp_path, caplog):
    earlier = summary_stamp(str(tmp_path))
    with caplog.at_level(logging.ERROR, logger="trainer"):
        record_failed_job(str(tmp_path), UserError("optimizer.lr=-1.0 is not valid"), earlier, monitor="val/loss", mode=None)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"status": "failed", "monitor": "val/loss", "mode": "min", "best_epoch": None, "best_value": None,
                       "epochs_run": 0, "final": {}, "error": "optimizer.lr=-1.0 is not valid"}
    assert "error: optimizer.lr=-1.0 is not valid" in caplog.text and "Traceback" not in caplog.text


def test_the_engines_summary_keeps_its_epochs_and_gains_the_error(tmp_path, caplog):
    earlier = summary_stamp(str(tmp_path))
    engine_summary = {"status": "failed", "monitor": "val/f1", "mode": "max", "best_epoch": 2, "best_value": 0.9,
                      "epochs_run": 3, "final": {"epoch": 3}}
    write(tmp_path / "summary.json", engine_summary)  # written by Engine.fit during the job
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError as error:
        with caplog.at_level(logging.ERROR, logger="trainer"):
            record_failed_job(str(tmp_path), error, earlier, monitor="val/f1", mode=None)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {**engine_summary, "error": "RuntimeError: CUDA out of memory"}
    assert "Traceback" in caplog.text  # unexpected errors keep their traceback in the job's log


def test_a_summary_from_an_earlier_run_in_the_directory_is_left_alone(tmp_path):
    old = {"status": "completed", "monitor": "val/f1", "mode": "max", "best_epoch": 5, "best_value": 0.99,
           "epochs_run": 5, "final": {}}
    write(tmp_path / "summary.json", old)
    earlier = summary_stamp(str(tmp_path))
    record_failed_job(str(tmp_path), UserError("run directory already holds checkpoints"), earlier, monitor="val/f1", mode="max")
    assert json.loads((tmp_path / "summary.json").read_text()) == old
