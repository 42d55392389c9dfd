"""Each LlamaIndex example runs offline and does what it says (checked on a small slice of real data)."""

from __future__ import annotations

import pytest

from tests.unit.example_scripts import run_example

pytestmark = pytest.mark.slow


def test_router_query_engine_example() -> None:
    summary, out = run_example("llamaindex_router_query_engine.py", "--queries", "6")
    assert summary["queries"] == 6 and summary["recorded"] == 6
    assert sum(summary["share"].values()) == 6
    assert 0 < summary["spent"] <= summary["budget"] and summary["held"] == 0
    # Outcomes were recorded back into the routing store: 6 new anchor questions.
    assert summary["anchors"] == 306
    assert out.count("SCOPE chose ") == 6


def test_settings_llm_example() -> None:
    summary, out = run_example("llamaindex_settings_llm.py", "--queries", "8", "--budget", "0.05")
    assert summary["queries"] == 8 and summary["recorded"] == 8
    assert summary["routing_anchors"] == 300 and summary["feedback_anchors"] == 8
    assert 0 < summary["spent"] <= summary["budget"] and summary["held"] == 0
    for form in ("complete", "chat", "stream", "async"):
        assert f"{form} " in out
    assert "$nan" not in out
