"""Two-stage estimation: a cheap estimator for every candidate, a costly one only where the choice is close.

Chain-of-thought SCOPE is itself expensive (up to ~1k generated tokens a sample, 8 samples, every
candidate), so the engine can apply an :class:`Escalation` after pricing the first stage's estimates: the
cheap estimates decide alone when the best candidate's utility leads the runner-up by more than ``margin``;
otherwise the costly estimator is asked about the candidates within ``margin`` of the best. This is a
routing step (it compares utilities at the call's ``value_per_correct``), so the engine applies it, not an
estimator. Each estimate's ``reason`` says which way the query went (see :func:`escalated`), and the costly
estimates carry the tokens they generated in ``estimator_tokens``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scope_shared.errors import ConfigError
from scope_shared.estimators.base import Estimator, QueryContext
from scope_shared.policy import utility
from scope_shared.types import Estimate, ModelCard

__all__ = ["DEFAULT_MARGIN", "GATE_ANCHORS", "GATE_ESCALATED", "Escalation", "escalated", "normalized_utility"]

#: Lead, in correct-answer equivalents, above which the first stage decides alone.
DEFAULT_MARGIN = 0.1
#: ``reason`` prefix of every estimate of a query that the second stage was asked about.
GATE_ESCALATED = "gated: escalated"
#: ``reason`` prefix of every estimate of a query that the first stage decided alone.
GATE_ANCHORS = "gated: anchors decided"


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
    """Whether an :class:`Escalation` asked its second stage about this query."""
    return any(e.reason.startswith(GATE_ESCALATED) for e in estimates.values())


@dataclass(frozen=True, slots=True)
class _Gate:
    close: tuple[str, ...]
    lead: float


def _with_reason(estimate: Estimate, note: str) -> Estimate:
    reason = f"{note}; {estimate.reason}" if estimate.reason else note
    return estimate.model_copy(update={"reason": reason})


class Escalation:
    """Ask ``estimator`` only about queries whose top candidates are within ``margin`` of each other.

    Utilities are compared in correct-answer equivalents (:func:`normalized_utility`): with a margin of
    0.1, the first stage decides alone when the best candidate beats the runner-up by more than 0.1 in
    probability of a correct answer, net of the cost difference priced at the call's ``value_per_correct``.
    Otherwise ``estimator`` estimates every candidate within the margin of the best (candidates without any
    outcome among the retrieved anchors keep their first-stage estimate), and the other candidates keep theirs.

    Args:
        estimator: the second stage (SCOPE, or a :class:`~scope_shared.estimators.HybridEstimator`).
        margin: lead in correct-answer equivalents above which the second stage is not asked (default 0.1).
    """

    def __init__(self, estimator: Estimator, *, margin: float = DEFAULT_MARGIN) -> None:
        if not isinstance(estimator, Estimator):
            msg = f"estimator must be an Estimator, got {type(estimator).__name__}"
            raise ConfigError(msg)
        if margin < 0 or math.isnan(margin):
            msg = f"margin must be >= 0, got {margin}"
            raise ConfigError(msg)
        self.estimator = estimator
        self.margin = margin

    def __repr__(self) -> str:
        return f"Escalation(estimator={self.estimator!r}, margin={self.margin})"

    @property
    def name(self) -> str:
        return f"gated:{self.estimator.name}"

    def _gate(self, ctx: QueryContext, row: Mapping[str, Estimate], value: float | None) -> _Gate:
        utils = {m: normalized_utility(e, value) for m, e in row.items()}
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
        self, queries: Sequence[QueryContext], rows: Sequence[Mapping[str, Estimate]], value: float | None
    ) -> tuple[list[_Gate], dict[tuple[str, ...], list[int]]]:
        gates = [self._gate(ctx, row, value) for ctx, row in zip(queries, rows, strict=True)]
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
                    note = f"{GATE_ANCHORS} (no two candidates the second stage could compare)"
                out.append({m: _with_reason(e, note) for m, e in row.items()})
                continue
            note = (
                f"{GATE_ESCALATED} {len(g.close)} of {len(row)} candidates to {self.estimator.name} "
                f"(lead {g.lead:.3g} <= margin {self.margin:g})"
            )
            out.append({m: _with_reason(scoped[qi].get(m, e), note) for m, e in row.items()})
        return out

    def apply(
        self,
        queries: Sequence[QueryContext],
        rows: Sequence[Mapping[str, Estimate]],
        models: Sequence[ModelCard],
        value_per_correct: float | None,
    ) -> list[dict[str, Estimate]]:
        """The first stage's priced ``rows``, with the second stage's estimates where the choice is close."""
        gates, groups = self._plan(queries, rows, value_per_correct)
        cards = {c.name: c for c in models}
        answers = [
            self.estimator.estimate([queries[i] for i in indices], [cards[m] for m in close])
            for close, indices in groups.items()
        ]
        return self._merge(rows, gates, groups, answers)

    async def aapply(
        self,
        queries: Sequence[QueryContext],
        rows: Sequence[Mapping[str, Estimate]],
        models: Sequence[ModelCard],
        value_per_correct: float | None,
    ) -> list[dict[str, Estimate]]:
        """Async form of :meth:`apply`; the second-stage groups go out concurrently."""
        gates, groups = self._plan(queries, rows, value_per_correct)
        cards = {c.name: c for c in models}
        answers = await asyncio.gather(
            *(
                self.estimator.aestimate([queries[i] for i in indices], [cards[m] for m in close])
                for close, indices in groups.items()
            )
        )
        return self._merge(rows, gates, groups, answers)

    def close(self) -> None:
        self.estimator.close()
