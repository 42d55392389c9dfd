"""Shared pieces of the cascade tests: a hand-set calibration, decisions with chosen estimates, a tiny engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scope_shared import AnchorStore, Budget, HashingEmbedder, ModelCard, Outcome, ScopeEngine
from scope_shared.cascade import CascadeCalibration, GroupCalibration
from scope_shared.estimators import AnchorStatsEstimator
from scope_shared.types import Decision, Estimate

CARDS = [
    ModelCard(name="tiny", input_per_mtok=0.1, output_per_mtok=0.1),
    ModelCard(name="mid", input_per_mtok=0.3, output_per_mtok=0.3),
    ModelCard(name="strong", input_per_mtok=10.0, output_per_mtok=10.0),
]
TOKENS = (100, 100)  # input, output tokens of every fake call
COST = {c.name: c.cost(*TOKENS) for c in CARDS}
QUERY = "Which planet is closest to the sun? (A) Venus (B) Mercury (C) Mars (D) Earth"


def calibration(
    *, collision: float = 0.3, loading: float = 0.0, unparsed: float = 0.01, models: Sequence[str] | None = None
) -> CascadeCalibration:
    """A calibration with chosen parameters (tests of behaviour, not of fitting), for ``models`` (default: CARDS)."""
    names = list(models) if models is not None else [c.name for c in CARDS]
    kind = GroupCalibration(
        collision=collision,
        collision_pairs=100,
        unparsed={m: unparsed for m in names},
        default_unparsed=unparsed,
        loading={m: (loading,) for m in names},
        default_loading=(loading,),
        anchors=100,
    )
    return CascadeCalibration(groups={"choice": kind, "number": kind}, collision_strength=30.0)


def decision(p: Mapping[str, float], *, value: float | None, query: str = QUERY) -> Decision:
    """An unreserved decision whose estimates are ``p`` and the fake calls' real costs."""
    estimates = {
        c.name: Estimate(
            model=c.name,
            p_correct=p[c.name],
            output_tokens=TOKENS[1],
            input_tokens=TOKENS[0],
            cost=COST[c.name],
            estimator="test",
        )
        for c in CARDS
    }
    return Decision(
        model="strong", query=query, estimates=estimates, utilities={}, utility=0.0, value_per_correct=value
    )


def engine(*, budget: float | None = None) -> ScopeEngine:
    """A small real engine (hashing embedder, anchor statistics) over the three cards."""
    store = AnchorStore(embedder=HashingEmbedder())
    store.add(
        [
            Outcome(query=f"question number {i} about planets", model=c.name, correct=1.0, output_tokens=100)
            for i in range(5)
            for c in CARDS
        ],
        progress=False,
    )
    return ScopeEngine(
        store=store,
        models=CARDS,
        estimator=AnchorStatsEstimator(k=5),
        budget=Budget(limit=budget) if budget is not None else None,
        unsent=None,
    )
