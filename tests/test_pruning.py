"""hydra.sweeper.pruner=median|hyperband: a trial reports every validation to its Optuna study, a hopeless one
ends as `pruned` (summary.json, the sweep table, PRUNED in the study), in the sweeper's process and out of it."""

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import cli_env, read_csv, read_json

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install optuna): pruned searches untestable")

from optuna.trial import TrialState  # noqa: E402

from hydra_plugins.trainer_optuna_sweeper.config import HyperbandPrunerConf, MedianPrunerConf  # noqa: E402
from hydra_plugins.trainer_optuna_sweeper.pruning import PRUNED_AT, TrialPruning, make_pruner  # noqa: E402
from trainer.engine.loop import Engine  # noqa: E402
from trainer.engine.settings import LoopSettings  # noqa: E402
from trainer.optim.schedules import Schedule  # noqa: E402
from trainer.sweeps.summary import JobResult, rank, write_sweep_csv  # noqa: E402
from trainer.sweeps.tables import sweep_table  # noqa: E402

HOPELESS, GOOD = "1e-09", "0.003"  # as Hydra writes the choice's values
# The random sampler with seed 0 draws these learning rates for trials 0, 1, 2, 3 (checked by the tests):
# with n_startup_trials=1 trial 1 is compared with trial 0 only and goes on; trials 2 and 3 are below the
# median of the finished trials 0 and 1 after their first epoch.
DRAWS = [HOPELESS, GOOD, HOPELESS, HOPELESS]
EPOCHS = 3


