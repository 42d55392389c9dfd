"""Each LangChain example runs offline and does what it says (checked on a small slice of real data)."""

from __future__ import annotations

import pytest

from tests.unit.example_scripts import run_example

pytestmark = pytest.mark.slow


def test_lcel_chain_example() -> None:
    summary, out = run_example("langchain_lcel_chain.py", "--questions", "6")
    assert summary["questions"] == 6 and sum(summary["picks"].values()) == 6
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["mean_cost"] > 0
    assert out.count(" -> ") == 6 and "accuracy-only answer: [gpt-4-1106-preview]" in out


def test_budgeted_batch_example() -> None:
    summary, _ = run_example("langchain_budgeted_batch.py", "--questions", "30", "--budget", "0.02")
    assert summary["answered"] + summary["over_budget"] == 30
    assert summary["answered"] > 0 and summary["over_budget"] > 0  # the budget binds
    assert 0 < summary["spent"] <= summary["budget"] and summary["held"] == 0
    assert summary["picks"].get("gpt-4-1106-preview", 0) > 0  # accuracy first while money lasts


def test_feedback_loop_example() -> None:
    summary, _ = run_example("langchain_feedback_loop.py", "--questions", "8")
    assert summary["recorded"] == 8 and summary["pending"] == 0
    assert summary["anchors_after"] == summary["anchors_before"] + 8
    # with each question's own outcome in the store, estimates move toward the recorded truth
    assert summary["mean_abs_error_after"] < summary["mean_abs_error_before"]
    assert summary["held"] == 0 and summary["spent"] > 0
