"""Anchor statistics with SCOPE: blended (:class:`HybridEstimator`) or gated (:class:`GatedEstimator`).

The hybrid mixes the two predictions with a fixed weight on the anchor side. The authors' two-stage
routing (``scripts/two_stage_routing.py``) scores candidates with a Stage-I anchor weight of 0.3 scaled
by ``0.5 + 0.5 * alpha``, i.e. 0.15-0.3; the default here, 0.25, sits inside that range.

The gated estimator exists because chain-of-thought SCOPE is itself expensive (up to ~1k generated tokens
a sample, 8 samples, every candidate): anchor statistics decide alone when the best candidate's utility
leads the runner-up by more than ``margin``, and SCOPE is asked only about the candidates within
``margin`` of the best. Each estimate's ``reason`` says which way the query went (see :func:`escalated`)
and SCOPE's estimates carry the tokens it generated in ``estimator_tokens``.

SCOPE being unreachable is not handled here: :class:`EstimatorUnavailableError` propagates so that the
engine falls back to anchor statistics and marks the decision degraded.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scope_shared.errors import ConfigError
from scope_shared.estimators.base import Estimator, Prediction, QueryContext
from scope_shared.policy import utility
from scope_shared.types import Estimate, ModelCard

__all__ = [
    "DEFAULT_ANCHOR_WEIGHT",
    "DEFAULT_MARGIN",
    "GATE_ANCHORS",
    "GATE_ESCALATED",
    "GatedEstimator",
    "HybridEstimator",
    "combine_predictions",
    "escalated",
    "normalized_utility",
]

#: Weight of anchor statistics in :class:`HybridEstimator` (the authors use 0.15-0.3).
DEFAULT_ANCHOR_WEIGHT = 0.25
#: Lead, in correct-answer equivalents, above which anchor statistics decide alone.
DEFAULT_MARGIN = 0.1
#: ``reason`` prefix of every estimate of a query that SCOPE was asked about.
GATE_ESCALATED = "gated: escalated"
#: ``reason`` prefix of every estimate of a query that anchor statistics decided alone.
GATE_ANCHORS = "gated: anchors decided"


def _most_anchors(*parts: Estimator) -> int | None:
    """The most anchors per model any part uses (None if one of them may use them all)."""
    counts = [p.anchors_per_model for p in parts]
    return None if None in counts else max(c for c in counts if c is not None)


def combine_predictions(anchor: Prediction, scope: Prediction, anchor_weight: float) -> Prediction:
    """Blend two predictions: probabilities linearly, lengths geometrically (in ``log1p`` space).

    ``p_std`` combines both sides' as independent errors; SCOPE's explanation, sample counts and token
    use are kept; the anchor side's evidence is kept (it covers more anchors).
    """
    w = anchor_weight
    p = w * anchor.p_correct + (1.0 - w) * scope.p_correct
    log_tokens = w * math.log1p(max(anchor.output_tokens, 0.0)) + (1.0 - w) * math.log1p(
        max(scope.output_tokens, 0.0)
    )
    p_std = None
    if anchor.p_std is not None and scope.p_std is not None:
        p_std = math.hypot(w * anchor.p_std, (1.0 - w) * scope.p_std)
    reasons = [
        f"anchors: {anchor.reason}" if anchor.reason else "",
        f"scope: {scope.reason}" if scope.reason else "",
    ]
    return Prediction(
        p_correct=p,
        output_tokens=math.expm1(log_tokens),
        evidence=anchor.evidence or scope.evidence,
        p_std=p_std,
        explanation=scope.explanation,
        samples=scope.samples,
        unparsed_samples=scope.unparsed_samples,
        degraded=anchor.degraded or scope.degraded,
        reason="; ".join(r for r in reasons if r),
        estimator_tokens=scope.estimator_tokens,
    )


class HybridEstimator(Estimator):
    """``anchor_weight * anchors + (1 - anchor_weight) * scope`` for every (query, model) pair.

    Args:
        anchors: the anchor-statistics estimator (or any estimator implementing ``_predict``).
        scope: the SCOPE estimator.
        anchor_weight: weight of the anchor side in [0, 1]; default 0.25 (authors: 0.15-0.3).
    """

    name = "hybrid"

    def __init__(
        self, *, anchors: Estimator, scope: Estimator, anchor_weight: float = DEFAULT_ANCHOR_WEIGHT
    ) -> None:
        if not 0.0 <= anchor_weight <= 1.0:
            msg = f"anchor_weight must be in [0, 1], got {anchor_weight}"
            raise ConfigError(msg)
        self.anchors = anchors
        self.scope = scope
        self.anchor_weight = anchor_weight

    def __repr__(self) -> str:
        return (
            f"HybridEstimator(anchors={self.anchors!r}, scope={self.scope!r}, "
            f"anchor_weight={self.anchor_weight})"
        )

    def _combine(
        self, a_rows: Sequence[Mapping[str, Prediction]], s_rows: Sequence[Mapping[str, Prediction]]
    ) -> list[dict[str, Prediction]]:
        return [
            {m: combine_predictions(a[m], s[m], self.anchor_weight) for m in a}
            for a, s in zip(a_rows, s_rows, strict=True)
        ]

    @property
    def anchors_per_model(self) -> int | None:
        return _most_anchors(self.anchors, self.scope)

    def _predict(self, queries: Sequence[QueryContext], models: Sequence[str]) -> list[dict[str, Prediction]]:
        return self._combine(self.anchors._predict(queries, models), self.scope._predict(queries, models))

    async def _apredict(
        self, queries: Sequence[QueryContext], models: Sequence[str]
    ) -> list[dict[str, Prediction]]:
        a_rows, s_rows = await asyncio.gather(
            self.anchors._apredict(queries, models), self.scope._apredict(queries, models)
        )
        return self._combine(a_rows, s_rows)

    def close(self) -> None:
        self.anchors.close()
        self.scope.close()


def normalized_utility(estimate: Estimate, value_per_correct: float | None) -> float:
    """Utility in correct-answer equivalents: ``p - cost / V`` (``p`` when ``V`` is None, inf or <= 0).

    This is :func:`scope_shared.policy.utility` divided by ``V``, so one margin means the same thing
    whatever the user's trade-off.
    """
    u = utility(estimate.p_correct, estimate.cost, value_per_correct)
    if value_per_correct is None or math.isinf(value_per_correct) or value_per_correct <= 0:
        return u
    return u / value_per_correct


def escalated(estimates: Mapping[str, Estimate]) -> bool:
    """Whether a :class:`GatedEstimator` asked SCOPE about this query."""
    return any(e.reason.startswith(GATE_ESCALATED) for e in estimates.values())


@dataclass(frozen=True, slots=True)
class _Gate:
    close: tuple[str, ...]
    lead: float


def _with_reason(estimate: Estimate, note: str) -> Estimate:
    reason = f"{note}; {estimate.reason}" if estimate.reason else note
    return estimate.model_copy(update={"reason": reason})


class GatedEstimator(Estimator):
    """Anchor statistics first; SCOPE only for queries whose top candidates are within ``margin``.

    Utilities are compared in correct-answer equivalents (:func:`normalized_utility`): with a margin of
    0.1, anchor statistics decide alone when the best candidate beats the runner-up by more than 0.1 in
    probability of a correct answer, net of the cost difference priced at the user's ``value_per_correct``.
    Otherwise SCOPE estimates every candidate within the margin of the best (candidates without any
    outcome among the retrieved anchors keep their anchor estimate), and the other candidates keep theirs.

    Needs model prices, so it works through :meth:`estimate`/:meth:`aestimate`; ``_predict`` raises.

    Args:
        anchors: the anchor-statistics estimator.
        scope: the SCOPE estimator (or a :class:`HybridEstimator` to blend for the close candidates).
        margin: lead in correct-answer equivalents above which SCOPE is not asked (default 0.1).
    """

    name = "gated"

    def __init__(self, *, anchors: Estimator, scope: Estimator, margin: float = DEFAULT_MARGIN) -> None:
        if margin < 0 or math.isnan(margin):
            msg = f"margin must be >= 0, got {margin}"
            raise ConfigError(msg)
        self.anchors = anchors
        self.scope = scope
        self.margin = margin

    def __repr__(self) -> str:
        return f"GatedEstimator(anchors={self.anchors!r}, scope={self.scope!r}, margin={self.margin})"

    @property
    def anchors_per_model(self) -> int | None:
        return _most_anchors(self.anchors, self.scope)

    def _predict(self, queries: Sequence[QueryContext], models: Sequence[str]) -> list[dict[str, Prediction]]:
        msg = "GatedEstimator compares priced utilities: call estimate()/aestimate() with ModelCards"
        raise ConfigError(msg)

    def gate(self, ctx: QueryContext, row: Mapping[str, Estimate]) -> tuple[tuple[str, ...], float]:
        """The candidates SCOPE should be asked about (empty when anchors decide) and the best's lead."""
        g = self._gate(ctx, row)
        return g.close, g.lead

    def _gate(self, ctx: QueryContext, row: Mapping[str, Estimate]) -> _Gate:
        utils = {m: normalized_utility(e, ctx.value_per_correct) for m, e in row.items()}
        ranked = sorted(utils.values(), reverse=True)
        if len(ranked) < 2:
            return _Gate(close=(), lead=math.inf)
        best, lead = ranked[0], ranked[0] - ranked[1]
        if lead > self.margin:
            return _Gate(close=(), lead=lead)
        has_anchor = {m for a in ctx.anchors for m in a.outcomes}
        close = tuple(m for m in row if best - utils[m] <= self.margin and m in has_anchor)
        return _Gate(close=close if len(close) >= 2 else (), lead=lead)

    def _plan(
        self, queries: Sequence[QueryContext], rows: Sequence[Mapping[str, Estimate]]
    ) -> tuple[list[_Gate], dict[tuple[str, ...], list[int]]]:
        gates = [self._gate(ctx, row) for ctx, row in zip(queries, rows, strict=True)]
        groups: dict[tuple[str, ...], list[int]] = {}
        for qi, g in enumerate(gates):
            if g.close:
                groups.setdefault(g.close, []).append(qi)
        return gates, groups

    def _merge(
        self,
        rows: Sequence[Mapping[str, Estimate]],
        gates: Sequence[_Gate],
        groups: Mapping[tuple[str, ...], list[int]],
        answers: Sequence[Sequence[Mapping[str, Estimate]]],
    ) -> list[dict[str, Estimate]]:
        scoped: dict[int, Mapping[str, Estimate]] = {}
        for indices, group_rows in zip(groups.values(), answers, strict=True):
            scoped.update(zip(indices, group_rows, strict=True))
        out: list[dict[str, Estimate]] = []
        for qi, (row, g) in enumerate(zip(rows, gates, strict=True)):
            if qi not in scoped:
                note = f"{GATE_ANCHORS} (lead {g.lead:.3g} > margin {self.margin:g})"
                if math.isinf(g.lead) or g.lead <= self.margin:
                    note = f"{GATE_ANCHORS} (no two candidates SCOPE could compare)"
                out.append({m: _with_reason(e, note) for m, e in row.items()})
                continue
            note = (
                f"{GATE_ESCALATED} {len(g.close)} of {len(row)} candidates to {self.scope.name} "
                f"(lead {g.lead:.3g} <= margin {self.margin:g})"
            )
            out.append({m: _with_reason(scoped[qi].get(m, e), note) for m, e in row.items()})
        return out

    def estimate(
        self, queries: Sequence[QueryContext], models: Sequence[ModelCard]
    ) -> list[dict[str, Estimate]]:
        """Estimate with anchor statistics, then with SCOPE where the top candidates are close."""
        if not queries:
            return []
        rows = self.anchors.estimate(queries, models)
        gates, groups = self._plan(queries, rows)
        cards = {c.name: c for c in models}
        answers = [
            self.scope.estimate([queries[i] for i in indices], [cards[m] for m in close])
            for close, indices in groups.items()
        ]
        return self._merge(rows, gates, groups, answers)

    async def aestimate(
        self, queries: Sequence[QueryContext], models: Sequence[ModelCard]
    ) -> list[dict[str, Estimate]]:
        """Async form of :meth:`estimate`; the SCOPE groups go out concurrently."""
        if not queries:
            return []
        rows = await self.anchors.aestimate(queries, models)
        gates, groups = self._plan(queries, rows)
        cards = {c.name: c for c in models}
        answers = await asyncio.gather(
            *(
                self.scope.aestimate([queries[i] for i in indices], [cards[m] for m in close])
                for close, indices in groups.items()
            )
        )
        return self._merge(rows, gates, groups, answers)

    def close(self) -> None:
        self.anchors.close()
        self.scope.close()
