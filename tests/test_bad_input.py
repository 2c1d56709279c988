"""A user's mistake ends before training with one clear message and a non-zero exit; nothing saved is touched."""

import pytest

from conftest import read_json


def assert_refused(result, *phrases):
    assert result.returncode != 0
    message = result.stderr + result.stdout
    for phrase in phrases:
        assert phrase in message, message
    assert "Traceback" not in message, message


@pytest.mark.parametrize(
    "args, phrases",
    [
        (["loss=nope"], ["Could not find 'loss/nope'", "focal"]),
        (["trainer.max_epochs=abc"], ["trainer.max_epochs", "could not be converted to Integer"]),
        (["trainer.accumulate=0"], ["trainer.accumulate=0 is not valid", ">= 1"]),
        (["trainer.max_epochs=0"], ["trainer.max_epochs=0 is not valid"]),
        (["monitor=val/roc_auc"], ["monitor=val/roc_auc is not produced", "val/f1"]),
        (["mode=up"], ["mode=up is not valid", "min, max"]),
        (["loss.gama=1"], ["loss.gama is not a config key", "did you mean loss.gamma"]),
        (["loss.name=nope"], ["unknown loss 'nope'", "ce, f1, focal, label_smoothing"]),
        (["metric.names=[accuracy,nope]"], ["unknown metric 'nope'", "roc_auc"]),
        (["optimizer.lr=-1"], ["optimizer.lr=-1.0 is not valid"]),
        (["model=timm", "model.name=resnet1800"], ["unknown model 'resnet1800'", "did you mean"]),
        (["model.weights=/no/such/file.pth"], ["/no/such/file.pth", "does not exist"]),
        # configs pick registered builders by name; no key can name something to import and call
        (["loss._target_=os.system"], ["loss._target_ is not a config key", "the keys under loss are"]),
        (["+loss._target_=os.system"], ["loss._target_ is not a config key", "+ and ++ cannot add keys"]),
        (["+optimizer._target_=os.system"], ["optimizer._target_ is not a config key"]),
    ],
)
def test_bad_configuration_is_refused(cli, tmp_path, args, phrases):
    result = cli("trainer", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert_refused(result, *phrases)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_output_directory(cli):
    result = cli("trainer", "hydra.run.dir=/proc/no/such/dir")
    assert_refused(result, "hydra.run.dir=/proc/no/such/dir cannot be created", "writable directory")


def test_pretrained_weights_offline_name_the_alternative(cli, tmp_path):
    result = cli("trainer", "model=timm", "model.pretrained=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert_refused(result, "pretrained weights", "model.weights=")


def test_missing_checkpoint_path(cli, tmp_path):
    assert_refused(cli("trainer.evaluate", f"ckpt_path={tmp_path / 'nope.ckpt'}"), "nope.ckpt", "does not exist")
    assert_refused(cli("trainer.evaluate"), "ckpt_path is required")


def test_not_a_checkpoint(cli, tmp_path):
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_text("not a checkpoint")
    assert_refused(cli("trainer.evaluate", f"ckpt_path={bogus}"), "bogus.ckpt", "not a readable PyTorch file")


def test_existing_run_is_never_overwritten(trained_run, cli):
    before = {p.name: p.read_bytes() for p in (trained_run / "checkpoints").iterdir()}
    summary = read_json(trained_run / "summary.json")
    result = cli("trainer", "trainer.max_epochs=1", f"hydra.run.dir={trained_run}")
    assert_refused(result, "already holds checkpoints")
    after = {p.name: p.read_bytes() for p in (trained_run / "checkpoints").iterdir()}
    assert before == after
    assert read_json(trained_run / "summary.json") == summary
