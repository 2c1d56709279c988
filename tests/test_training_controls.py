"""Optimizers, schedules and the engine's controls, each checked by what it does to a real run."""

import math

import pytest
import torch

from conftest import compose_train, read_csv, read_json, schedule_rates
from trainer.errors import UserError
from trainer.lr_preview import schedule_lrs
from trainer.optim.optimizers import param_groups
from trainer.run import assembly, checks

LR = 3e-3  # the default adamw learning rate


def epoch_lrs(*overrides, steps_per_epoch=4):
    cfg = compose_train(*overrides)
    model = torch.nn.Linear(2, 2)
    rows = schedule_lrs(cfg, steps_per_epoch, model)
    return [lrs[0] for epoch, step, lrs in rows if step == 0], [lrs[0] for _, _, lrs in rows]


def test_cosine_spans_the_run_after_a_linear_warmup():
    epochs, _ = epoch_lrs("scheduler=cosine", "scheduler.warmup_epochs=2", "trainer.max_epochs=10")
    start = 0.01 * LR
    assert epochs[0] == pytest.approx(start)
    assert epochs[1] == pytest.approx(start + (LR - start) / 2)
    for e in range(3, 11):  # cosine over the 8 epochs after warmup
        assert epochs[e - 1] == pytest.approx(LR * (1 + math.cos(math.pi * (e - 3) / 8)) / 2, rel=1e-6)