def search(cli, sweep_dir, n_trials, pruner="median", *extra):
    result = cli("trainer", "-m", "hparams_search=optuna", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.sampler=random",
                 "hydra.sweeper.seed=0", f"optimizer.lr=choice({GOOD},{HOPELESS})", "loss=ce", "optimizer.weight_decay=0",
                 f"hydra.sweeper.pruner={pruner}", "hydra.sweeper.median.n_startup_trials=1", f"trainer.max_epochs={EPOCHS}",
                 "trainer.limit_train_batches=10", "progress=false", f"hydra.sweep.dir={sweep_dir}", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def stored_trials(sweep_dir):
    return optuna.load_study(study_name="trainer", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").trials


def check_pruned_search(sweep_dir, stdout):
    """Trials 2 and 3 of DRAWS pruned after epoch 1, everywhere the search leaves a record; 0 and 1 ran to their end."""
    trials = stored_trials(sweep_dir)
    assert [t.params["optimizer.lr"] for t in trials] == DRAWS[: len(trials)]
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE] + [TrialState.PRUNED] * (len(trials) - 2)
    rows = {r["job"]: r for r in read_csv(sweep_dir / "sweep_summary.csv")}
    for trial in trials:
        job = sweep_dir / str(trial.number)
        summary, metrics = read_json(job / "summary.json"), read_csv(job / "metrics.csv")
        assert (job / "checkpoints" / "best.ckpt").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
        # every validation was reported, at step = epoch, with the value metrics.csv holds
        assert trial.intermediate_values == {int(r["epoch"]): float(r["val/f1"]) for r in metrics}
        if trial.state == TrialState.PRUNED:
            assert summary["status"] == "pruned" and summary["epochs_run"] == 1 < EPOCHS and len(metrics) == 1
            assert f"median pruner stopped trial {trial.number} at step 1 (epoch 1)" in summary["reason"]
            assert trial.user_attrs == {PRUNED_AT: 1} and trial.value == float(metrics[0]["val/f1"])  # Optuna's rule
        else:
            assert summary["status"] == "completed" and summary["epochs_run"] == EPOCHS and len(metrics) == EPOCHS
            assert trial.value == summary["best_value"] and "reason" not in summary
        assert rows[str(trial.number)]["status"] == summary["status"]
        assert int(rows[str(trial.number)]["epochs_run"]) == summary["epochs_run"]
    # the table ranks the trials that ran to their end first, then the pruned ones, and says where they stopped
    assert [r["status"] for r in read_csv(sweep_dir / "sweep_summary.csv")] == ["completed"] * 2 + ["pruned"] * (len(trials) - 2)
    assert stdout.count("pruned at epoch 1") == len(trials) - 2
    assert OmegaConf.load(sweep_dir / "best_trial.yaml").trial == 1


@pytest.mark.slow
def test_a_median_pruned_search_stops_hopeless_trials_and_a_rerun_counts_them(cli, tmp_path):
    sweep_dir = tmp_path / "search"
    # n_jobs=2: trials 0 and 1 run as one batch (neither finished while the other ran), then 2 and 3
    result = search(cli, sweep_dir, 4, "median", "hydra.sweeper.n_jobs=2")
    check_pruned_search(sweep_dir, result.stdout)
    # the job's trial number reached it as a Hydra override: in its hydra.yaml, not among the overrides the table shows
    assert OmegaConf.load(sweep_dir / "2" / ".hydra" / "hydra.yaml").hydra.sweeper.trial == 2
    assert not any("sweeper" in o for o in OmegaConf.load(sweep_dir / "2" / ".hydra" / "overrides.yaml"))
    again = search(cli, sweep_dir, 4, "median")  # the same study: its pruned trials are done
    assert "4 of 4 trials done" in again.stdout + again.stderr
    assert len(stored_trials(sweep_dir)) == 4


@pytest.mark.slow
def test_without_a_pruner_every_trial_runs_to_its_end(cli, tmp_path):
    sweep_dir = tmp_path / "search"
    search(cli, sweep_dir, 3, "none")
    trials = stored_trials(sweep_dir)
    assert [t.params["optimizer.lr"] for t in trials] == DRAWS[:3]  # trial 2 would have been pruned
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for trial in trials:
        summary = read_json(sweep_dir / str(trial.number) / "summary.json")
        assert summary["status"] == "completed" and summary["epochs_run"] == EPOCHS and trial.intermediate_values == {}


@pytest.mark.slow
def test_jobs_in_other_processes_report_through_the_storage(cli, tmp_path):
    """submitit's local launcher runs each job in a process of its own: the job rebuilds its trial from SQLite."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    sweep_dir = tmp_path / "search"
    result = search(cli, sweep_dir, 3, "median", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    check_pruned_search(sweep_dir, result.stdout)


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("hydra.sweeper.pruner=mediane", "hydra.sweeper.pruner=mediane is not valid; use one of: none, median, hyperband"),
    ("hydra.sweeper.pruner=hyperband hydra.sweeper.hyperband.reduction_factor=1",
     "hydra.sweeper.hyperband: min_resource=1 and reduction_factor=1 must be integers >= 1 and >= 2"),
    ("hydra.sweeper.pruner=median hydra.sweeper.median.n_warmup_steps=-1",
     "hydra.sweeper.median: Number of warmup steps cannot be negative"),
])
def test_a_bad_pruner_is_refused_before_any_trial(tmp_path, override, message):
    sweep_dir = tmp_path / "search"
    args = [sys.executable, "-m", "trainer", "-m", "hparams_search=optuna", *override.split(), f"hydra.sweep.dir={sweep_dir}"]
    result = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (sweep_dir / "optuna.db").exists() and not (sweep_dir / "0").exists()


# --- the pieces, with Optuna's real pruners on an in-memory study ---------------------------------
def report_epochs(study, pruning_values, inside_epochs=False, **record_extra):
    """Run one trial through TrialPruning as the Engine would, epoch by epoch: (answer, trial)."""
    trial = study.ask()
    condition = TrialPruning(trial, "test")
    engine = SimpleNamespace(monitor="val/f1", validations=SimpleNamespace(inside_epochs=inside_epochs))
    for epoch, value in enumerate(pruning_values, 1):
        answer = condition(engine, {"epoch": epoch, "val/f1": value, **record_extra})
        if answer is not None:
            return answer, trial
    return None, trial


def finished_trial(study, values):
    trial = study.ask()
    for step, value in enumerate(values, 1):
        trial.report(value, step)
    study.tell(trial, values[-1])


def test_median_pruner_stops_a_trial_below_the_median_after_its_warmup():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", MedianPrunerConf(n_startup_trials=2, n_warmup_steps=2),
                                                                          HyperbandPrunerConf()))
    answer, trial = report_epochs(study, [0.1, 0.1, 0.1, 0.1])  # the first trial: nothing to compare with
    assert answer is None
    study.tell(trial, 0.1)
    answer, trial = report_epochs(study, [0.05, 0.05, 0.05])  # one finished trial: fewer than n_startup_trials
    assert answer is None
    study.tell(trial, state=TrialState.FAIL)  # not a finished trial for the pruner
    finished_trial(study, [0.6, 0.8, 0.9, 0.9])
    # medians of the two finished trials: 0.35 at step 1, 0.45 at step 2
    answer, trial = report_epochs(study, [0.2, 0.3, 0.3, 0.3])  # not at step 1 (warmup), at step 2 (best 0.3 < 0.45)
    assert answer == ("pruned", f"Optuna's test pruner stopped trial {trial.number} at step 2 (epoch 2): val/f1=0.3")
    stored = study._storage.get_trial(trial._trial_id)
    assert stored.intermediate_values == {1: 0.2, 2: 0.3} and stored.user_attrs == {PRUNED_AT: 2}
    answer, trial = report_epochs(study, [0.7, 0.9, 0.95])  # better than the median: runs on
    assert answer is None and study._storage.get_trial(trial._trial_id).user_attrs == {}


def test_a_run_validating_inside_epochs_reports_at_the_optimizer_step_else_at_the_epoch():
    study = optuna.create_study(direction="minimize", pruner=make_pruner("median", MedianPrunerConf(n_startup_trials=0),
                                                                          HyperbandPrunerConf()))
    answer, trial = report_epochs(study, [0.5], inside_epochs=True, step=40)
    assert answer is None and study._storage.get_trial(trial._trial_id).intermediate_values == {40: 0.5}
    answer, trial = report_epochs(study, [0.5, 0.4], step=40)  # once per epoch: n_warmup_steps counts epochs
    assert answer is None and study._storage.get_trial(trial._trial_id).intermediate_values == {1: 0.5, 2: 0.4}


def test_hyperband_pruner_stops_trials_worse_than_those_before_them():
    pruner = make_pruner("hyperband", MedianPrunerConf(), HyperbandPrunerConf(min_resource=1, max_resource=9, reduction_factor=3))
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    study = optuna.create_study(study_name="hyperband", direction="maximize", pruner=pruner)
    pruned = []
    for i in range(20):  # each trial worse than every one before it
        value = 1 - i / 20
        answer, trial = report_epochs(study, [value] * 9)
        if answer is None:
            study.tell(trial, value)
        else:
            study.tell(trial, state=TrialState.PRUNED)
            pruned.append(i)
    assert len(pruned) >= 5 and 0 not in pruned, pruned
    stopped_at = {t.last_step for t in study.trials if t.state == TrialState.PRUNED}
    assert stopped_at <= {1, 3, 9} and stopped_at & {1, 3}, stopped_at  # at its rungs: 1, 3, 9 = 1 * 3 ** k steps


def test_make_pruner_builds_optunas_pruners():
    assert isinstance(make_pruner("none", MedianPrunerConf(), HyperbandPrunerConf()), optuna.pruners.NopPruner)
    assert isinstance(make_pruner("median", MedianPrunerConf(), HyperbandPrunerConf()), optuna.pruners.MedianPruner)
    with pytest.raises(ValueError, match="hydra.sweeper.pruner=asha is not valid; use one of: none, median, hyperband"):
        make_pruner("asha", MedianPrunerConf(), HyperbandPrunerConf())


# --- the Engine's stop conditions -----------------------------------------------------------------
def test_a_stop_condition_ends_the_run_after_a_validation_with_its_status(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(24, 5), torch.randint(0, 3, (24,)))
    model = nn.Linear(5, 3)
    engine = Engine(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), Schedule(None), ["accuracy"],
                    device=torch.device("cpu"), loop=LoopSettings(max_epochs=5, monitor="val/accuracy", mode="max"),
                    run_dir=str(tmp_path))
    asked = []

    def stop_at_epoch_2(engine, record):
        asked.append((record["epoch"], engine.history[-1] is record, (tmp_path / "checkpoints" / "last.ckpt").is_file()))
        return ("pruned", "asked to stop") if record["epoch"] == 2 else None

    engine.stop_conditions.append(stop_at_epoch_2)
    summary = engine.fit(DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    assert asked == [(1, True, True), (2, True, True)]  # after each validation, with its record saved
    assert summary["status"] == "pruned" and summary["epochs_run"] == 2 and summary["reason"] == "asked to stop"
    assert read_json(tmp_path / "summary.json") == summary and len(engine.history) == 2
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


# --- the sweep table --------------------------------------------------------------------------------
def job(name, value, status="completed", epochs=3):
    return JobResult(name, {"optimizer.lr": name}, status, "val/f1", "max", 1, value, epochs)


def test_pruned_trials_rank_after_those_that_ran_to_their_end(tmp_path):
    from rich.console import Console

    jobs = [job("0", 0.6, "pruned", 1), job("1", 0.5), job("2", None, "failed"), job("3", 0.2, "pruned", 2), job("4", 0.4),
            job("5", None, "completed")]
    ranked = rank(jobs)
    assert [j.job for j in ranked] == ["1", "4", "0", "3", "5", "2"]
    write_sweep_csv(ranked, tmp_path / "sweep.csv")
    rows = read_csv(tmp_path / "sweep.csv")
    assert [(r["job"], r["status"], r["epochs_run"]) for r in rows][2:4] == [("0", "pruned", "1"), ("3", "pruned", "2")]
    console = Console(width=160, record=True)
    console.print(sweep_table(ranked, "t"))
    text = console.export_text()
    assert re.search(r"│\s*3\s*│\s*0\s*│.*pruned at epoch 1", text) and "pruned at epoch 2" in text
