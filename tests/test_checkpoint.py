"""Checkpoint files: weights_only round trips, atomic writes, refusing unsafe or broken files."""

import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

import trainer.checkpointing.checkpoint as checkpoint_module
from trainer.checkpointing.checkpoint import (chosen_by_ema, chosen_weights, load_model_state, read_checkpoint, rng_state, save_checkpoint,
                                set_rng_state)
from trainer.errors import UserError


def sample_state():
    torch.manual_seed(0)
    return {
        "model": nn.Linear(4, 3).state_dict(),
        "nested": {"a": {"b": torch.arange(5), "c": [1, 2.5, None, "text"]}, "empty": {}},
        "list": [torch.ones(2, 2), 3, -1.5, None, True],
        "none": None,
        "float": 0.125,
        "nan": float("nan"),
        "int": 7,
        "string": "val/loss",
        "history": [{"epoch": 1, "val/loss": 0.9}, {"epoch": 2, "val/loss": 0.7}],
        "rng": rng_state(),
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b
    else:
        assert type(a) is type(b) and a == b


def leftovers(directory):
    return [name for name in os.listdir(directory) if name.startswith(".tmp-")]


# --- round trip ------------------------------------------------------------------------------
def test_save_then_weights_only_load_round_trips(tmp_path):
    state = sample_state()
    path = tmp_path / "sub" / "dir" / "last.ckpt"  # directories are created
    save_checkpoint(state, str(path))
    loaded = torch.load(path, weights_only=True)
    assert_same(state, loaded)
    assert_same(state, read_checkpoint(str(path)))
    assert leftovers(path.parent) == []
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_save_overwrites(tmp_path):
    path = str(tmp_path / "x.ckpt")
    save_checkpoint({"v": 1}, path)
    save_checkpoint({"v": 2}, path)
    assert torch.load(path, weights_only=True) == {"v": 2}
    assert leftovers(tmp_path) == []


def draws():
    return (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], random.gauss(0, 1), np.random.randn(3))


def test_rng_state_round_trip_reproduces_draws(tmp_path):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in Python's
    path = str(tmp_path / "rng.ckpt")
    save_checkpoint({"rng": rng_state()}, path)
    expected = draws()
    other = draws()
    assert not torch.equal(expected[0], other[0])  # the generators did advance
    set_rng_state(read_checkpoint(path)["rng"])
    again = draws()
    assert torch.equal(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    assert expected[2] == again[2]
    assert expected[3] == again[3]
    np.testing.assert_array_equal(expected[4], again[4])


def test_set_rng_state_in_memory():
    state = rng_state()
    first = draws()
    set_rng_state(state)
    second = draws()
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2:4] == second[2:4]


# --- atomic writes ---------------------------------------------------------------------------
def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "best.ckpt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, str(path))
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial checkpoint bytes" * 100)
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, str(path))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == ["best.ckpt"]


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        f.write(b"abc")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 1}, str(tmp_path / "last.ckpt"))
    assert os.listdir(tmp_path) == []


# --- reading broken or unsafe files ----------------------------------------------------------
def make_marker(path):
    with open(path, "w") as f:
        f.write("code ran")
    return "owned"


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (make_marker, (self.marker,))


def assert_user_error_names_path(path):
    with pytest.raises(UserError) as info:
        read_checkpoint(str(path))
    assert str(path) in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    message = assert_user_error_names_path(tmp_path / "nope.ckpt")
    assert "does not exist" in message


def test_directory_is_not_a_checkpoint(tmp_path):
    assert_user_error_names_path(tmp_path)


def test_truncated_file(tmp_path):
    good = tmp_path / "good.ckpt"
    save_checkpoint(sample_state(), str(good))
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[:100])
    assert_user_error_names_path(bad)


def test_empty_file(tmp_path):
    bad = tmp_path / "empty.ckpt"
    bad.write_bytes(b"")
    assert_user_error_names_path(bad)


def test_text_file(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a checkpoint\n" * 10)
    assert_user_error_names_path(bad)


def test_zip_that_is_not_a_torch_file(tmp_path):
    import zipfile

    bad = tmp_path / "archive.ckpt"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("readme.txt", "hello")
    assert_user_error_names_path(bad)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "marker"
    payload = {"model": {"w": torch.ones(1)}, "evil": Evil(str(marker))}
    bad = tmp_path / "evil.ckpt"
    if writer == "pickle":
        with open(bad, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, bad)
    assert not marker.exists()
    message = assert_user_error_names_path(bad)
    if writer == "torch.save":  # a real torch file with a pickled global: refused as unsafe
        assert "refusing" in message
    assert not marker.exists()
    # sanity: the payload really would run code when unpickled unsafely
    if writer == "pickle":
        with open(bad, "rb") as f:
            pickle.load(f)
        assert marker.exists()


# --- loading model weights -------------------------------------------------------------------
def test_load_model_state_class_count_mismatch():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    other = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as info:
        load_model_state(model, other.state_dict(), "run/best.ckpt")
    message = str(info.value)
    assert "run/best.ckpt" in message
    assert "2.weight: file (10, 16) vs model (3, 16)" in message
    assert "2.bias: file (10,) vs model (3,)" in message
    assert "0.weight" not in message  # only the mismatched keys are listed
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # nothing was loaded


def test_load_model_state_missing_and_unexpected_keys():
    model = nn.Sequential(nn.Linear(4, 2))
    state = {"0.weight": torch.zeros(2, 4), "extra.bias": torch.zeros(2)}
    with pytest.raises(UserError) as info:
        load_model_state(model, state, "w.pt")
    message = str(info.value)
    assert "missing keys (1): 0.bias" in message
    assert "unexpected keys (1): extra.bias" in message


def test_load_model_state_success():
    model = nn.Linear(4, 3)
    source = nn.Linear(4, 3)
    load_model_state(model, source.state_dict(), "w.pt")
    for a, b in zip(model.parameters(), source.parameters()):
        assert torch.equal(a, b)


# --- the weights a checkpoint was chosen by -------------------------------------------------------
@pytest.mark.parametrize("monitor, has_ema, chosen", [
    ("val_ema/f1", True, "ema"),
    ("val_ema/loss", True, "ema"),
    ("val/f1", True, "model"),  # an EMA kept but not monitored: the raw weights were chosen
    ("val/loss", False, "model"),
    ("val_ema/f1", False, "model"),  # nothing else to run
    (None, True, "model"),  # a checkpoint of an older run without a monitor
])
def test_chosen_weights_are_the_ema_only_when_the_run_monitored_it(monitor, has_ema, chosen):
    ckpt = {"model": {"w": torch.zeros(1)}, "ema": {"w": torch.ones(1)} if has_ema else None, "monitor": monitor}
    assert chosen_weights(ckpt) is ckpt[chosen]
    assert chosen_by_ema(ckpt) == (chosen == "ema")