def schedule_run(cfg, steps_per_epoch, epochs, start=None):
    """Learning rate at each optimizer step of `epochs` epochs, optionally continuing from saved states."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    optimizer, schedule = assembly.build_optimization(cfg, model, steps_per_epoch)
    if start is not None:
        optimizer.load_state_dict(start[0])
        schedule.load_state_dict(start[1])
    lrs = schedule_rates(optimizer, schedule, epochs, steps_per_epoch)
    return lrs, (optimizer.state_dict(), schedule.state_dict())


@pytest.mark.parametrize("scheduler, extra", [
    ("cosine", []), ("cosine", ["scheduler.interval=step"]), ("cosine", ["scheduler.warmup_epochs=2"]),
    ("onecycle", []), ("onecycle", ["scheduler.interval=epoch"]),
])
@pytest.mark.parametrize("done", [1, 3, 6])  # within the warmup, mid-run, at the end of the first plan
def test_more_epochs_on_resume_replan_a_run_length_schedule(scheduler, extra, done):
    """A run planned for 6 epochs, resumed after `done` epochs with 10: from there on its rates are those
    of a run planned for 10 epochs from the start (cosine does not rise again; onecycle does not fail)."""
    steps = 3
    first = compose_train(f"scheduler={scheduler}", "trainer.max_epochs=6", *extra)
    longer = compose_train(f"scheduler={scheduler}", "trainer.max_epochs=10", *extra)
    _, saved = schedule_run(first, steps, done)
    resumed, _ = schedule_run(longer, steps, 10 - done, start=saved)
    fresh, _ = schedule_run(longer, steps, 10)
    assert resumed == pytest.approx(fresh[done * steps:], rel=1e-6)


def test_more_epochs_keep_a_schedule_that_does_not_depend_on_the_run_length():
    cfg = compose_train("scheduler=cosine", "scheduler.t_max=4", "trainer.max_epochs=6")
    _, saved = schedule_run(cfg, 2, 3)
    resumed, _ = schedule_run(compose_train("scheduler=cosine", "scheduler.t_max=4", "trainer.max_epochs=9"), 2, 6, start=saved)
    unbroken, _ = schedule_run(compose_train("scheduler=cosine", "scheduler.t_max=4", "trainer.max_epochs=9"), 2, 9)
    assert resumed == pytest.approx(unbroken[6:], rel=1e-6)  # t_max=4 is the user's period, whatever the run's length


def test_step_interval_converts_epochs_to_optimizer_steps():
    _, steps = epoch_lrs("scheduler=cosine", "scheduler.interval=step", "trainer.max_epochs=3", steps_per_epoch=5)
    assert len(steps) == 15
    for i, lr in enumerate(steps):
        assert lr == pytest.approx(LR * (1 + math.cos(math.pi * i / 15)) / 2, rel=1e-6)


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_step_and_exponential_decay_per_epoch(interval):
    epochs, _ = epoch_lrs("scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5", f"scheduler.interval={interval}", "trainer.max_epochs=6")
    assert epochs == pytest.approx([LR * 0.5 ** ((e - 1) // 2) for e in range(1, 7)])
    epochs, _ = epoch_lrs("scheduler=exponential", "scheduler.gamma=0.8", f"scheduler.interval={interval}", "trainer.max_epochs=5")
    assert epochs == pytest.approx([LR * 0.8 ** (e - 1) for e in range(1, 6)])


def test_multistep_and_onecycle_match_torch():
    epochs, _ = epoch_lrs("scheduler=multistep", "scheduler.milestones=[2,4]", "scheduler.gamma=0.1", "trainer.max_epochs=5")
    assert epochs == pytest.approx([LR, LR, LR * 0.1, LR * 0.1, LR * 0.01])
    _, steps = epoch_lrs("scheduler=onecycle", "trainer.max_epochs=3", steps_per_epoch=4)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    reference = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=12)
    expected = []
    for _ in range(12):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        reference.step()
    assert steps == pytest.approx(expected)


def test_plateau_follows_the_monitor():
    # the preview feeds a metric that never improves: the rate drops after `patience` bad epochs
    epochs, _ = epoch_lrs("scheduler=plateau", "scheduler.patience=1", "scheduler.factor=0.5", "trainer.max_epochs=6")
    assert epochs == pytest.approx([LR, LR, LR, LR * 0.5, LR * 0.5, LR * 0.25])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["scheduler.interval=batch"], "scheduler.interval=batch is not valid"),
        (["scheduler.warmup_epochs=5", "trainer.max_epochs=5"], "scheduler.warmup_epochs=5 is not valid for a 5-epoch run"),
        (["optimizer.lr=0"], "optimizer.lr=0.0 is not valid"),
        (["trainer.precision=16"], "trainer.precision=16 is not valid"),
        (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite=ignore is not valid"),
        (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches=1.5 is not valid"),
        (["trainer.ema_decay=1.5"], "trainer.ema_decay=1.5 is not valid"),
        (["scheduler=plateau", "scheduler.interval=step"], "scheduler=plateau follows the monitored metric"),
    ],
)
def test_bad_controls_are_refused_before_training(overrides, message):
    cfg = compose_train(*overrides)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        checks.check_config(cfg)
        assembly.assemble(cfg, run_dir=None)


def test_weight_decay_skips_biases_and_norms_and_head_gets_its_own_rate():
    cfg = compose_train()
    model = assembly.build_model_and_loss(cfg, assembly.build_data(cfg, torch.device("cpu")))[0]
    groups = param_groups(model, lr=0.1, weight_decay=0.01, decay_norm_and_bias=False, head_lr=1.0)
    head = {id(p) for p in model.get_classifier().parameters()}
    for group in groups:
        for p in group["params"]:
            assert group["lr"] == (1.0 if id(p) in head else 0.1)
            assert group["weight_decay"] == (0.01 if p.ndim > 1 else 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def run_in_process(tmp_path, *overrides):
    cfg = compose_train(*overrides)
    checks.check_config(cfg)
    engine, train_loader, val_loader = assembly.assemble(cfg, run_dir=str(tmp_path))
    summary = engine.fit(train_loader, val_loader)
    return engine, summary


def test_early_stopping_records_why(tmp_path):
    # the validation loss falls while training works, so "max" mode never sees an improvement after epoch 1
    engine, summary = run_in_process(tmp_path, "monitor=val/loss", "mode=max", "trainer.patience=2", "trainer.max_epochs=10")
    assert summary["status"] == "stopped_early"
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 1
    assert "did not improve" in summary["reason"]
    assert read_json(tmp_path / "summary.json")["status"] == "stopped_early"


def test_save_top_k_keeps_the_k_best_epochs(tmp_path):
    engine, summary = run_in_process(tmp_path, "checkpoint.save_top_k=2", "trainer.max_epochs=5", "monitor=val/loss")
    losses = {row["epoch"]: row["val/loss"] for row in engine.history}
    best_two = sorted(losses, key=losses.get)[:2]
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*.ckpt"))
    assert files == sorted(f"epoch-{e:03d}_val_loss-{losses[e]:.4f}.ckpt" for e in best_two)
    for name in files:
        assert torch.load(tmp_path / "checkpoints" / name, weights_only=True)["epoch"] in best_two


def test_gradient_clipping_bounds_the_update(tmp_path):
    def first_update(*overrides):
        cfg = compose_train("optimizer=sgd", "optimizer.lr=1.0", "optimizer.momentum=0", "optimizer.nesterov=false",
                            "optimizer.weight_decay=0", "trainer.limit_train_batches=1", *overrides)
        engine, train_loader, _ = assembly.assemble(cfg, run_dir=None)
        before = torch.cat([p.detach().flatten().clone() for p in engine.model.parameters()])
        engine.train_epoch(train_loader)
        return (torch.cat([p.detach().flatten() for p in engine.model.parameters()]) - before).cpu()

    free = first_update()
    assert free.norm() > 0.5
    assert first_update("trainer.grad_clip_norm=0.5").norm().item() == pytest.approx(0.5, rel=1e-4)
    assert first_update("trainer.grad_clip_value=0.001").abs().max() <= 0.001 + 1e-7


def test_debug_controls_shrink_the_run(tmp_path):
    engine, summary = run_in_process(tmp_path / "limit", "trainer.limit_train_batches=3", "trainer.limit_val_batches=0.5", "trainer.max_epochs=1")
    assert engine.optimizer_steps == 3
    engine, summary = run_in_process(tmp_path / "fast", "trainer.fast_dev_run=true")
    assert summary["epochs_run"] == 1 and engine.optimizer_steps == 1
    assert not (tmp_path / "fast" / "checkpoints").exists()
    engine, summary = run_in_process(tmp_path / "overfit", "trainer.overfit_batches=2", "trainer.max_epochs=15", "data.batch_size=8")
    assert engine.optimizer_steps == 30
    assert summary["final"]["val/accuracy"] == 1.0  # validated on the same 16 memorised images


def test_bf16_autocast_trains_without_a_grad_scaler(tmp_path):
    cfg = compose_train("trainer.precision=bf16", "trainer.max_epochs=2", "trainer.device=cpu")
    engine, train_loader, val_loader = assembly.assemble(cfg, run_dir=str(tmp_path))
    seen = set()  # (grad enabled, dtype) of the first convolution's outputs and of the loss
    conv = next(m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: seen.add(("conv", torch.is_grad_enabled(), output.dtype)))
    loss_fn = engine.loss_fn.forward

    def recorded_loss(logits, target):
        loss = loss_fn(logits, target)
        seen.add(("loss", torch.is_grad_enabled(), loss.dtype))
        return loss

    engine.loss_fn.forward = recorded_loss
    summary = engine.fit(train_loader, val_loader)
    # the forward really ran in bfloat16, in training and validation; the loss is reduced in float32
    assert seen == {("conv", True, torch.bfloat16), ("conv", False, torch.bfloat16), ("loss", True, torch.float32),
                    ("loss", False, torch.float32)}
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())  # autocast keeps float32 weights
    assert not engine.scaler.is_enabled()
    assert summary["final"]["val/accuracy"] > 0.8


def test_fp16_trains_on_the_cpu_from_the_command_line(cli, tmp_path):
    """torch's CPU autocast does float16 and GradScaler("cpu") scales the loss; the numbers come out close to
    float32's, but not equal to them (they would be if autocast did nothing)."""
    short = ("trainer.device=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1")
    losses = {}
    for precision in ("32", "fp16"):
        result = cli("trainer", f"trainer.precision={precision}", *short, f"hydra.run.dir={tmp_path / precision}")
        assert result.returncode == 0, result.stdout + result.stderr
        losses[precision] = float(read_csv(tmp_path / precision / "metrics.csv")[0]["train/loss"])
    assert "trainer.precision=fp16 on the CPU runs" in (tmp_path / "fp16" / "train.log").read_text()
    last = torch.load(tmp_path / "fp16" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["scaler"]["scale"] > 0 and last["optimizer_steps"] + last["scaler"]["_growth_tracker"] >= 3
    assert 0 < abs(losses["fp16"] - losses["32"]) < 0.01 * losses["32"]


@pytest.mark.parametrize("loss", ["loss=ce loss.label_smoothing=0.1", "loss=label_smoothing"])
def test_mixup_smoothing_and_a_smoothing_loss_are_not_both_applied(loss, tmp_path):
    mixup = ("data=image_folder", f"data.root={tmp_path}", "data.mixup=0.8", "data.label_smoothing=0.1")
    key = "loss.label_smoothing=0.1" if "ce" in loss else "loss.smoothing=0.1"
    with pytest.raises(UserError, match=rf"data\.label_smoothing=0\.1 smooths the mixup/cutmix targets and {key} "
                                        r"would smooth them again; set data\.label_smoothing=0"):
        checks.check_config(compose_train(*mixup, *loss.split()))
    # either smoothing alone is fine, and so is data smoothing with a loss that has none of its own
    checks.check_config(compose_train(*mixup[:-1], "data.label_smoothing=0", *loss.split()))
    checks.check_config(compose_train(*mixup, "loss=focal"))
    checks.check_config(compose_train(*mixup[:-1], *loss.split(), "data.mixup=0"))


def test_channels_last_and_ema(tmp_path):
    engine, summary = run_in_process(tmp_path, "trainer.channels_last=true", "trainer.ema_decay=0.9", "monitor=val_ema/f1", "trainer.max_epochs=2")
    conv = next(m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert {"val_ema/loss", "val_ema/f1"} <= set(summary["final"])
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["ema"] is not None and best["epoch"] == summary["best_epoch"]
    ema_weights = torch.cat([t.flatten().float() for t in best["ema"].values()])
    raw_weights = torch.cat([t.flatten().float() for t in best["model"].values()])
    assert not torch.equal(ema_weights, raw_weights)
    # what last.ckpt keeps is the engine's average (test_engine_units checks the average against its formula)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["ema"].keys() == engine.ema.module.state_dict().keys()
    assert all(torch.equal(last["ema"][key], value.cpu()) for key, value in engine.ema.module.state_dict().items())


def test_deterministic_runs_are_bit_identical(cli, tmp_path):
    for name in ("a", "b"):
        result = cli("trainer", "trainer.deterministic=true", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr
    rows = [read_csv(tmp_path / name / "metrics.csv") for name in ("a", "b")]
    for row_a, row_b in zip(*rows):
        row_a.pop("seconds"), row_b.pop("seconds")
        assert row_a == row_b
    states = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["model"] for name in ("a", "b")]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


@pytest.mark.slow
def test_torch_compile(tmp_path):
    """The compiled model really ran compiled graphs (dynamo's counters), and its numbers are those of the plain
    model within float tolerance (inductor may order sums differently)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # no dropout: compiled dropout draws from inductor's own random stream, so its masks differ from eager's
    engine, summary = run_in_process(tmp_path / "compiled", "trainer.compile=true", "trainer.max_epochs=1", "model.dropout=0")
    assert summary["status"] == "completed"
    assert isinstance(engine.model, torch._dynamo.eval_frame.OptimizedModule)
    assert counters["stats"]["unique_graphs"] >= 1 and counters["frames"]["ok"] >= 1, dict(counters)
    assert "_orig_mod." not in "".join(torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=True)["model"])
    inputs = torch.randn(16, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(engine.model(inputs), engine.model._orig_mod(inputs), rtol=1e-4, atol=1e-5)
    # a whole epoch: rounding differences of the compiled kernels grow through 23 Adam steps, to 0.3-1.3% here
    _, plain = run_in_process(tmp_path / "plain", "trainer.max_epochs=1", "model.dropout=0")
    for key in ("train/loss", "val/loss"):
        assert summary["final"][key] == pytest.approx(plain["final"][key], rel=3e-2), key
    for key in ("train/accuracy", "val/accuracy"):
        assert summary["final"][key] == pytest.approx(plain["final"][key], abs=3e-2), key


class Watcher:
    """A callback that keeps best.ckpt's bytes after each epoch."""

    def __init__(self, run_dir):
        self.best = run_dir / "checkpoints" / "best.ckpt"
        self.saved = {}

    def on_fit_start(self, engine, *args): pass
    def on_epoch_start(self, engine, epoch): pass
    def on_batch_end(self, engine, stage): pass
    def on_fit_end(self, engine, summary): pass

    def on_epoch_end(self, engine, record, improved):
        self.saved[engine.epoch] = self.best.read_bytes()


def test_a_nan_stops_the_epoch_early_and_leaves_best_ckpt_untouched(tmp_path, monkeypatch):
    """Through fit, with checks every 5 optimizer steps (test_engine_units checks the real interval on a long epoch)."""
    from trainer.engine import loop as engine_module
    from trainer.engine.loop import NonFiniteLoss

    monkeypatch.setattr(engine_module, "NONFINITE_CHECK_STEPS", 5)
    cfg = compose_train("trainer.max_epochs=3", "data.batch_size=8", "trainer.limit_train_batches=20", "trainer.limit_val_batches=2")
    watcher = Watcher(tmp_path)
    engine, train_loader, val_loader = assembly.assemble(cfg, run_dir=str(tmp_path), callbacks=[watcher])
    loss_fn, calls = engine.loss_fn, []

    def nan_in_epoch_two_step_seven(logits, targets):
        loss = loss_fn(logits, targets)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 20 + 7:
                return loss * float("nan")
        return loss

    engine.loss_fn = nan_in_epoch_two_step_seven
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, step 7 of 20 \(stopped after step 10; best.ckpt is untouched\)"):
        engine.fit(train_loader, val_loader)
    assert len(calls) == 20 + 10  # batches trained: the first check after step 7 stopped the epoch
    assert list(watcher.saved) == [1] and watcher.best.read_bytes() == watcher.saved[1]
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "failed" and summary["epochs_run"] == 1 and "step 7 of 20" in summary["error"]


def test_mixup_trains_with_the_configured_loss_and_validates_with_it(tmp_path):
    """loss=focal with balanced class weights under mixup: every training step's loss is the focal formula
    (written here) on the mixed targets, weighted as sklearn balances the classes; validation calls the same loss
    with the labels."""
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    from image_files import write_image_folder

    write_image_folder(tmp_path / "images", per_class=6)
    cfg = compose_train("data=image_folder", f"data.root={tmp_path / 'images'}", "data.mixup=0.8", "data.cutmix=1.0",
                        "data.batch_size=8", "data.num_workers=0", "data.image_size=16", "data.label_smoothing=0.1",
                        "loss=focal", "loss.gamma=1.5", "loss.weights=balanced", "trainer.max_epochs=1")
    checks.check_config(cfg)
    checks.normalise_config(cfg)
    engine, train_loader, val_loader = assembly.assemble(cfg, run_dir=str(tmp_path / "run"))
    calls, loss_fn = [], engine.loss_fn.forward
    engine.loss_fn.forward = lambda logits, target: calls.append(
        (torch.is_grad_enabled(), logits.detach().double(), target, loss_fn(logits, target))) or calls[-1][3]
    engine.fit(train_loader, val_loader)
    weights = compute_class_weight("balanced", classes=np.arange(10), y=engine_train_labels(cfg))
    training = [call for call in calls if call[0]]
    assert len(training) == len(train_loader) and all(not call[0] for call in calls[len(training):])
    for _, logits, q, loss in training:
        q = q.double().numpy()
        assert q.shape == (8, 10) and np.allclose(q.sum(1), 1) and q.max() < 1  # mixed and smoothed (0.1)
        log_p = torch.log_softmax(logits, dim=1).numpy()
        expected = (q * weights * (1 - np.exp(log_p)) ** 1.5 * -log_p).sum() / (q @ weights).sum()
        assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert all(not target.is_floating_point() for grad, _, target, _ in calls if not grad)  # validation: labels


def engine_train_labels(cfg):
    return assembly.build_data(cfg, torch.device("cpu")).train_labels
