"""Anchor statistics blended with SCOPE (:class:`HybridEstimator`).

The hybrid mixes the two predictions with a fixed weight on the anchor side. The authors' two-stage
routing (``scripts/two_stage_routing.py``) scores candidates with a Stage-I anchor weight of 0.3 scaled
by ``0.5 + 0.5 * alpha``, i.e. 0.15-0.3; the default here, 0.25, sits inside that range. Asking SCOPE only
where the choice is close is a routing step: :class:`~scope_shared.escalation.Escalation`.

SCOPE being unreachable is not handled here: :class:`EstimatorUnavailableError` propagates so that the
engine falls back to anchor statistics and marks the decision degraded.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence

from scope_shared.errors import ConfigError
from scope_shared.estimators.base import Estimator, Prediction, QueryContext, most_anchors

__all__ = ["DEFAULT_ANCHOR_WEIGHT", "HybridEstimator", "combine_predictions"]

#: Weight of anchor statistics in :class:`HybridEstimator` (the authors use 0.15-0.3).
DEFAULT_ANCHOR_WEIGHT = 0.25


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
        return most_anchors(self.anchors, self.scope)

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
