"""Models: a small built-in CNN, and any timm model by name.

The number of input channels and classes always comes from the data, never from the model config.
Builders take every option from the config: the defaults are stated once, in trainer/config.py.
"""

import difflib
import functools
import logging
import os
import threading

import torch
from torch import nn

from trainer.checkpointing.checkpoint import load_model_state, read_checkpoint
from trainer.config.registry import Registry, call_builder
from trainer.errors import UserError

MODELS = Registry("model")
HUB_PROBE_SECONDS = 3.0


class _NoCudaHomeNotice(logging.Filter):
    """torch.compile on a CPU imports torch.utils.cpp_extension, which warns "No CUDA runtime is found,
    using CUDA_HOME=..." when nvcc is on PATH but no GPU is usable. CUDA_HOME only matters for building
    CUDA extensions, which a CPU run never does; this one record is dropped, every other one kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


logging.getLogger("torch.utils.cpp_extension").addFilter(_NoCudaHomeNotice())


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head: enough for small images such as the 8x8 digits or 28x28 scans.

    `pools` 2x2 max-pools sit between the blocks (2: after the first and the second, 1: after the second
    only, 0: none). Two make the last block see 18 px of a 32 px input (not 10) at a quarter of the
    arithmetic, which is both what lets a 32 px digit be recognised as a whole and what keeps the model
    faster than the loader; one is the layout of runs saved before `model.pools` existed."""

    NORMS = {
        "batch": nn.BatchNorm2d,
        "group": lambda channels: nn.GroupNorm(min(8, channels), channels),
        "none": lambda channels: nn.Identity(),
    }

    def __init__(self, in_chans: int, num_classes: int, width: int, dropout: float, norm: str, pools: int):
        super().__init__()
        if norm not in self.NORMS:
            raise UserError(f"model.norm={norm} is not valid; use one of: {', '.join(self.NORMS)}")
        make_norm = self.NORMS[norm]

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"), make_norm(cout), nn.ReLU(inplace=True))

        # (in this order, so that pools=1 has the module names of checkpoints saved before the option)
        layers = [block(in_chans, width)] + [nn.MaxPool2d(2)] * (pools >= 2) + [block(width, 2 * width)]
        layers += [nn.MaxPool2d(2)] * (pools >= 1) + [block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def get_classifier(self) -> nn.Module:  # the same name timm models use
        return self.head[-1]


@MODELS.register("cnn")
def small_cnn(width: int, dropout: float, norm: str, pools: int, weights, *, in_chans: int, num_classes: int) -> nn.Module:
    if width < 1 or not 0 <= dropout < 1:
        raise UserError(f"model.width={width}, model.dropout={dropout}: width must be >= 1 and 0 <= dropout < 1")
    if pools not in (0, 1, 2):
        raise UserError(f"model.pools={pools} is not valid; use 0, 1 or 2 (2x2 max-pools between the three blocks)")
    model = SmallCNN(in_chans, num_classes, width, dropout, norm, pools)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict (or a trainer checkpoint's model) from a local file into `model`, strictly."""

    state = read_checkpoint(path, what="weights file")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    load_model_state(model, state, path)


def timm_model(name: str, pretrained: bool, weights, drop_rate: float, *, in_chans: int, num_classes: int):
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        builtin = ", ".join(MODELS.names())
        raise UserError(f"unknown model '{name}': not built in ({builtin}) and not a timm model{hint}")
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if weights is not None:
        if not os.path.isfile(weights):
            raise UserError(f"model.weights={weights}: no such file")
        # timm adapts the file's stem to in_chans and drops a classifier of another class count.
        return _create(timm, name, dict(kwargs, pretrained=True, pretrained_cfg_overlay=dict(file=os.path.abspath(weights))), weights)
    if pretrained:
        return _create_pretrained(timm, name, kwargs)
    return timm.create_model(name, **kwargs)


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS):
    """Why the Hugging Face hub (HF_ENDPOINT, or the HTTPS proxy in between) cannot be reached, or None.

    One TCP connection, abandoned after `timeout` seconds even while the name is still being resolved.
    """
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy and endpoint.scheme == "https" else endpoint.geturl())
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    outcome = {}

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as err:
            outcome["error"] = err.strerror or str(err) or type(err).__name__

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    if outcome.get("ok"):
        return None
    return f"{host}:{port} cannot be reached ({outcome.get('error', f'no answer in {timeout:.0f} s')})"


def _create_pretrained(timm, name: str, kwargs: dict):
    """Pretrained weights come from the hub or timm's cache. Offline, huggingface_hub retries each file
    for a minute; so the hub is probed first, and when it cannot be reached the weights are looked up
    in the cache only (offline mode, as HF_HUB_OFFLINE=1 asks), which fails at once when they are not there."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return _create(timm, name, dict(kwargs, pretrained=True), None, offline="HF_HUB_OFFLINE is set")
    reason = hub_unreachable()
    if reason is None:
        return _create(timm, name, dict(kwargs, pretrained=True), None)
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read by huggingface_hub at each request (constants.is_offline_mode)
    try:
        return _create(timm, name, dict(kwargs, pretrained=True), None, offline=reason)
    finally:
        constants.HF_HUB_OFFLINE = previous


def _create(timm, name: str, kwargs: dict, weights, offline: str = ""):
    try:
        return timm.create_model(name, **kwargs)
    except Exception as err:  # timm raises many kinds here: network, hub, unpickling, shape errors
        if weights is not None:
            raise UserError(f"could not load model.weights={weights} into timm model '{name}': {err}") from err
        if offline:
            raise UserError(
                f"could not get timm's pretrained weights for '{name}': they are downloaded, {offline}, and they are "
                "not in the local cache. Use a local file instead: model.weights=/path/to/weights"
            ) from err
        raise UserError(
            f"could not get timm's pretrained weights for '{name}' (they are downloaded, and this machine may be "
            f"offline): {type(err).__name__}: {str(err)[:300]}. Use a local file instead: model.weights=/path/to/weights"
        ) from err


def build_model(cfg, in_chans: int, num_classes: int) -> nn.Module:
    """`cfg.name` is a built-in model (cnn) or any timm model name."""
    options = dict(cfg)
    name = options.pop("name")
    runtime = dict(in_chans=in_chans, num_classes=num_classes)
    if name in MODELS:
        return call_builder(MODELS.get(name), options, runtime, what=f"model '{name}'")
    return call_builder(functools.partial(timm_model, name), options, runtime, what=f"timm model '{name}'")
