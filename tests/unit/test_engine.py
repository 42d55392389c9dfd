from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from scope_shared import (
    AnchorStore,
    Budget,
    BudgetExceededError,
    ConfigError,
    EmptyStoreError,
    HashingEmbedder,
    ModelCard,
    Outcome,
    ScopeEngine,
    StoreUnavailableError,
    UnknownModelError,
)
from scope_shared.errors import EstimatorUnavailableError
from scope_shared.escalation import Escalation
from scope_shared.estimators import AnchorStatsEstimator, Estimator, Prediction, QueryContext
from scope_shared.routing import build_routing
from scope_shared.store import anchor_id

from .conftest import CountingEmbedder

POEM = "write a sonnet poem about the silver moon"
SUM = "what is 41 plus 42 in arithmetic"


def test_routes_by_expected_utility(store: AnchorStore, cards: list[ModelCard]) -> None:
    eng = ScopeEngine(store=store, models=cards, value_per_correct=1.0)
    assert eng.wait_ready(timeout=30)
    poem, arith = eng.route_batch([POEM, SUM])
    assert poem.model == "big"  # small fails poems
    assert arith.estimates["small"].p_correct > 0.8 > 0.2 > poem.estimates["small"].p_correct
    # both are right on arithmetic: once a correct answer is worth little, the cheap model wins it
    cheap = eng.route_batch([POEM, SUM], options={"value_per_correct": 1e-4})
    assert cheap[1].model == "small"
    assert arith.estimates["big"].cost > 10 * arith.estimates["small"].cost
    assert poem.estimates["small"].p_correct < 0.5 < poem.estimates["big"].p_correct
    assert poem.estimates["big"].output_tokens > 100 > arith.estimates["big"].output_tokens
    assert poem.estimate.evidence and "runner-up small" in poem.reason
    assert poem.ranking() == ["big", "small"]
    assert not poem.degraded


def test_accuracy_only_and_per_call_override(store: AnchorStore, cards: list[ModelCard]) -> None:
    eng = ScopeEngine(store=store, models=cards)  # accuracy only
    assert eng.route(SUM).model == "big"
    assert eng.route(SUM, options={"value_per_correct": 0.0}).model == "small"


def test_max_cost_per_call_and_no_fit(store: AnchorStore, cards: list[ModelCard]) -> None:
    eng = ScopeEngine(store=store, models=cards, max_cost_per_call=1e-9)
    with pytest.raises(BudgetExceededError, match="no candidate fits"):
        eng.route(POEM)
    eng2 = ScopeEngine(store=store, models=cards, max_cost_per_call=1e-9, on_no_fit="cheapest")
    d = eng2.route(POEM)
    assert d.model == "small" and d.degraded and "cheapest" in d.reason
    big_cost = eng.route(POEM, options={"max_cost_per_call": None}).estimates["big"].cost
    d = eng.route(POEM, options={"max_cost_per_call": big_cost * 0.99})
    assert d.model == "small" and "big" in d.excluded


def test_budget_reserve_settle_release(store: AnchorStore, cards: list[ModelCard]) -> None:
    eng = ScopeEngine(store=store, models=cards, budget=Budget(limit=1.0), write_behind=0)
    d = eng.route(POEM)
    assert d.reservation_id and eng.ledger is not None
    assert eng.ledger.held == pytest.approx(d.reserved_cost)
    cost = eng.settle(d, input_tokens=10, output_tokens=100)
    assert cost == pytest.approx(cards[0].cost(10, 100))
    assert eng.ledger.spent == pytest.approx(cost) and eng.ledger.held == 0
    assert eng.settle(d, input_tokens=10, output_tokens=100) is None  # once only
    d2 = eng.route(POEM)
    assert eng.release(d2) and eng.ledger.held == 0


