"""hparams_search=optuna: the project's Hydra sweeper over Optuna, its search space, and a resumed study."""

import math
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import cli_env, read_csv, read_json

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install optuna): hparams_search=optuna untestable")

from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402

from hydra_plugins.trainer_optuna_sweeper.search_space import as_override, split_search_space  # noqa: E402
from hydra_plugins.trainer_optuna_sweeper.sweeper import study_direction  # noqa: E402


def space_of(*overrides):
    return split_search_space(OverridesParser.create().parse_overrides(list(overrides)))


def test_override_grammar_reads_as_a_search_space():
    space, fixed = space_of(
        "optimizer.lr=tag(log, interval(1e-4, 1e-1))", "optimizer.weight_decay=interval(0, 0.1)",
        "loss=choice(ce, focal)", "scheduler=step,cosine", "data.batch_size=range(32, 129, 32)",
        "model.width=tag(log, range(8, 65))", "trainer.max_epochs=1",
    )
    assert space == {
        "optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "optimizer.weight_decay": FloatDistribution(0.0, 0.1),
        "loss": CategoricalDistribution(["ce", "focal"]),
        "scheduler": CategoricalDistribution(["step", "cosine"]),
        "data.batch_size": IntDistribution(32, 128, step=32),  # Hydra's range excludes its end, like Python's
        "model.width": IntDistribution(8, 64, log=True),
    }
    assert fixed == ["trainer.max_epochs=1"]


def test_later_overrides_win_and_bad_spaces_are_refused():
    space, fixed = space_of("optimizer.lr=interval(0.1, 1)", "optimizer.lr=0.5")  # YAML first, then the command line
    assert space == {} and fixed == ["optimizer.lr=0.5"]
    # ValueError, not SearchSpaceError: Hydra's plugin scan re-executes the module, renewing its classes
    with pytest.raises(ValueError, match="optimizer.lr: interval.* is empty"):
        space_of("optimizer.lr=interval(1, 1)")
    assert as_override("optimizer.lr", 1e-05) == "optimizer.lr=1e-05" and as_override("loss", "ce") == "loss=ce"


def test_direction_follows_the_jobs_mode():
    assert study_direction(None, OmegaConf.create({"monitor": "val/f1", "mode": None})) == "maximize"
    assert study_direction(None, OmegaConf.create({"monitor": "val/loss", "mode": None})) == "minimize"
    assert study_direction(None, OmegaConf.create({"monitor": "val/f1", "mode": "min"})) == "minimize"
    assert study_direction("maximize", OmegaConf.create({"monitor": "val/loss", "mode": None})) == "maximize"


def test_hydra_discovers_the_sweeper_by_its_namespace_package(tmp_path):
    """Hydra's own plugin scan (no trainer import, which would register it explicitly) finds the sweeper."""
    code = (
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "print([f'{c.__module__}.{c.__name__}' for c in Plugins.instance().discover(Sweeper)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert "hydra_plugins.trainer_optuna_sweeper.sweeper.TrainerOptunaSweeper" in out.stdout, out.stdout + out.stderr


def run_search(cli, sweep_dir, n_trials):
    result = cli("trainer", "-m", "hparams_search=optuna", f"hydra.sweeper.n_trials={n_trials}", "trainer.max_epochs=1",
                 f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_an_interrupted_search_continues_where_it_stopped(cli, tmp_path):
    sweep_dir = tmp_path / "search"
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    run_search(cli, sweep_dir, 2)
    first = optuna.load_study(study_name="trainer", storage=storage)
    assert len(first.trials) == 2
    result = run_search(cli, sweep_dir, 4)  # the same study, asked for 4 in all: 2 more run
    assert "2 of 4 trials done" in result.stdout + result.stderr
    study = optuna.load_study(study_name="trainer", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # a continued study does not repeat itself
    assert set(study.trials[0].params) == {"optimizer.lr", "optimizer.weight_decay", "loss"}
    best_values = []
    for trial in study.trials:  # job directory = trial number; the trial's value is the job's best
        job = sweep_dir / str(trial.number)
        summary = read_json(job / "summary.json")
        assert summary["status"] == "completed"
        assert trial.value == summary["best_value"]
        overrides = list(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        assert f"loss={trial.params['loss']}" in overrides
        assert 1e-4 <= trial.params["optimizer.lr"] <= 1e-1 and 0 <= trial.params["optimizer.weight_decay"] <= 0.1
        best_values.append(summary["best_value"])
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # val/f1
    assert study.best_value == max(best_values)
    best = OmegaConf.load(sweep_dir / "best_trial.yaml")
    assert best.value == max(best_values) and best.trial == study.best_trial.number
    assert "trainer.max_epochs=1" in best.overrides and not any(o.startswith("hparams_search") for o in best.overrides)
    rows = read_csv(sweep_dir / "sweep_summary.csv")  # the table lists the trials of both runs
    assert sorted(int(r["job"]) for r in rows) == [0, 1, 2, 3]
    assert float(rows[0]["best_value"]) == max(best_values)
    assert not math.isnan(float(rows[-1]["best_value"]))


@pytest.mark.slow
def test_a_trial_cut_short_by_ctrl_c_is_replaced_when_the_search_runs_again(cli, tmp_path):
    import signal
    import time

    sweep_dir = tmp_path / "search"
    args = [sys.executable, "-m", "trainer", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
            "trainer.max_epochs=10", f"hydra.sweep.dir={sweep_dir}"]
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not (sweep_dir / "0" / "metrics.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # during trial 0's second epoch
        assert proc.wait(timeout=120) != 0
    assert read_json(sweep_dir / "0" / "summary.json")["status"] == "interrupted"
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    trial = optuna.load_study(study_name="trainer", storage=storage).trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs == {"interrupted": True}

    result = cli("trainer", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer.max_epochs=1",
                 f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="trainer", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert {r["job"]: r["status"] for r in rows} == {"0": "interrupted", "1": "completed", "2": "completed"}
