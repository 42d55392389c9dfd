"""HybridEstimator and the two-stage Escalation, composed from fake estimators built on the real types."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest

from scope_shared.errors import ConfigError, EstimatorUnavailableError
from scope_shared.escalation import GATE_ANCHORS, GATE_ESCALATED, Escalation, escalated, normalized_utility
from scope_shared.estimators.base import AnchorOutcome, AnchorRecord, Estimator, Prediction, QueryContext
from scope_shared.estimators.hybrid import HybridEstimator, combine_predictions
from scope_shared.types import Estimate, ModelCard


class Fake(Estimator):
    """Answers from a table {query: {model: Prediction}}; records what it was asked."""

    def __init__(self, name: str, table: Mapping[str, Mapping[str, Prediction]], fail: bool = False) -> None:
        self.name = name
        self.table = table
        self.fail = fail
        self.calls: list[tuple[list[str], list[str]]] = []

    def _predict(self, queries: Sequence[QueryContext], models: Sequence[str]) -> list[dict[str, Prediction]]:
        self.calls.append(([q.query for q in queries], list(models)))
        if self.fail:
            msg = "vLLM server at http://x unavailable"
            raise EstimatorUnavailableError(msg)
        return [{m: self.table[q.query][m] for m in models} for q in queries]


CARDS = [
    ModelCard(name="cheap", input_per_mtok=0.0, output_per_mtok=1.0),
    ModelCard(name="mid", input_per_mtok=0.0, output_per_mtok=10.0),
    ModelCard(name="pricey", input_per_mtok=0.0, output_per_mtok=100.0),
]


def ctx(query: str) -> QueryContext:
    outcomes = {c.name: AnchorOutcome(correct=1.0, output_tokens=100.0) for c in CARDS}
    anchor = AnchorRecord(anchor_id="a", question="q", similarity=0.9, outcomes=outcomes)
    return QueryContext(query=query, input_tokens=0.0, anchors=(anchor,), stats={})


def pred(p: float, tokens: float = 100.0, **kw: object) -> Prediction:
    return Prediction(p_correct=p, output_tokens=tokens, **kw)  # type: ignore[arg-type]


def test_hybrid_blends_with_the_documented_weight() -> None:
    anchors = Fake(
        "anchors", {"q": {"cheap": pred(0.2, 100.0, p_std=0.1, reason="prior used", degraded=True)}}
    )
    scope = Fake(
        "scope",
        {"q": {"cheap": pred(1.0, 10_000.0, p_std=0.2, explanation="why", samples=8, estimator_tokens=900)}},
    )
    hybrid = HybridEstimator(anchors=anchors, scope=scope)
    assert hybrid.anchor_weight == 0.25
    out = hybrid._predict([ctx("q")], ["cheap"])[0]["cheap"]
    assert out.p_correct == pytest.approx(0.25 * 0.2 + 0.75 * 1.0)
    assert out.output_tokens == pytest.approx(math.expm1(0.25 * math.log1p(100) + 0.75 * math.log1p(10_000)))
    assert out.p_std == pytest.approx(math.hypot(0.25 * 0.1, 0.75 * 0.2))
    assert (out.explanation, out.samples, out.estimator_tokens) == ("why", 8, 900)
    assert out.degraded and "anchors: prior used" in out.reason


def test_hybrid_weight_extremes_and_validation() -> None:
    a, s = pred(0.1, 50.0), pred(0.9, 500.0)
    assert combine_predictions(a, s, 1.0).p_correct == pytest.approx(0.1)
    assert combine_predictions(a, s, 0.0).output_tokens == pytest.approx(500.0)
    with pytest.raises(ConfigError, match="anchor_weight"):
        HybridEstimator(anchors=Fake("a", {}), scope=Fake("s", {}), anchor_weight=1.5)


async def test_hybrid_async_matches_sync() -> None:
    table = {"q": {"cheap": pred(0.4), "mid": pred(0.8)}}
    hybrid = HybridEstimator(anchors=Fake("anchors", table), scope=Fake("scope", table), anchor_weight=0.3)
    sync = hybrid.estimate([ctx("q")], CARDS[:2])
    asyn = await hybrid.aestimate([ctx("q")], CARDS[:2])
    assert sync == asyn and sync[0]["mid"].estimator == "hybrid"


def test_hybrid_lets_scope_unavailability_reach_the_engine() -> None:
    table = {"q": {"cheap": pred(0.4)}}
    hybrid = HybridEstimator(anchors=Fake("anchors", table), scope=Fake("scope", table, fail=True))
    with pytest.raises(EstimatorUnavailableError):
        hybrid.estimate([ctx("q")], CARDS[:1])


ANCHOR_TABLE = {
    # clear winner: pricey leads by 0.5 in accuracy
    "clear": {"cheap": pred(0.3), "mid": pred(0.4), "pricey": pred(0.9)},
    # close: cheap and mid within 0.05, pricey far behind
    "close": {"cheap": pred(0.60), "mid": pred(0.65), "pricey": pred(0.2)},
}
SCOPE_TABLE = {
    "close": {
        "cheap": pred(0.9, 80.0, estimator_tokens=1200, explanation="cheap is fine"),
        "mid": pred(0.5, 90.0, estimator_tokens=1100),
        "pricey": pred(0.0),
    },
    "clear": {"cheap": pred(0.1), "mid": pred(0.1), "pricey": pred(0.1)},
}


class Gated:
    """The engine's two stages: the first estimator prices every candidate, then the escalation applies."""

    def __init__(self, anchors: Estimator, scope: Estimator, margin: float = 0.1) -> None:
        self.anchors = anchors
        self.escalation = Escalation(scope, margin=margin)

    def estimate(
        self, queries: Sequence[QueryContext], cards: Sequence[ModelCard], value: float | None = None
    ) -> list[dict[str, Estimate]]:
        return self.escalation.apply(queries, self.anchors.estimate(queries, cards), cards, value)

    async def aestimate(
        self, queries: Sequence[QueryContext], cards: Sequence[ModelCard], value: float | None = None
    ) -> list[dict[str, Estimate]]:
        return await self.escalation.aapply(queries, await self.anchors.aestimate(queries, cards), cards, value)