def test_budget_exhaustion_moves_to_cheaper_then_raises(store: AnchorStore, cards: list[ModelCard]) -> None:
    probe = ScopeEngine(store=store, models=cards).route(POEM, options={"reserve": False})
    big, small = probe.estimates["big"].cost, probe.estimates["small"].cost
    eng = ScopeEngine(store=store, models=cards, budget=Budget(limit=small * 2.5))
    assert big > small * 2.5
    d = eng.route(POEM)
    assert d.model == "small" and "remaining budget" in d.excluded["big"]
    eng.route(POEM)
    with pytest.raises(BudgetExceededError):
        eng.route(POEM)


def test_force_model_and_unknown_models(store: AnchorStore, cards: list[ModelCard]) -> None:
    eng = ScopeEngine(store=store, models=cards, value_per_correct=1.0)
    d = eng.route(SUM, options={"force_model": "big"})
    assert d.model == "big" and "forced" in d.reason
    with pytest.raises(UnknownModelError, match="unknown model 'gpt-9'; known: \\['big', 'small'\\]"):
        eng.route(SUM, options={"force_model": "gpt-9"})
    with pytest.raises(UnknownModelError):
        eng.route(SUM, options={"candidates": ["big", "nope"]})
    assert eng.route(SUM, options={"candidates": ["big"]}).model == "big"


@pytest.mark.parametrize("bad", ["", "   \n\t", b"bytes query", None])
def test_bad_queries(store: AnchorStore, cards: list[ModelCard], bad: Any) -> None:
    eng = ScopeEngine(store=store, models=cards)
    with pytest.raises(ConfigError):
        eng.route(bad)


def test_constructor_validates(store: AnchorStore, cards: list[ModelCard]) -> None:
    with pytest.raises(ConfigError, match="duplicate model names"):
        ScopeEngine(store=store, models=[cards[0], cards[0]])
    with pytest.raises(ConfigError, match="models is empty"):
        ScopeEngine(store=store, models=[])
    with pytest.raises(ConfigError, match="value_per_correct"):
        ScopeEngine(store=store, models=cards, value_per_correct=-1)
    with pytest.raises(ConfigError, match="value_per_correct"):
        ScopeEngine(store=store, models=cards, value_per_correct=float("nan"))


def test_model_without_anchor_outcomes(store: AnchorStore, cards: list[ModelCard]) -> None:
    from scope_shared import NoAnchorDataError

    extra = ModelCard(name="fresh", input_per_mtok=1, output_per_mtok=1)
    eng = ScopeEngine(store=store, models=[*cards, extra])
    with pytest.raises(NoAnchorDataError, match="'fresh'"):
        eng.route(SUM)


def test_empty_store(cards: list[ModelCard]) -> None:
    eng = ScopeEngine(store=AnchorStore(embedder=HashingEmbedder()), models=cards)
    with pytest.raises(EmptyStoreError, match="is empty"):
        eng.route(SUM)


def test_record_writes_back_and_settles(store: AnchorStore, cards: list[ModelCard]) -> None:
    eng = ScopeEngine(store=store, models=cards, budget=Budget(limit=1.0), write_behind=0)
    q = "compose a haiku about rain on the harbour"
    d = eng.route(q)
    eng.record(Outcome(query=q, model=d.model, correct=1.0, input_tokens=9, output_tokens=40), decision=d)
    assert store.count() == 21
    assert eng.ledger is not None and eng.ledger.spent == pytest.approx(eng.cost_of(d.model, input_tokens=9, output_tokens=40))
    with pytest.raises(UnknownModelError):
        eng.record(Outcome(query=q, model="other", correct=1.0))


def test_recording_a_routed_call_reuses_its_embedding(outcomes: list[Outcome], cards: list[ModelCard]) -> None:
    for cache, expected in ((1024, 1), (0, 2)):
        emb = CountingEmbedder()
        store = AnchorStore(embedder=emb, embed_cache=cache)
        store.add(outcomes)
        eng = ScopeEngine(store=store, models=cards, write_behind=0)
        q = "compose a haiku about rain on the harbour"
        d = eng.route(q)
        eng.record(Outcome(query=q, model=d.model, correct=1.0, output_tokens=40), decision=d)
        assert emb.texts.count(q) == expected, cache
        [[hit, *_]] = store.query(HashingEmbedder().embed([q]), k=1)
        assert hit.question == q and hit.similarity == pytest.approx(1.0)  # stored under the same vector


