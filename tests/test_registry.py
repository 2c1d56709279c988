"""The registry: names configs use, and building parts from a config plus runtime values."""

import pytest

from trainer.config.registry import Registry, build, call_builder
from trainer.errors import UserError


@pytest.fixture
def reg():
    registry = Registry("widget")

    @registry.register("plain")
    def plain(size=3, color="red"):
        return {"size": size, "color": color}

    @registry.register("needs_runtime")
    def needs_runtime(depth, scale=1.0, *, model, num_classes=None):
        return {"depth": depth, "scale": scale, "model": model, "num_classes": num_classes}

    return registry


def test_register_get_names(reg):
    assert reg.names() == ["needs_runtime", "plain"]
    assert reg.get("plain")() == {"size": 3, "color": "red"}
    assert "plain" in reg and "other" not in reg

    def builder():
        return 42

    returned = reg.register("answer")(builder)
    assert returned is builder  # usable as a decorator
    assert reg.get("answer") is builder
    assert reg.names() == ["answer", "needs_runtime", "plain"]


def test_names_sorted_and_empty():
    r = Registry("thing")
    assert r.names() == []
    for name in ["zeta", "alpha", "mid"]:
        r.register(name)(lambda: None)
    assert r.names() == ["alpha", "mid", "zeta"]


def test_unknown_name_lists_known_names(reg):
    with pytest.raises(UserError) as info:
        reg.get("plian")
    message = str(info.value)
    assert "widget" in message and "'plian'" in message
    assert "needs_runtime" in message and "plain" in message


def test_unknown_name_via_build(reg):
    with pytest.raises(UserError, match=r"unknown widget 'nope'.*needs_runtime, plain"):
        build(reg, {"name": "nope"})


def test_registering_twice_raises(reg):
    with pytest.raises(ValueError, match="plain"):
        reg.register("plain")(lambda: None)
    assert reg.get("plain")() == {"size": 3, "color": "red"}  # the first one is kept


def test_build_passes_config_keys(reg):
    assert build(reg, {"name": "plain", "size": 7}) == {"size": 7, "color": "red"}
    assert build(reg, {"name": "plain", "size": 1, "color": "blue"}) == {"size": 1, "color": "blue"}


def test_build_does_not_mutate_config(reg):
    cfg = {"name": "plain", "size": 7}
    build(reg, cfg)
    assert cfg == {"name": "plain", "size": 7}


def test_build_passes_only_accepted_runtime_args(reg):
    # plain takes no runtime value: they are offered but not passed (else TypeError)
    assert build(reg, {"name": "plain"}, model="M", optimizer="O") == {"size": 3, "color": "red"}
    out = build(reg, {"name": "needs_runtime", "depth": 2}, model="M", optimizer="O", num_classes=10)
    assert out == {"depth": 2, "scale": 1.0, "model": "M", "num_classes": 10}


def test_build_unknown_config_key_names_it_and_lists_what_it_takes(reg):
    with pytest.raises(UserError) as info:
        build(reg, {"name": "needs_runtime", "depth": 2, "dpeth": 3, "zoom": 1}, model="M", num_classes=3)
    message = str(info.value)
    assert "widget 'needs_runtime'" in message
    assert "does not take dpeth, zoom" in message
    takes = message.split("it takes:")[1]
    assert "depth" in takes and "scale" in takes
    # runtime values are not something the config can set
    assert "model" not in takes and "num_classes" not in takes


def test_build_unknown_key_for_builder_without_options():
    r = Registry("thing")
    r.register("bare")(lambda: "ok")
    assert build(r, {"name": "bare"}) == "ok"
    with pytest.raises(UserError, match=r"does not take size; it takes: nothing"):
        build(r, {"name": "bare", "size": 1})


def test_call_builder_what_in_message():
    def f(a=1):
        return a

    assert call_builder(f, {"a": 5}, {}, what="x") == 5
    with pytest.raises(UserError, match=r"^my part does not take b"):
        call_builder(f, {"b": 5}, {}, what="my part")


