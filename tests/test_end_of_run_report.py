"""The end-of-run report (per_class.json, confusion matrix): of the weights best.ckpt was chosen by, from
the predictions the Engine kept, without reading a file; from rank 0's best.ckpt only after a resume."""

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import read_csv, read_json
from trainer.checkpointing.checkpoint import save_checkpoint
from trainer.engine.loop import Engine
from trainer.engine.settings import LoopSettings
from trainer.optim.schedules import Schedule
from trainer.run.end_of_run import report_best_checkpoint

NAMES = ["a", "b", "c"]


def loaders(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 5, generator=gen)
    y = torch.randint(0, 3, (60,), generator=gen)
    return DataLoader(TensorDataset(x[:40], y[:40]), batch_size=8), DataLoader(TensorDataset(x[40:], y[40:]), batch_size=7)


def tiny_engine(run_dir=None, monitor="val/loss", ema=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    return Engine(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), Schedule(None), ["accuracy"],
                  device=torch.device("cpu"), loop=LoopSettings(max_epochs=1, monitor=monitor), ema=ema, run_dir=run_dir)


def expected_rows(model, loader):
    """The report computed here, independently: a plain forward pass and scikit-learn."""
    x, y = loader.dataset.tensors
    with torch.no_grad():
        pred = model.eval()(x).argmax(1).numpy()
    p, r, f, s = skm.precision_recall_fscore_support(y.numpy(), pred, labels=range(3), zero_division=0)
    return [(name, pytest.approx(pi), pytest.approx(ri), int(si)) for name, pi, ri, si in zip(NAMES, p, r, s)]


def written_rows(path):
    return [(row["class"], row["precision"], row["recall"], row["support"]) for row in json.loads(path.read_text())[:3]]


def test_report_uses_the_kept_predictions_and_no_file(tmp_path):
    engine = tiny_engine()  # no run directory: nothing on disk to read
    train, val = loaders()
    engine.fit(train, val)
    assert engine.best_epoch == 1
    model = engine.model

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the report predicted the validation set again")

    engine.predict = no_second_pass
    paths = report_best_checkpoint(engine, val, str(tmp_path), NAMES, show=False)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["per_class.csv", "per_class.json", "confusion_matrix.csv",
                                                   "confusion_matrix.png"]
    assert written_rows(tmp_path / "per_class.json") == expected_rows(model, val)


def test_resumed_run_without_a_better_epoch_reports_the_chosen_weights_of_best_ckpt(tmp_path):
    engine = tiny_engine(run_dir=str(tmp_path), monitor="val_ema/accuracy")
    train, val = loaders()
    raw, chosen = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)), nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    assert expected_rows(raw, val) != expected_rows(chosen, val)  # the two weights report differently
    save_checkpoint({"model": raw.state_dict(), "ema": chosen.state_dict(), "monitor": "val_ema/accuracy"},
                    str(tmp_path / "checkpoints" / "best.ckpt"))
    engine.best_epoch, engine.best_value = 1, 0.5  # as loaded by resume: no predictions kept
    assert getattr(engine, "best_outputs", None) is None
    report_best_checkpoint(engine, val, str(tmp_path), NAMES, show=False)
    assert written_rows(tmp_path / "per_class.json") == expected_rows(chosen, val)


def test_no_report_without_a_best_epoch(tmp_path):
    engine = tiny_engine()
    _, val = loaders()
    assert report_best_checkpoint(engine, val, str(tmp_path), NAMES, show=False) == []
    assert not (tmp_path / "per_class.json").exists()


def test_run_reports_the_ema_weights_it_monitored(cli, tmp_path):
    """A slow EMA lags far behind the model: the report must be of the EMA, as best.ckpt was chosen by it."""
    run_dir = tmp_path / "run"
    result = cli("trainer", "trainer.max_epochs=1", "trainer.ema_decay=0.999", "monitor=val_ema/accuracy",
                 "progress=false", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    best = read_json(run_dir / "summary.json")["best_epoch"]
    row = read_csv(run_dir / "metrics.csv")[best - 1]
    assert abs(float(row["val/accuracy"]) - float(row["val_ema/accuracy"])) > 0.2  # the test tells them apart
    rows = {r["class"]: r for r in read_json(run_dir / "per_class.json")}
    assert rows["weighted avg"]["recall"] == pytest.approx(float(row["val_ema/accuracy"]), abs=1e-12)  # = accuracy
    counts = np.array([[int(n) for n in line.split(",")[1:]] for line in (run_dir / "confusion_matrix.csv").read_text().splitlines()[1:]])
    assert np.trace(counts) / counts.sum() == pytest.approx(float(row["val_ema/accuracy"]), abs=1e-12)