def test_write_behind_queues_records_and_writes_them_in_the_background(
    store: AnchorStore, cards: list[ModelCard]
) -> None:
    eng = ScopeEngine(store=store, models=cards, budget=Budget(limit=1.0), write_behind=30.0)
    q = "compose a haiku about rain on the harbour"
    d = eng.route(q)
    eng.record(Outcome(query=q, model=d.model, correct=1.0, input_tokens=9, output_tokens=40), decision=d)
    assert eng.pending == 1 and store.count() == 20  # queued, not written: the caller did not wait
    assert eng.ledger is not None and eng.ledger.spent > 0  # the budget is settled at once
    eng.record(Outcome(query=q, model=d.model, correct=0.0, output_tokens=41))  # the same call, regraded
    assert eng.flush() == 2 and eng.pending == 0 and store.count() == 21
    assert store.get([anchor_id(q)])[anchor_id(q)].outcomes[d.model].correct == 0.0  # the last one wins

    quick = ScopeEngine(store=store, models=cards, write_behind=0.05)
    q2 = "compose a limerick about the tide"
    quick.record(Outcome(query=q2, model="big", correct=1.0, output_tokens=30))
    deadline = time.monotonic() + 10
    while quick.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert quick.pending == 0 and store.count() == 22  # written by the background thread
    writer = quick._recorder._writer
    assert writer is not None and writer.name == "scope-write-behind" and writer.is_alive()

    slow = ScopeEngine(store=store, models=cards, write_behind=30.0)
    slow.record(Outcome(query="compose an ode to salt", model="big", correct=1.0))
    started = time.monotonic()
    slow.close()  # writes what is queued without waiting out write_behind
    assert time.monotonic() - started < 5 and slow.pending == 0 and store.count() == 23
    assert slow._recorder._writer is not None and not slow._recorder._writer.is_alive()
    slow.record(Outcome(query="compose an ode to pepper", model="big", correct=1.0))
    assert slow.pending == 0 and store.count() == 24  # after close, records are written at once


def test_async_matches_sync(store: AnchorStore, cards: list[ModelCard]) -> None:
    eng = ScopeEngine(store=store, models=cards, value_per_correct=1.0)
    assert eng.wait_ready(timeout=30)
    sync = eng.route_batch([POEM, SUM], options={"reserve": False})
    got = asyncio.run(eng.aroute_batch([POEM, SUM], options={"reserve": False}))
    assert [d.model for d in got] == [d.model for d in sync]
    assert got[0].estimates["big"].p_correct == pytest.approx(sync[0].estimates["big"].p_correct)


class FlakyStore:
    """Wraps a real store; fails every call while ``down`` is set."""

    def __init__(self, inner: AnchorStore) -> None:
        self.inner, self.down, self.adds = inner, False, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*a: Any, **kw: Any) -> Any:
            if self.down and name not in ("estimate_input_tokens",):
                raise StoreUnavailableError("chroma down")
            if name == "add":
                self.adds += 1
            return attr(*a, **kw)

        return call

    @property
    def version(self) -> str:
        if self.down:
            raise StoreUnavailableError("chroma down")
        return self.inner.version


def test_store_down_degrades_and_queues_outcomes(store: AnchorStore, cards: list[ModelCard]) -> None:
    flaky = FlakyStore(store)
    eng = ScopeEngine(store=flaky, models=cards, value_per_correct=1.0, write_behind=0, store_retry_s=0)  # type: ignore[arg-type]
    assert eng.wait_ready(timeout=30)
    assert not eng.route(POEM).degraded
    flaky.down = True
    d = eng.route(POEM)
    assert d.degraded and "anchor store unavailable" in d.reason
    q = "a question answered while chroma was down"
    eng.record(Outcome(query=q, model="big", correct=1.0))
    assert eng.pending == 1 and store.count() == 20
    flaky.down = False
    eng.route(SUM)  # flushes the queue first
    assert eng.pending == 0 and store.count() == 21
    raising = ScopeEngine(store=flaky, models=cards, on_store_down="raise")  # type: ignore[arg-type]
    flaky.down = True
    with pytest.raises(StoreUnavailableError):
        raising.route(POEM)


