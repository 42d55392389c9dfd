"""Property-based checks: any input either loads/routes or fails with a clear ScopeError, never half-writes."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scope_shared import AnchorStore, ConfigError, DataError, HashingEmbedder, ScopeEngine, ScopeError, load_outcomes
from scope_shared.engine import MAX_QUERY_CHARS
from tests.unit.conftest import CARDS, sample_outcomes

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e309", "abc", "0.5", "1", "-1"]),
)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200)


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["query_id", "query", "model", "correct", "output_tokens", "input_tokens", "task"])
    w.writeheader()
    for r in rows:
        w.writerow(r)
    path.write_text(buf.getvalue(), encoding="utf-8")


row = st.fixed_dictionaries(
    {"query_id": texts, "query": texts, "model": texts, "correct": numbers, "output_tokens": numbers, "input_tokens": numbers, "task": texts}
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=1, max_size=6))
def test_loader_accepts_valid_rows_or_names_the_bad_one(tmp_path: Path, rows: list[dict[str, object]]) -> None:
    path = tmp_path / "o.csv"
    write_csv(path, rows)
    try:
        out = load_outcomes(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    for o in out:
        assert 0.0 <= o.correct <= 1.0 and math.isfinite(o.correct)
        assert o.query.strip() and o.model
        assert o.output_tokens is None or o.output_tokens >= 0


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "latin1.csv"
    p.write_bytes("query,model,correct\nd\xe9j\xe0 vu,m,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_outcomes(p)


_STORE = AnchorStore(embedder=HashingEmbedder())
_STORE.add(sample_outcomes())
_ENGINE = ScopeEngine(store=_STORE, models=CARDS, value_per_correct=0.01)


@settings(max_examples=80, deadline=None)
@given(query=st.one_of(texts, st.text(min_size=MAX_QUERY_CHARS, max_size=MAX_QUERY_CHARS + 50), st.binary(max_size=20)))
def test_route_any_input_decides_or_says_why(query: object) -> None:
    try:
        d = _ENGINE.route(query, options={"reserve": False})  # type: ignore[arg-type]
    except ConfigError as exc:
        assert isinstance(query, bytes) or not str(query).strip()
        assert "query" in str(exc)
        return
    assert d.model in {"big", "small"} and not d.degraded
    assert all(0.0 <= e.p_correct <= 1.0 and e.cost >= 0 for e in d.estimates.values())


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), cap=st.one_of(st.none(), st.floats(allow_nan=True)))
def test_route_settings_validated(value: float | None, cap: float | None) -> None:
    try:
        d = _ENGINE.route("what is 2 plus 3 in arithmetic", options={"value_per_correct": value, "max_cost_per_call": cap, "reserve": False})
    except ScopeError as exc:
        bad_value = value is not None and (math.isnan(value) or value < 0)
        bad_cap = cap is not None and (math.isnan(cap) or cap < 0)
        assert bad_value or bad_cap or "no candidate fits" in str(exc)
        return
    assert d.model in {"big", "small"}


def test_duplicate_conflicting_rows_rejected_and_nothing_written() -> None:
    s = AnchorStore(embedder=HashingEmbedder())
    rows = [{"query": "dup", "model": "m", "correct": 1}, {"query": "other", "model": "m", "correct": 1}, {"query": "dup", "model": "m", "correct": 0}]
    with pytest.raises(DataError, match="row 2: conflicts with row 0"):
        s.add(rows)
    assert s.count() == 0


def test_control_characters_in_model_name_rejected() -> None:
    s = AnchorStore(embedder=HashingEmbedder())
    with pytest.raises(DataError, match="control characters"):
        s.add([{"query": "q", "model": "gpt\n4", "correct": 1}])
