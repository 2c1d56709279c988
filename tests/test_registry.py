"""The registry: names configs use, and building parts from a config plus runtime values."""

import pytest

from trainer.errors import UserError
from trainer.registry import Registry, build, call_builder


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
    from trainer.losses import LOSSES

    with pytest.raises(UserError, match=r"loss 'ce' does not take gamma; it takes: label_smoothing, weights"):
        build(LOSSES, {"name": "ce", "gamma": 2.0}, num_classes=3, train_labels=[0, 1, 2])