def test_a_store_that_just_failed_is_skipped_for_store_retry_s(store: AnchorStore, cards: list[ModelCard]) -> None:
    flaky = FlakyStore(store)
    eng = ScopeEngine(store=flaky, models=cards, value_per_correct=1.0, store_retry_s=30.0)  # type: ignore[arg-type]
    assert eng.wait_ready(timeout=30)
    eng.route(POEM)
    flaky.down = True
    assert eng.route(POEM).degraded
    flaky.down = False  # back, but within store_retry_s of the failure: not asked yet
    calls = []
    real = flaky.inner.query
    flaky.inner.query = lambda *a, **kw: calls.append(1) or real(*a, **kw)  # type: ignore[method-assign]
    d = eng.route(SUM)
    assert d.degraded and "chroma down" in d.reason and calls == []
    eng._store_down = (0.0, eng._store_down[1])  # type: ignore[index]  # the window has passed
    assert not eng.route(SUM).degraded and calls == [1]


class DownEstimator(Estimator):
    name = "down"

    def _predict(self, queries: Any, models: Any) -> list[dict[str, Prediction]]:
        raise EstimatorUnavailableError("vLLM at http://x unreachable")


def test_estimator_down_falls_back_to_anchor_statistics(store: AnchorStore, cards: list[ModelCard]) -> None:
    eng = ScopeEngine(store=store, models=cards, estimator=DownEstimator(), value_per_correct=1.0)
    assert isinstance(eng.fallback, AnchorStatsEstimator)
    d = eng.route(POEM)
    assert d.model == "big" and d.degraded and "estimator unavailable" in d.reason
    assert d.estimate.estimator == "anchors"
    no_fallback = ScopeEngine(store=store, models=cards, estimator=DownEstimator())
    no_fallback.fallback = None
    with pytest.raises(EstimatorUnavailableError):
        no_fallback.route(POEM)


