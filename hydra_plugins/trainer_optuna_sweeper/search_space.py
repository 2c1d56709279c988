"""Hydra's override grammar, read as an Optuna search space.

    choice(a, b, c) / a,b,c     CategoricalDistribution of the options (as override strings)
    interval(lo, hi)            FloatDistribution(lo, hi); tag(log, interval(lo, hi)) on a log scale
    range(lo, hi[, step])       IntDistribution over the same integers as Hydra's range (hi excluded);
                                tag(log, range(...)) on a log scale (step 1 only)
    anything else               a fixed override, the same in every trial
"""

from typing import Any, Dict, List, Sequence, Tuple

from hydra.core.override_parser.types import Override, Transformer


class SearchSpaceError(ValueError):
    pass


def distribution_of(override: Override) -> Any:
    """The Optuna distribution a sweep override describes."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_string_iterator()))
    sweep = override.value()
    log = "log" in getattr(sweep, "tags", set())
    if override.is_interval_sweep():
        if not sweep.start < sweep.end:
            raise SearchSpaceError(f"{key}: interval({sweep.start}, {sweep.end}) is empty")
        return FloatDistribution(sweep.start, sweep.end, log=log)
    if override.is_range_sweep():
        values = [int(v) if float(v).is_integer() else v for v in override.sweep_iterator()]
        if not values:
            raise SearchSpaceError(f"{key}: {override.get_value_element_as_str()} is empty")
        if not all(isinstance(v, int) for v in values):
            if log:
                raise SearchSpaceError(f"{key}: tag(log, range(...)) needs integers")
            return CategoricalDistribution([Transformer.encode(v) for v in values])
        step = values[1] - values[0] if len(values) > 1 else 1
        if log:
            if step != 1:
                raise SearchSpaceError(f"{key}: tag(log, range(...)) needs step 1")
            return IntDistribution(values[0], values[-1], log=True)
        return IntDistribution(min(values), max(values), step=abs(step))
    raise SearchSpaceError(f"{key}: {override.get_value_element_as_str()} is not a search space this sweeper knows")


def split_search_space(overrides: Sequence[Override]) -> Tuple[Dict[str, Any], List[str]]:
    """(key -> distribution, fixed overrides); a later override of the same key wins (the command line over YAML)."""
    space: Dict[str, Any] = {}
    fixed: Dict[str, str] = {}
    for override in overrides:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution_of(override)
        else:
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    return space, list(fixed.values())


def as_override(key: str, value: Any) -> str:
    """One suggested value as a command-line override (floats in full precision)."""
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
