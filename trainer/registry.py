"""A registry maps the names that configs use (`loss.name: focal`) to the functions that build parts.

Configs never name import paths: a YAML value can only pick among registered builders.
"""

import inspect
from typing import Any, Callable, Dict, Mapping

from trainer.errors import UserError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def add(builder: Callable) -> Callable:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._builders[name] = builder
            return builder

        return add

    def get(self, name: str) -> Callable:
        if name not in self._builders:
            raise UserError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}")
        return self._builders[name]

    def names(self) -> list:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders


def build(registry: Registry, cfg: Mapping[str, Any], **runtime: Any) -> Any:
    """Call the builder named by cfg["name"] with the other config keys and the runtime values it accepts."""
    options = dict(cfg)
    name = options.pop("name")
    return call_builder(registry.get(name), options, runtime, what=f"{registry.kind} '{name}'")


def call_builder(builder: Callable, options: Dict[str, Any], runtime: Dict[str, Any], what: str) -> Any:
    """Config keys the builder does not take are an error (they would be silently ignored otherwise);
    runtime values are offered to every builder and passed only to those that name them."""
    params = inspect.signature(builder).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        takes = [p for p in params if p not in runtime and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
        raise UserError(f"{what} does not take {', '.join(unknown)}; it takes: {', '.join(takes) or 'nothing'}")
    accepted = {key: value for key, value in runtime.items() if key in params}
    return builder(**options, **accepted)