class SpyEstimator(AnchorStatsEstimator):
    """Anchor statistics, keeping every context it was asked to estimate."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[QueryContext] = []

    def _predict(self, queries: Any, models: Any) -> list[dict[str, Prediction]]:
        self.seen.extend(queries)
        return super()._predict(queries, models)


def test_query_context_carries_input_tokens_and_anchors(store: AnchorStore, cards: list[ModelCard]) -> None:
    spy = SpyEstimator()
    seen = spy.seen
    ScopeEngine(store=store, models=cards, estimator=spy, value_per_correct=0.5).route(SUM, input_tokens=77)
    assert seen[0].input_tokens == 77 and seen[0].anchors


class TieBreaker(Estimator):
    """A second stage that says small is sure to be right, or is down."""

    name = "tie-breaker"

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.asked = 0

    def _predict(self, queries: Any, models: Any) -> list[dict[str, Prediction]]:
        self.asked += len(queries)
        if self.down:
            raise EstimatorUnavailableError("vLLM at http://x unreachable")
        return [{m: Prediction(p_correct=1.0 if m == "small" else 0.0, output_tokens=5.0) for m in models} for _ in queries]


def test_escalation_is_applied_by_the_engine_at_the_calls_value(store: AnchorStore, cards: list[ModelCard]) -> None:
    second = TieBreaker()
    eng = ScopeEngine(
        store=store, models=cards, estimator=AnchorStatsEstimator(), escalation=Escalation(second, margin=0.5)
    )
    # arithmetic: both models are right on the anchors, the lead is small: the second stage decides
    d = eng.route(SUM, options={"value_per_correct": None})
    assert second.asked == 1 and d.model == "small" and d.estimate.estimator == "tie-breaker"
    assert "gated: escalated" in d.estimate.reason
    # priced at 1e-9 USD a correct answer, cost dominates: small leads by a wide margin, no escalation
    d = eng.route(SUM, options={"value_per_correct": 1e-9})
    assert second.asked == 1 and "gated: anchors decided" in d.estimate.reason


def test_an_escalation_that_is_down_keeps_the_first_stage(store: AnchorStore, cards: list[ModelCard]) -> None:
    eng = ScopeEngine(
        store=store, models=cards, estimator=AnchorStatsEstimator(), escalation=Escalation(TieBreaker(down=True))
    )
    d = eng.route(SUM)
    assert d.degraded and "escalation unavailable" in d.reason and d.estimate.estimator == "anchors"


def test_a_warm_route_is_one_vector_search(store: AnchorStore, cards: list[ModelCard]) -> None:
    spy = SpyEstimator()
    seen = spy.seen
    inner = store._col()
    calls: list[str] = []

    class CountingCollection:
        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            return getattr(inner, name)

    store._conn._anchors = CountingCollection()
    eng = ScopeEngine(store=store, models=cards, estimator=spy, value_per_correct=1.0, write_behind=0)
    eng.route(POEM)
    eng.route(SUM)
    calls.clear()
    eng.route(SUM)
    assert calls == ["query"]  # statistics and the neighbours' records cached: no other round trip
    calls.clear()
    eng.route_batch([POEM, SUM])
    assert calls == ["query"]
    assert seen[-1].anchor_version == store.version != ""
    calls.clear()
    eng.record(Outcome(query="a brand new question about tides", model="big", correct=1.0))
    eng.route(SUM)
    assert seen[-1].anchor_version == store.version != seen[0].anchor_version


@pytest.mark.parametrize("name", ["anchors", "learned"])
def test_reading_fewer_neighbour_records_leaves_estimates_unchanged(
    name: str, store: AnchorStore, cards: list[ModelCard], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = ScopeEngine(store=store, models=cards, **build_routing(name, k=3)._asdict(), k=3)
    assert engine.wait_ready(timeout=30)
    queries = ["what is 2 plus 9 in arithmetic", "a sonnet about the moon", "an unrelated question"]
    partial, _ = engine.contexts(queries)
    monkeypatch.setattr(engine, "_fill", lambda: None)
    full, _ = engine.contexts(queries)
    assert all(len(p.anchors) == 3 < len(f.anchors) for p, f in zip(partial, full, strict=True))
    for a, b in zip(engine.estimator.estimate(partial, cards), engine.estimator.estimate(full, cards), strict=True):
        for model in a:
            assert a[model].p_correct == pytest.approx(b[model].p_correct, abs=1e-12)
            assert a[model].output_tokens == pytest.approx(b[model].output_tokens, rel=1e-9)


def test_an_outcome_without_usage_settles_its_reservation_at_the_expected_cost(
    store: AnchorStore, cards: list[ModelCard], caplog: pytest.LogCaptureFixture
) -> None:
    eng = ScopeEngine(store=store, models=cards, budget=Budget(limit=1.0), value_per_correct=1.0)
    for i in range(3):
        d = eng.route(POEM)
        with caplog.at_level("WARNING"):
            eng.record(Outcome(query=f"{POEM} {i}", model=d.model, correct=1.0), decision=d)
        assert eng.ledger is not None and eng.ledger.held == 0.0
    assert eng.ledger.spent == pytest.approx(3 * d.estimate.cost)
    assert caplog.text.count("recorded without token counts") == 1  # said once per model, not per call
    by_id = eng.route(POEM)
    eng.record(Outcome(query=f"{POEM} by id", model=by_id.model, correct=1.0), decision=by_id.reservation_id)
    assert eng.ledger.held == 0.0 and eng.ledger.spent == pytest.approx(4 * d.estimate.cost)


def test_recording_is_written_behind_by_default(store: AnchorStore, cards: list[ModelCard]) -> None:
    eng = ScopeEngine(store=store, models=cards)
    assert eng.write_behind == 0.5
    eng.record(Outcome(query="compose a haiku about a lighthouse", model="big", correct=1.0))
    assert eng.pending == 1 and store.count() == 20  # the caller did not wait for the write
    deadline = time.monotonic() + 10
    while eng.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert eng.pending == 0 and store.count() == 21
