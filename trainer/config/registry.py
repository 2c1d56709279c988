"""A registry maps the names that configs use (`loss.name: focal`) to the functions that build parts.

Configs never name import paths: a YAML value can only pick among registered builders.
"""

import inspect
from typing import Any, Callable, Dict, Mapping

from trainer.config.options import SCHEMAS, field_defaults
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
    takes = [p for p in params if p not in runtime and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise UserError(f"{what} does not take {', '.join(unknown)}; it takes: {', '.join(takes) or 'nothing'}")
    # Builders state no defaults (the schema states each one, once): a config stored by an older
    # version, such as a checkpoint's, may lack a key that was added since.
    missing = [p for p in takes if p not in options and params[p].default is inspect.Parameter.empty
               and params[p].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY)]
    if missing:
        raise UserError(f"{what} needs {', '.join(missing)}, which the config does not give; it takes: {', '.join(takes)}")
    accepted = {key: value for key, value in runtime.items() if key in params}
    return builder(**options, **accepted)


def schema_defaults(group: str, option: str) -> Dict[str, Any]:
    """The config of one option as its schema states it (`name` included), for code that builds a part
    without composing a config (tests, benchmarks): `build(DATASETS, {**schema_defaults("data", "csv"),
    "csv": path})`. Keys the schema leaves MISSING (a dataset's root) are left out: the caller gives them."""
    return field_defaults(SCHEMAS[group][option])
