"""Routing a model before it has any recorded outcome: an explicit prior, until it is profiled.

``ScopeEngine(priors={"gpt-4o": Prior(p_correct=0.85, output_tokens=400), "my-llama": "mixtral-8x7b"})``: a
candidate with no outcome in the store is estimated from its prior instead of by the estimator - a stated
accuracy and length (:class:`~scope_shared.estimators.Prior`), or the per-query estimate of a similar model
named by a string (priced at the new model's own prices). Each such estimate, and each decision that
considers it, is marked degraded with the reason. Once the model has outcomes (``scope-router profile``, or
``engine.record``), its prior is no longer used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scope_shared.errors import ConfigError, UnknownModelError
from scope_shared.estimators.anchors import Prior
from scope_shared.estimators.base import QueryContext
from scope_shared.types import Estimate, ModelCard

__all__ = ["ModelPriors", "PriorPlan"]


@dataclass(frozen=True, slots=True)
class PriorPlan:
    """For one estimation: the cards the estimator is asked about, and how to fill in the unprofiled ones."""

    cards: list[ModelCard]
    candidates: list[ModelCard]
    unprofiled: dict[str, Prior | str]

    def finish(
        self, ctxs: Sequence[QueryContext], rows: Sequence[Mapping[str, Estimate]]
    ) -> list[dict[str, Estimate]]:
        """Each query's estimates for the candidates, the unprofiled ones made from their priors."""
        out: list[dict[str, Estimate]] = []
        for ctx, row in zip(ctxs, rows, strict=True):
            done: dict[str, Estimate] = {}
            for card in self.candidates:
                prior = self.unprofiled.get(card.name)
                done[card.name] = row[card.name] if prior is None else _from_prior(card, prior, ctx, row)
            out.append(done)
        return out


def _from_prior(card: ModelCard, prior: Prior | str, ctx: QueryContext, row: Mapping[str, Estimate]) -> Estimate:
    how = "profile it (scope-router profile) to estimate it from its own outcomes"
    if isinstance(prior, str):
        like = row[prior]
        return like.model_copy(
            update={
                "model": card.name,
                "cost": card.cost(like.input_tokens, like.output_tokens),
                "estimator": f"like:{prior}",
                "evidence": (),
                "degraded": True,
                "reason": f"{card.name} has no recorded outcome yet: estimated as {prior} is; {how}",
            }
        )
    tokens = math.expm1(prior.mean_log_tokens) if prior.mean_log_tokens is not None else 0.0
    return Estimate(
        model=card.name,
        p_correct=prior.p_correct,
        output_tokens=tokens,
        input_tokens=ctx.input_tokens,
        cost=card.cost(ctx.input_tokens, tokens),
        estimator="prior",
        degraded=True,
        reason=f"{card.name} has no recorded outcome yet: stated prior p_correct={prior.p_correct:g}; {how}",
    )


class ModelPriors:
    """The engine's priors for models without outcomes, checked against its model cards."""

    def __init__(self, priors: Mapping[str, Prior | str] | None, cards: Mapping[str, ModelCard]) -> None:
        self._priors = dict(priors or {})
        self._cards = cards
        for name, prior in self._priors.items():
            if name not in cards:
                msg = f"priors names {name!r}, not a model of the engine; known: {sorted(cards)}"
                raise UnknownModelError(msg)
            if isinstance(prior, str):
                if prior not in cards or prior == name:
                    msg = f"priors[{name!r}] = {prior!r}: name another model of the engine; known: {sorted(cards)}"
                    raise UnknownModelError(msg)
                if isinstance(self._priors.get(prior), str):
                    msg = f"priors[{name!r}] = {prior!r}, which has a like-prior itself; name a model with outcomes"
                    raise ConfigError(msg)
            elif not isinstance(prior, Prior):
                msg = f"priors[{name!r}] must be a Prior(...) or a model name, got {type(prior).__name__}"
                raise ConfigError(msg)

    def __bool__(self) -> bool:
        return bool(self._priors)

    def plan(self, ctxs: Sequence[QueryContext], candidates: Sequence[ModelCard]) -> PriorPlan:
        """Which candidates go to the estimator, which are filled in from priors (no outcome in the store yet)."""
        stats = ctxs[0].stats if ctxs else {}
        unprofiled = {
            c.name: self._priors[c.name]
            for c in candidates
            if c.name in self._priors and (c.name not in stats or stats[c.name].n == 0)
        }
        asked = [c for c in candidates if c.name not in unprofiled]
        for prior in unprofiled.values():
            if isinstance(prior, str) and all(c.name != prior for c in asked):
                asked.append(self._cards[prior])
        return PriorPlan(cards=asked, candidates=list(candidates), unprofiled=unprofiled)
