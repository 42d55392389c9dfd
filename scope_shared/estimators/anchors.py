"""Anchor statistics: the embedded CPU default.

For each candidate model, take the retrieved anchors on which that model has an outcome (at most ``k``,
most similar first), weight each by ``max(similarity, 0) ** power``, and shrink the weighted mean toward
the model's overall record with ``prior_strength`` pseudo-anchors::

    p_correct = (sum_i w_i * correct_i + m * p_model) / (sum_i w_i + m)

Output length is the same shrunk mean in log space (``exp`` of mean ``log1p`` tokens, minus one), so a
few very long answers do not dominate. With few or dissimilar neighbours the estimate falls back toward
the model's overall accuracy instead of 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scope_shared.errors import ConfigError, NoAnchorDataError
from scope_shared.estimators.base import Estimator, ModelStats, Prediction, QueryContext
from scope_shared.types import DEFAULT_OUTPUT_TOKENS, AnchorEvidence

__all__ = ["AnchorStatsEstimator", "Prior"]


class Prior(ModelStats):
    """A documented prior for models without anchor outcomes: ``Prior(p_correct=0.5, output_tokens=256)``.

    Estimates made from it are marked degraded.
    """

    def __init__(self, *, p_correct: float = 0.5, output_tokens: float = DEFAULT_OUTPUT_TOKENS) -> None:
        if not 0.0 <= p_correct <= 1.0:
            msg = f"prior p_correct must be in [0, 1], got {p_correct}"
            raise ConfigError(msg)
        super().__init__(n=0, p_correct=p_correct, mean_log_tokens=math.log1p(output_tokens), n_tokens=0)


class AnchorStatsEstimator(Estimator):
    """Similarity-weighted, shrunk statistics of each model's outcomes on the nearest anchors.

    Args:
        k: anchors per model to use (among those the store retrieved).
        power: similarity weight exponent (``w = max(sim, 0) ** power``).
        prior_strength: pseudo-anchors of the model's overall record mixed into every estimate.
        prior: used for models with no outcome on any anchor; without it those models raise
            :class:`NoAnchorDataError`.
        evidence: anchors kept per estimate as evidence (most similar first).
    """

    name = "anchors"

    def __init__(
        self,
        *,
        k: int = 10,
        power: float = 2.0,
        prior_strength: float = 1.0,
        prior: Prior | None = None,
        evidence: int = 5,
    ) -> None:
        if k < 1:
            msg = f"k must be >= 1, got {k}"
            raise ConfigError(msg)
        if power < 0 or prior_strength < 0:
            msg = f"power and prior_strength must be >= 0, got {power} and {prior_strength}"
            raise ConfigError(msg)
        self.k = k
        self.power = power
        self.prior_strength = prior_strength
        self.prior = prior
        self.evidence = evidence

    @property
    def anchors_per_model(self) -> int | None:
        return self.k

    def _predict(
        self, queries: Sequence[QueryContext], models: Sequence[str]
    ) -> list[dict[str, Prediction]]:
        return [{m: self._one(ctx, m) for m in models} for ctx in queries]

    def _one(self, ctx: QueryContext, model: str) -> Prediction:
        stats = ctx.stats.get(model)
        degraded, reason = False, ""
        if stats is None or stats.n == 0:
            if self.prior is None:
                msg = (
                    f"model {model!r} has no recorded outcome on any anchor; add some "
                    "(AnchorStore.add / engine.record) or pass AnchorStatsEstimator(prior=Prior(...))"
                )
                raise NoAnchorDataError(msg)
            stats, degraded, reason = self.prior, True, f"no anchor outcomes for {model!r}; used the prior"
        m = self.prior_strength
        w_sum = wc_sum = 0.0
        wt_sum = wlt_sum = 0.0
        used: list[AnchorEvidence] = []
        n_used = 0
        for anchor in ctx.anchors:
            if n_used >= self.k:
                break
            out = anchor.outcomes.get(model)
            if out is None:
                continue
            n_used += 1
            w = max(anchor.similarity, 0.0) ** self.power
            w_sum += w
            wc_sum += w * out.correct
            if out.output_tokens is not None:
                wt_sum += w
                wlt_sum += w * math.log1p(out.output_tokens)
            if len(used) < self.evidence:
                used.append(
                    AnchorEvidence(  # validated: pydantic-core builds it faster than model_construct does
                        anchor_id=anchor.anchor_id,
                        similarity=anchor.similarity,
                        correct=out.correct,
                        output_tokens=out.output_tokens,
                    )
                )
        p = (wc_sum + m * stats.p_correct) / (w_sum + m) if (w_sum + m) > 0 else stats.p_correct
        prior_lt = stats.mean_log_tokens
        if prior_lt is None:
            prior_lt = math.log1p(DEFAULT_OUTPUT_TOKENS)
        lt = (wlt_sum + m * prior_lt) / (wt_sum + m) if (wt_sum + m) > 0 else prior_lt
        # Effective sample size of the weighted mean gives a standard error for the utility.
        n_eff = w_sum + m
        p_std = math.sqrt(max(p * (1 - p), 1e-9) / max(n_eff, 1e-9))
        return Prediction(
            p_correct=p,
            output_tokens=math.expm1(lt),
            evidence=tuple(used),
            p_std=p_std,
            degraded=degraded,
            reason=reason,
        )
