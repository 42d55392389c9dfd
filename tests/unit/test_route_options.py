"""RouteOptions: unset fields take the engine's setting; set ones (even None) override it."""

from __future__ import annotations

import pytest

from scope_shared import ConfigError
from scope_shared.types import RouteOptions


def test_only_fields_given_are_set() -> None:
    assert RouteOptions().given() == {}
    assert RouteOptions(value_per_correct=None).given() == {"value_per_correct": None}


def test_merged_lays_the_set_fields_over() -> None:
    base = RouteOptions(value_per_correct=0.01, max_cost_per_call=0.5)
    merged = base.merged({"value_per_correct": None, "candidates": ["a", "b"]})
    assert merged.given() == {"value_per_correct": None, "max_cost_per_call": 0.5, "candidates": ("a", "b")}
    assert base.merged(RouteOptions()) is base
    assert base.merged(None) is base


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"value_per_correct": -1}, "value_per_correct must be a USD amount >= 0"),
        ({"max_cost_per_call": float("nan")}, "max_cost_per_call must be a USD amount"),
        ({"value_per_correct": True}, "value_per_correct"),
        ({"candidates": "gpt-4"}, "candidates must be a non-empty list"),
        ({"candidates": []}, "candidates must be a non-empty list"),
        ({"budget": 3}, "unknown route option 'budget'; known: value_per_correct"),
    ],
)
def test_bad_options_are_one_config_error(fields: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        RouteOptions.of(fields)