def test_real_registries_builders_reject_unknown_keys():
    from trainer.parts.losses import LOSSES

    with pytest.raises(UserError, match=r"loss 'ce' does not take gamma; it takes: label_smoothing, weights"):
        build(LOSSES, {"name": "ce", "gamma": 2.0}, num_classes=3, train_labels=[0, 1, 2])


def test_build_names_the_config_keys_a_builder_needs():
    # builders state no defaults of their own, so a config without a key (one stored by an older
    # version) is named instead of failing with a TypeError
    r = Registry("thing")
    r.register("sized")(lambda depth, scale, *, model: (depth, scale, model))
    assert build(r, {"name": "sized", "depth": 1, "scale": 2}, model="M") == (1, 2, "M")
    with pytest.raises(UserError, match=r"^thing 'sized' needs scale, which the config does not give; it takes: depth, scale$"):
        build(r, {"name": "sized", "depth": 1}, model="M")


# --- every default stated once, in the schema -------------------------------------------------
def builders_of_schema_groups():
    """group -> option -> the builder that its config is passed to."""
    from trainer.config.options import SCHEMAS
    from trainer.data.datasets import DATASETS
    from trainer.optim.optimizers import OPTIMIZERS
    from trainer.optim.schedules import SCHEDULERS
    from trainer.parts.losses import LOSSES, REGRESSION_LOSSES
    from trainer.parts.models import MODELS, timm_model

    registries = {"data": [DATASETS], "model": [MODELS], "loss": [LOSSES, REGRESSION_LOSSES],
                  "optimizer": [OPTIMIZERS], "scheduler": [SCHEDULERS]}
    builders = {}
    for group, options in SCHEMAS.items():
        if group not in registries:
            continue
        builders[group] = {}
        for option in options:
            found = [registry.get(option) for registry in registries[group] if option in registry]
            # model=timm stands for any timm model name: model.name is the builder's first argument
            builders[group][option] = timm_model if (group, option) == ("model", "timm") else found[0]
        for registry in registries[group]:  # and every registered builder has a schema
            assert set(registry.names()) <= set(options), (group, registry.names())
    return builders


# metric names pick functions (no builder takes a config); the logger is chosen by callbacks.make_callbacks
GROUPS_WITHOUT_BUILDERS = {"metric", "logger"}


def test_every_schema_group_is_checked():
    from trainer.config.options import SCHEMAS

    assert set(SCHEMAS) == set(builders_of_schema_groups()) | GROUPS_WITHOUT_BUILDERS


def schema_options():
    from trainer.config.options import SCHEMAS

    return [(group, option) for group in SCHEMAS if group not in GROUPS_WITHOUT_BUILDERS for option in SCHEMAS[group]]


@pytest.mark.parametrize("group, option", schema_options())
def test_builder_signature_matches_its_schema(group, option):
    """Every schema key but `name` is a builder parameter without a default (the schema's default is the
    only one), and every builder parameter that is not a runtime value (those are keyword-only) is a
    schema key."""
    import dataclasses
    import inspect

    from trainer.config.options import SCHEMAS

    builder = builders_of_schema_groups()[group][option]
    params = inspect.signature(builder).parameters
    keys = {field.name for field in dataclasses.fields(SCHEMAS[group][option])}
    configurable = {name for name, p in params.items()
                    if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY)}
    missing = sorted(keys - {"name"} - configurable)
    assert not missing, f"{group}={option}: schema keys the builder {builder.__name__} does not take: {missing}"
    with_defaults = sorted(key for key in keys - {"name"} if params[key].default is not inspect.Parameter.empty)
    assert not with_defaults, f"{group}={option}: {builder.__name__} states defaults of its own for {with_defaults}"
    unknown = sorted(configurable - keys)
    assert not unknown, f"{group}={option}: {builder.__name__} takes {unknown}, which the schema lacks"


@pytest.mark.parametrize("group, option", [("optimizer", o) for o in ("sgd", "adamw", "adam", "rmsprop")]
                         + [("scheduler", o) for o in ("none", "step", "multistep", "exponential", "cosine", "plateau", "onecycle")])