def make_gated(margin: float = 0.1) -> tuple[Gated, Fake, Fake]:
    anchors, scope = Fake("anchors", ANCHOR_TABLE), Fake("scope", SCOPE_TABLE)
    return Gated(anchors, scope, margin=margin), anchors, scope


def test_gate_lets_anchors_decide_a_clear_lead_without_asking_scope() -> None:
    gated, _, scope = make_gated()
    row = gated.estimate([ctx("clear")], CARDS)[0]
    assert scope.calls == []
    assert not escalated(row)
    assert all(e.reason.startswith(GATE_ANCHORS) and e.estimator == "anchors" for e in row.values())
    assert "lead 0.5" in row["pricey"].reason
    assert sum(e.estimator_tokens for e in row.values()) == 0


def test_gate_asks_scope_only_about_the_close_candidates() -> None:
    gated, _, scope = make_gated()
    rows = gated.estimate([ctx("clear"), ctx("close")], CARDS)
    assert scope.calls == [(["close"], ["cheap", "mid"])]
    row = rows[1]
    assert escalated(row) and not escalated(rows[0])
    assert row["cheap"].p_correct == 0.9 and row["cheap"].estimator == "scope"
    assert row["cheap"].explanation == "cheap is fine"
    assert row["pricey"].p_correct == 0.2 and row["pricey"].estimator == "anchors"  # kept
    assert all(e.reason.startswith(GATE_ESCALATED) for e in row.values())
    assert "2 of 3 candidates" in row["mid"].reason
    assert sum(e.estimator_tokens for e in row.values()) == 2300


def test_margin_zero_never_escalates_distinct_utilities_and_large_margin_escalates_all() -> None:
    gated, _, scope = make_gated(margin=0.0)
    gated.estimate([ctx("close")], CARDS)
    assert scope.calls == []
    gated, _, scope = make_gated(margin=1.0)
    gated.estimate([ctx("clear")], CARDS)
    assert scope.calls == [(["clear"], ["cheap", "mid", "pricey"])]


def test_gate_compares_utility_net_of_cost_at_the_users_value() -> None:
    # Equal accuracy, but pricey costs 0.01 USD more per 100 output tokens: at V=0.05 USD per correct
    # answer that is 0.2 correct-answer equivalents, so anchors decide; with V=None (accuracy only)
    # it is a tie.
    table = {"tie": {"cheap": pred(0.7), "pricey": pred(0.7)}}
    scope = Fake("scope", {"tie": {"cheap": pred(0.5), "pricey": pred(0.6)}})
    gated = Gated(Fake("anchors", table), scope, margin=0.1)
    cards = [CARDS[0], CARDS[2]]
    gated.estimate([ctx("tie")], cards, value=0.05)
    assert scope.calls == []
    row = gated.estimate([ctx("tie")], cards, value=None)[0]
    assert scope.calls == [(["tie"], ["cheap", "pricey"])] and escalated(row)


def test_normalized_utility_is_in_correct_answer_equivalents() -> None:
    est = Estimate(
        model="m", p_correct=0.8, output_tokens=1.0, input_tokens=0.0, cost=0.02, estimator="anchors"
    )
    assert normalized_utility(est, None) == 0.8
    assert normalized_utility(est, math.inf) == 0.8
    assert normalized_utility(est, 0.1) == pytest.approx(0.8 - 0.2)


async def test_gated_async_matches_sync() -> None:
    gated, _, _ = make_gated()
    queries = [ctx("clear"), ctx("close")]
    assert gated.estimate(queries, CARDS) == await gated.aestimate(queries, CARDS)


def test_escalation_needs_an_estimator_and_a_valid_margin() -> None:
    with pytest.raises(ConfigError, match="margin"):
        Escalation(Fake("s", {}), margin=-1.0)
    with pytest.raises(ConfigError, match="must be an Estimator"):
        Escalation("scope")  # type: ignore[arg-type]


def test_gated_lets_scope_unavailability_reach_the_engine() -> None:
    gated = Gated(Fake("anchors", ANCHOR_TABLE), Fake("scope", SCOPE_TABLE, fail=True))
    assert gated.estimate([ctx("clear")], CARDS)  # no escalation, no SCOPE call, no error
    with pytest.raises(EstimatorUnavailableError):
        gated.estimate([ctx("close")], CARDS)


def test_candidates_scope_cannot_reason_about_are_not_escalated() -> None:
    outcomes = {"cheap": AnchorOutcome(correct=1.0)}  # only cheap has anchor records
    anchor = AnchorRecord(anchor_id="a", question="q", similarity=0.9, outcomes=outcomes)
    q = QueryContext(query="close", input_tokens=0.0, anchors=(anchor,), stats={})
    gated, _, scope = make_gated()
    row = gated.estimate([q], CARDS)[0]
    assert scope.calls == [] and not escalated(row)
    assert "no two candidates" in row["cheap"].reason
