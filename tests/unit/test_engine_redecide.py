"""ScopeEngine.redecide and the batch reservation clean-up (hooks the adapters' fallbacks and batches use)."""

from __future__ import annotations

import pytest

from scope_shared import (
    AnchorStore,
    Budget,
    BudgetExceededError,
    ConfigError,
    HashingEmbedder,
    ModelCard,
    Outcome,
    ScopeEngine,
)

QUESTIONS = ["what is two plus two", "name the capital of france", "write a python function to add numbers"]


def _engine(limit: float | None) -> ScopeEngine:
    store = AnchorStore(embedder=HashingEmbedder())
    rows = []
    for q in QUESTIONS:
        rows += [
            Outcome(query=q, model="big", correct=1.0, output_tokens=100, input_tokens=10),
            Outcome(query=q, model="small", correct=0.0, output_tokens=100, input_tokens=10),
        ]
    store.add(rows)
    cards = [
        ModelCard(name="big", input_per_mtok=10, output_per_mtok=10),
        ModelCard(name="small", input_per_mtok=1, output_per_mtok=1),
    ]
    return ScopeEngine(store=store, models=cards, budget=Budget(limit=limit) if limit is not None else None)


def test_failed_batch_holds_nothing() -> None:
    # big costs ~$0.00105 and small ~$0.000105 per call (input tokens estimated from characters):
    # two bigs fit, the third call fits nothing.
    engine = _engine(0.00215)
    with pytest.raises(BudgetExceededError):
        engine.route_batch(["two plus two"] * 3)
    assert engine.ledger is not None
    assert engine.ledger.held == 0.0


def test_redecide_reserves_item_by_item_and_excludes() -> None:
    engine = _engine(0.00215)
    decisions = engine.route_batch(["two plus two"] * 3, options={"reserve": False})
    assert engine.ledger is not None and engine.ledger.held == 0.0
    first = engine.redecide(decisions[0])
    second = engine.redecide(decisions[1])
    assert (first.model, second.model) == ("big", "big")
    assert first.reservation_id and second.reservation_id
    with pytest.raises(BudgetExceededError):
        engine.redecide(decisions[2])
    engine.release(first)
    fallback = engine.redecide(second, exclude=["big"], reason="big failed")
    assert fallback.model == "small"
    assert "big" not in fallback.estimates
    assert fallback.degraded and "big failed" in fallback.reason


def test_redecide_everything_excluded_is_a_config_error() -> None:
    engine = _engine(None)
    decision = engine.route("two plus two")
    with pytest.raises(ConfigError, match="nothing left"):
        engine.redecide(decision, exclude=["big", "small"])
