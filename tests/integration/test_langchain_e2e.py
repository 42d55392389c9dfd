"""End to end on real data: ScopeRouter over replays of the routerbench-zs held-out queries, with the
outcome handler recording every outcome, reaches the accuracy and cost ``evaluate`` reports at the same
``value_per_correct``, over the same pool, store contents and embedder.

Recording changes the store, and with it the estimates of later queries; ``evaluate`` estimates every test
query from the anchors alone. So the replay routes the whole test set first (``abatch``: one routing call
before any model runs) and the feedback that records the outcomes comes after the batch. The handler settles
each call's budget reservation with its real tokens during the batch, which does not touch the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scope_langchain import ReplayChatModel, ScopeOutcomeHandler, ScopeRouter
from scope_shared import AnchorStore, Budget, HashingEmbedder, ScopeEngine, load_outcomes, load_prices
from scope_shared.evaluation import evaluate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "routerbench-zs"
MIXED = 1e-3  # USD per correct answer: the router spreads the queries over several models here


def _replay_point(messages: list[Any]) -> tuple[float, float, dict[str, float]]:
    n = len(messages)
    accuracy = sum(m.response_metadata["replay"]["correct"] for m in messages) / n
    cost = sum(m.response_metadata["scope"]["actual_cost"] for m in messages) / n
    share: dict[str, float] = {}
    for m in messages:
        name = m.response_metadata["scope"]["model"]
        share[name] = share.get(name, 0.0) + 1.0 / n
    return accuracy, cost, share


async def test_router_replay_matches_evaluate() -> None:
    if not DATA.is_dir():
        pytest.fail(f"shared data not found at {DATA}; the repo expects ../shared beside it")
    anchors = load_outcomes(DATA / "anchors.csv.gz")
    test = load_outcomes(DATA / "test.csv.gz")
    prices = load_prices(DATA / "prices.csv")

    # evaluate() loads the anchors into this store; the router then routes over the very same store
    store = AnchorStore(embedder=HashingEmbedder())
    report = evaluate(anchors, test, prices, store=store, values=[MIXED, None])
    routing = report["routing"]
    pool: list[str] = routing["pool"]
    expected = {pt["value_per_correct"]: pt for pt in routing["curve"]}
    assert routing["queries"] == len({o.query for o in test}) == 602
    anchors_before = store.count()

    cards = {c.name: c for c in prices}
    engine = ScopeEngine(store=store, models=[cards[m] for m in pool], k=report["k"], budget=Budget(limit=1e6))
    replays = ReplayChatModel.from_outcomes(test, models=pool)
    router = ScopeRouter(
        engine=engine,
        models=replays,
        # the prompt's tokens as the provider counted them, as evaluate() uses the recorded input tokens
        token_counter=replays[pool[0]].get_num_tokens_from_messages,
        fallback_on=(),  # a replay miss must fail the test, not fall back
    )
    questions = list(dict.fromkeys(o.query for o in test))

    # accuracy only, no handler: a pure replay
    plain = await router.abatch(questions, {"configurable": {"value_per_correct": None}, "max_concurrency": 32})
    accuracy, cost, share = _replay_point(plain)
    print(
        f"accuracy-only: router {accuracy:.4f} / ${cost:.6g}; evaluate {expected[None]['accuracy']:.4f} / ${expected[None]['cost']:.6g}"
    )
    assert accuracy == pytest.approx(expected[None]["accuracy"], abs=1e-9)
    assert cost == pytest.approx(expected[None]["cost"], rel=1e-9)
    assert share == pytest.approx(expected[None]["model_share"])

    # the mixed setting, with the handler recording every outcome from feedback after the batch
    handler = ScopeOutcomeHandler(engine=engine)
    spent_before = engine.ledger.settled_total if engine.ledger else 0.0
    mixed = await router.abatch(
        questions,
        {"configurable": {"value_per_correct": MIXED}, "callbacks": [handler], "max_concurrency": 32},
    )
    accuracy, cost, share = _replay_point(mixed)
    print(
        f"V={MIXED}: router {accuracy:.4f} / ${cost:.6g}; evaluate {expected[MIXED]['accuracy']:.4f} / ${expected[MIXED]['cost']:.6g}"
    )
    assert len(share) >= 4  # a real mix, not one model
    assert accuracy == pytest.approx(expected[MIXED]["accuracy"], abs=1e-9)
    assert cost == pytest.approx(expected[MIXED]["cost"], rel=1e-9)
    assert share == pytest.approx(expected[MIXED]["model_share"])

    assert engine.ledger is not None and engine.ledger.held == 0.0
    assert engine.ledger.settled_total - spent_before == pytest.approx(cost * len(questions), rel=1e-9)
    assert handler.pending == len(questions) and store.count() == anchors_before

    for message in mixed:
        handler.record_feedback(message, message.response_metadata["replay"]["correct"])
    assert handler.recorded == len(questions) and handler.failures == 0 and handler.pending == 0
    engine.flush()  # outcomes are written behind (write_behind=0.5 s by default)
    assert engine.pending == 0
    assert store.count() == anchors_before + len(questions)  # held-out questions are new anchors now
