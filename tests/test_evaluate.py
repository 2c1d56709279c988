"""`python -m trainer.evaluate`: the weights it reports, its tables at 80 columns, and the help of evaluate,
predict and export. Runs the real commands in subprocesses."""

import io
import subprocess
import sys

import numpy as np
import pytest

from conftest import cli_env, read_csv, read_json, run_module

NARROW = {"COLUMNS": "80"}


def test_evaluate_reports_the_weights_the_checkpoint_was_chosen_by(ema_run, tmp_path):
    result = run_module("trainer.evaluate", f"ckpt_path={ema_run / 'checkpoints' / 'best.ckpt'}", cwd=tmp_path,
                        env_extra=NARROW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "weights: EMA (the run monitored val_ema/f1)" in result.stdout
    assert "validation metrics" in [line.strip() for line in result.stdout.splitlines()]  # its title, unwrapped

    row = read_csv(ema_run / "metrics.csv")[0]
    written = read_json(ema_run / "checkpoints" / "best.metrics.json")
    assert written["weights"] == "ema"
    # Both sets of weights are scored, each reproducing its metrics.csv column.
    assert set(written["metrics"]) == {f"{p}/{m}" for p in ("val", "val_ema") for m in ("loss", "accuracy", "f1")}
    for key, value in written["metrics"].items():
        assert value == pytest.approx(float(row[key]), abs=1e-6), key
    assert abs(float(row["val/f1"]) - float(row["val_ema/f1"])) > 0.05  # otherwise this test could not tell them apart

    # The reports are the EMA's: every class is in the split, so the macro F1 equals val_ema/f1, and the
    # confusion matrix's diagonal gives val_ema/accuracy.
    per_class = {r["class"]: r for r in read_csv(ema_run / "checkpoints" / "best.per_class.csv")}
    assert float(per_class["macro avg"]["f1"]) == pytest.approx(float(row["val_ema/f1"]), abs=1e-4)
    with open(ema_run / "checkpoints" / "best.confusion_matrix.csv") as f:
        counts = np.array([[int(n) for n in line.split(",")[1:]] for line in f.read().splitlines()[1:]])
    assert counts.sum() == 360
    assert np.trace(counts) / counts.sum() == pytest.approx(float(row["val_ema/accuracy"]), abs=1e-9)


def test_evaluate_of_a_run_that_kept_but_did_not_monitor_its_ema_reports_the_raw_weights(ema_run, tmp_path, capsys):
    """The same checkpoint, as if its run had monitored val/f1: the raw weights are the chosen ones.
    In process, on a config composed by Hydra, to keep the suite quick."""
    import torch
    from hydra import compose, initialize_config_dir

    from conftest import REPO
    from trainer.evaluate import evaluate

    ckpt = torch.load(ema_run / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["monitor"] = "val/f1"
    torch.save(ckpt, tmp_path / "raw.ckpt")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        evaluate(compose("evaluate", overrides=[f"ckpt_path={tmp_path / 'raw.ckpt'}"]))
    assert "weights: raw, not the EMA (the run monitored val/f1)" in capsys.readouterr().out
    assert read_json(tmp_path / "raw.metrics.json")["weights"] == "raw"
    row = read_csv(ema_run / "metrics.csv")[0]
    macro = {r["class"]: r for r in read_csv(tmp_path / "raw.per_class.csv")}["macro avg"]
    assert float(macro["f1"]) == pytest.approx(float(row["val/f1"]), abs=1e-4)


def test_report_titles_are_whole_lines_at_80_columns_even_with_two_classes():
    """A table narrower than its title used to wrap the title mid-phrase."""
    from rich.console import Console

    from trainer.reporting.class_reports import print_reports

    console = Console(width=80, record=True, file=io.StringIO())
    print_reports(console, np.array([0, 1, 1, 0]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]]), ["a", "b"])
    lines = [line.strip() for line in console.export_text().splitlines()]
    assert "per-class report" in lines
    assert "confusion matrix: rows true, columns predicted" in lines


HELP_KEYS = {
    "trainer.evaluate": ("ckpt_path: ???", "# required", "output: null", "metrics.json", "device: auto"),
    "trainer.predict": ("ckpt_path: ???", "input: ???", "tta: none", "# none | flip", "skip_bad_files: false",
                        "path_column: null"),
    "trainer.export": ("ckpt_path: ???", "format: onnx", "# onnx (needs pip install 'trainer[export]') | torchscript",
                       "overwrite: false", "tolerance: 0.0001"),
}


@pytest.mark.parametrize("module", sorted(HELP_KEYS))
def test_help_lists_the_commands_own_settings_with_comments_without_importing_torch(module, tmp_path):
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{module!r}, '--help']\n"
        f"try:\n    runpy.run_module({module!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'timm', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"{module}: ")
    for expected in HELP_KEYS[module]:
        assert expected in text, expected
    assert f"python -m {module} ckpt_path=" in text.split("Example")[-1]  # an example at the end
    assert "powered by Hydra" not in text and "loss: ce" not in text  # not Hydra's help over the trainer's groups
    assert "HEAVY []" in text


def test_help_is_the_same_through_the_real_command(tmp_path):
    result = run_module("trainer.predict", "--help", cwd=tmp_path)
    assert result.returncode == 0 and not result.stderr
    assert "tta: none           # none | flip" in result.stdout  # the setting with its comment
