"""RunFiles: which checkpoints a run keeps, and summary.json."""

import json
import math

import pytest
import torch

from trainer.engine.run_files import RunFiles, finite_or_none


def kept(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))


def play(files, values, mode, best_so_far=None):
    """Feed per-epoch values as the Engine would; each checkpoint holds its epoch and the top-k then."""
    for epoch, value in enumerate(values, start=1):
        improved = math.isfinite(value) and (best_so_far is None or (value < best_so_far if mode == "min" else value > best_so_far))
        if improved:
            best_so_far = value
        files.after_epoch(epoch, "val/loss", value, mode, improved,
                          lambda: {"epoch": epoch, "top_k": [dict(entry) for entry in files.top_k]})


@pytest.mark.parametrize("mode", ["min", "max"])
def test_keeps_the_k_best_epochs_and_deletes_the_rest(tmp_path, mode):
    values = [0.5, 0.3, 0.9, 0.1, 0.4, 0.7]
    files = RunFiles(str(tmp_path), save_top_k=2)
    play(files, values, mode)
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=mode == "max")[:2]
    expected = sorted(f"epoch-{i + 1:03d}_val_loss-{values[i]:.4f}.ckpt" for i in order)
    assert kept(tmp_path) == sorted(expected + ["best.ckpt", "last.ckpt"])
    assert [entry["epoch"] for entry in files.top_k] == [i + 1 for i in order]
    best_epoch = order[0] + 1
    assert torch.load(tmp_path / "checkpoints" / "best.ckpt")["epoch"] == best_epoch
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt")
    assert last["epoch"] == len(values)
    assert [entry["file"] for entry in last["top_k"]] == [entry["file"] for entry in files.top_k]


def test_a_non_finite_value_is_never_ranked(tmp_path):
    files = RunFiles(str(tmp_path), save_top_k=3)
    play(files, [0.5, float("nan"), float("inf"), 0.4], "min")
    assert [entry["epoch"] for entry in files.top_k] == [4, 1]
    assert not any("nan" in name or "inf" in name for name in kept(tmp_path))


def test_top_k_zero_keeps_only_best_and_last(tmp_path):
    files = RunFiles(str(tmp_path), save_top_k=0)
    play(files, [0.5, 0.3, 0.9], "min")
    assert kept(tmp_path) == ["best.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "best.ckpt")["epoch"] == 2


def test_nothing_is_written_without_a_run_dir_or_with_saving_off(tmp_path):
    calls = []
    for files in (RunFiles(None, save_top_k=2), RunFiles(str(tmp_path), save_top_k=2, save_checkpoints=False)):
        files.after_epoch(1, "val/loss", 0.1, "min", True, lambda: calls.append(1) or {})
        files.save("last.ckpt", {})
    assert calls == []  # the state is not even built
    assert not (tmp_path / "checkpoints").exists()


def test_summary_is_json_with_null_for_non_finite_numbers(tmp_path):
    files = RunFiles(str(tmp_path / "run"))
    files.write_summary({"best_value": float("nan"), "final": {"val/loss": float("inf"), "val/f1": 0.5}})
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {
        "best_value": None, "final": {"val/loss": None, "val/f1": 0.5}
    }
    assert finite_or_none([1.0]) == [1.0]  # only dicts are walked; lists pass through
    assert not list((tmp_path / "run").glob("*.tmp"))
