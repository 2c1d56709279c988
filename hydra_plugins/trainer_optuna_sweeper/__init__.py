"""The project's Hydra sweeper over Optuna's current API: `python -m trainer -m hparams_search=optuna`.

Hydra finds it because it lives in the `hydra_plugins` namespace package. Optuna is imported only
when a search starts, so Hydra's plugin scan (done by every Hydra app) stays cheap without Optuna.
"""


def register() -> None:
    """Register the sweeper with Hydra explicitly, for installs where Hydra's scan of the namespace
    package cannot list it (setuptools' editable installs hide it behind an import hook)."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # scans first: a sweeper it found is imported already and not added twice
    from hydra_plugins.trainer_optuna_sweeper import config, sweeper  # noqa: F401  (config: its ConfigStore entry)

    plugins.register(sweeper.TrainerOptunaSweeper)
