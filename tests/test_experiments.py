"""experiment=<name> overlays and hparams_search=optuna compose as documented (Hydra's compose API, no training)."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import REPO
from trainer.config.schema import register_configs

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.fixture
def composed():
    register_configs()
    import hydra_plugins.trainer_optuna_sweeper.config  # noqa: F401  (hydra/sweeper: trainer_optuna)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        yield lambda *overrides, **kw: compose("train", overrides=list(overrides), **kw)
    GlobalHydra.instance().clear()


def test_the_recipes_exist():
    assert EXPERIMENTS == ["cv5", "focal_cosine", "imbalanced_digits", "quick", "sgd_step"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(composed, name):
    assert composed(f"experiment={name}").trainer.max_epochs >= 1


def test_experiments_set_their_recipe_and_the_command_line_wins(composed):
    assert composed().trainer.max_epochs == 30 and composed().optimizer.name == "adamw"
    assert composed("experiment=quick").trainer.max_epochs == 2  # over train.yaml's own value
    sgd = composed("experiment=sgd_step")
    assert (sgd.optimizer.name, sgd.optimizer.lr, sgd.scheduler.name, sgd.scheduler.step_size) == ("sgd", 0.05, "step", 10)
    focal = composed("experiment=focal_cosine", "trainer.patience=3", "loss.gamma=1.5")
    assert focal.loss.name == "focal" and focal.loss.gamma == 1.5 and focal.trainer.patience == 3
    assert composed("experiment=sgd_step", "scheduler=cosine").scheduler.name == "cosine"


def test_optuna_search_composes_with_its_space(composed):
    cfg = composed("hparams_search=optuna", "hydra.sweeper.n_trials=3", return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("TrainerOptunaSweeper") and sweeper.n_trials == 3
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "loss"}
    assert sweeper.storage is None and sweeper.study_name == "trainer"
