"""The regression metrics against their formulas."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.evaluation.metrics import REGRESSION_METRICS, compute_regression_metrics


def hand_regression(name, y, p):
    error = p - y
    if name == "mae":
        return np.mean(np.abs(error))
    if name == "mse":
        return np.mean(error**2)
    if name == "rmse":
        return np.sqrt(np.mean(error**2))
    if name == "r2":
        return 1 - np.sum(error**2) / np.sum((y - y.mean()) ** 2)
    raise AssertionError(f"no reference for regression metric {name}; add one")


def test_regression_metric_names():
    assert REGRESSION_METRICS.names() == ["mae", "mse", "r2", "rmse"]


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 50), seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-3, 1e3))
def test_property_regression_metrics(n, seed, scale):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n) * scale
    p = y + rng.normal(size=n) * scale * 0.5
    for name in REGRESSION_METRICS.names():
        value = REGRESSION_METRICS.get(name)(y, p)
        assert value == pytest.approx(hand_regression(name, y, p), rel=1e-9, abs=1e-12)


def test_regression_metrics_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 5.0])  # errors 0.5, 0, -1, 1
    result = compute_regression_metrics(["mae", "mse", "rmse", "r2"], y, p)
    assert result == pytest.approx(
        {"val/mae": 0.625, "val/mse": 2.25 / 4, "val/rmse": np.sqrt(2.25 / 4), "val/r2": 1 - 2.25 / 5.0}
    )
    assert all(isinstance(v, float) for v in result.values())
    assert compute_regression_metrics(["mae"], y, y, prefix="test/") == {"test/mae": 0.0}


def test_unknown_regression_metric_names_the_known_ones():
    from trainer.errors import UserError

    with pytest.raises(UserError, match="unknown regression metric 'mape'.*mae, mse, r2, rmse"):
        compute_regression_metrics(["mape"], np.zeros(3), np.zeros(3))