def test_schema_defaults_build_every_optimizer_and_scheduler(group, option):
    import torch

    from trainer.config.registry import schema_defaults
    from trainer.optim.optimizers import OPTIMIZERS
    from trainer.optim.schedules import SCHEDULERS

    model = torch.nn.Linear(3, 2)
    optimizer = build(OPTIMIZERS, schema_defaults("optimizer", option if group == "optimizer" else "sgd"), model=model)
    assert isinstance(optimizer, torch.optim.Optimizer)
    if group == "scheduler":
        schedule = build(SCHEDULERS, schema_defaults("scheduler", option), optimizer=optimizer, max_epochs=3,
                         steps_per_epoch=2, mode="max")
        assert schedule.interval == ("step" if option == "onecycle" else "epoch")


def test_schema_defaults_are_the_schema_values():
    from trainer.config.registry import schema_defaults

    assert schema_defaults("scheduler", "multistep") == {
        "name": "multistep", "milestones": [15, 25], "gamma": 0.1,
        "interval": "epoch", "warmup_epochs": 0, "warmup_start_factor": 0.01,
    }
    assert schema_defaults("scheduler", "exponential")["gamma"] == 0.9
    folder = schema_defaults("data", "image_folder")
    assert "root" not in folder and folder["val_root"] is None and folder["name"] == "image_folder"  # MISSING left out
    first, second = schema_defaults("optimizer", "adamw"), schema_defaults("optimizer", "adamw")
    assert first["betas"] == [0.9, 0.999] and first["betas"] is not second["betas"]  # a fresh list each time


def option_files():
    import os

    from trainer.config.options import SCHEMAS
    from trainer.config.schema import CONF_DIR

    return [(group, option) for group in SCHEMAS for option in SCHEMAS[group]
            if os.path.isfile(os.path.join(CONF_DIR, group, f"{option}.yaml"))]


@pytest.mark.parametrize("group, option", option_files())
def test_option_files_state_no_values_of_their_own(group, option):
    """Every default is stated once, in the schema: an option's YAML only names its schema (the values
    and their comments live in trainer/config/schema.py), so the two can never drift apart."""
    import os

    import yaml

    from trainer.config.options import SCHEMAS
    from trainer.config.schema import CONF_DIR

    content = yaml.safe_load(open(os.path.join(CONF_DIR, group, f"{option}.yaml"))) or {}
    # a logger keeps its settings under a key of its own, so that several can be chosen at once
    package = option if group == "logger" else "_here_"
    assert content.get("defaults") == [f"/{group}_{option}_schema@{package}", "_self_"], content
    own = sorted(set(content) - {"defaults"})
    assert not own, f"conf/{group}/{option}.yaml restates {own}; state them once, in {SCHEMAS[group][option].__name__}"


def test_every_option_file_has_a_schema():
    import glob
    import os

    import yaml

    from trainer.config.options import SCHEMAS
    from trainer.config.schema import CONF_DIR

    for group in SCHEMAS:
        files = {os.path.basename(path)[:-5] for path in glob.glob(os.path.join(CONF_DIR, group, "*.yaml"))}
        without = files - set(SCHEMAS[group])
        assert set(SCHEMAS[group]) <= files and without <= {"none"}, (group, files ^ set(SCHEMAS[group]))
        for option in without:  # logger=none: nothing to set, and nothing stated
            assert not yaml.safe_load(open(os.path.join(CONF_DIR, group, f"{option}.yaml"))), (group, option)


@pytest.mark.parametrize("command", ["evaluate", "predict", "lr_preview", "export"])
def test_command_files_state_no_values_of_their_own(command):
    """A command's YAML holds its Hydra settings (help text, job name, logging) and names its schema; its
    settings' defaults and comments live in the schema (`--help` reads them there)."""
    import os

    import yaml

    from trainer.config.schema import CONF_DIR

    path = os.path.join(CONF_DIR, f"{command}.yaml")
    if not os.path.isfile(path):
        pytest.skip(f"no conf/{command}.yaml")
    own = sorted(set(yaml.safe_load(open(path))) - {"defaults", "hydra"})
    assert not own, f"conf/{command}.yaml restates {own}; state them once, in its schema"
