"""The estimator seam: one small abstract method, with the glue that turns predictions into estimates.

An estimator receives, for each query, the anchors the store retrieved for it (each with every model's
recorded outcome) and each model's overall record, and predicts for every candidate model the probability
of a correct answer and the expected number of output tokens. The glue here prices the prediction.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from scope_shared.embeddings import Matrix
from scope_shared.types import (
    MAX_TOKENS,
    AnchorEvidence,
    AnchorOutcome,
    AnchorRecord,
    Estimate,
    ModelCard,
    ModelStats,
)

__all__ = [
    "AnchorOutcome",
    "AnchorRecord",
    "AnchorSource",
    "Estimator",
    "ModelStats",
    "Prediction",
    "QueryContext",
    "most_anchors",
]


@runtime_checkable
class AnchorSource(Protocol):
    """What an estimator that fits on the anchors may read from (and save with) them.

    :class:`~scope_shared.store.AnchorStore` is one; an estimator never needs to know which.
    """

    def count(self) -> int:
        """Number of anchors."""
        ...

    def export(self) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
        """Every anchor, its embedding (row-aligned) and its recorded input tokens (None if unknown)."""
        ...

    def sample(self, n: int, *, seed: int = 0) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
        """Like :meth:`export` for ``n`` anchors drawn at random."""
        ...

    def model_stats(self, *, refresh: bool = False) -> dict[str, ModelStats]:
        """Each model's overall record."""
        ...

    @property
    def tokens_per_char(self) -> float:
        """Input tokens per character over the anchors."""
        ...

    def save_state(self, key: str, value: str) -> None:
        """Keep a text with the anchors, for every process."""
        ...

    def load_state(self, key: str) -> str | None:
        """The text last saved under ``key``."""
        ...


@dataclass(frozen=True, slots=True)
class QueryContext:
    """One query to estimate, with what the store retrieved for it."""

    query: str
    input_tokens: float
    anchors: tuple[AnchorRecord, ...]
    stats: Mapping[str, ModelStats]
    anchor_version: str = ""
    embedding: Sequence[float] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Prediction:
    """An estimator's raw prediction for one (query, model) pair, before pricing."""

    p_correct: float
    output_tokens: float
    evidence: tuple[AnchorEvidence, ...] = ()
    p_std: float | None = None
    explanation: str | None = None
    samples: int | None = None
    unparsed_samples: int | None = None
    degraded: bool = False
    reason: str = ""
    estimator_tokens: int = 0


class Estimator(ABC):
    """Predicts correctness and output length for (query, model) pairs.

    Subclasses implement :meth:`_predict` (and :meth:`_apredict` when they have a native async path);
    :meth:`estimate` and :meth:`aestimate` validate, price and package the result.
    """

    name: str = "estimator"

    @property
    def anchors_per_model(self) -> int | None:
        """The most of each model's nearest anchor outcomes a prediction uses (None: it may use them all).

        The engine reads neighbour records only until every candidate has this many outcomes (see
        :meth:`AnchorStore.query`); an estimator that reads further down the list must return None.
        """
        return None

    @abstractmethod
    def _predict(
        self, queries: Sequence[QueryContext], models: Sequence[str]
    ) -> list[dict[str, Prediction]]:
        """Predict for every query and every model; one dict per query, keyed by model name."""

    async def _apredict(
        self, queries: Sequence[QueryContext], models: Sequence[str]
    ) -> list[dict[str, Prediction]]:
        return await asyncio.to_thread(self._predict, queries, models)

    def estimate(
        self, queries: Sequence[QueryContext], models: Sequence[ModelCard]
    ) -> list[dict[str, Estimate]]:
        """Estimate every (query, model) pair; one dict per query, keyed by model name."""
        if not queries:
            return []
        raw = self._predict(queries, [m.name for m in models])
        return _price(self.name, queries, models, raw)

    async def aestimate(
        self, queries: Sequence[QueryContext], models: Sequence[ModelCard]
    ) -> list[dict[str, Estimate]]:
        """Async form of :meth:`estimate`."""
        if not queries:
            return []
        raw = await self._apredict(queries, [m.name for m in models])
        return _price(self.name, queries, models, raw)

    def bind(self, source: AnchorSource) -> None:  # noqa: B027 - optional hook
        """Called by the engine with its anchors; estimators that fit on them keep it (default: ignored)."""

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for what :meth:`bind` started (a first fit); returns whether ready."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients the estimator holds."""


def most_anchors(*estimators: Estimator) -> int | None:
    """The most anchors per model any of ``estimators`` uses (None if one of them may use them all)."""
    counts = [e.anchors_per_model for e in estimators]
    return None if None in counts else max(c for c in counts if c is not None)


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def _price(
    name: str,
    queries: Sequence[QueryContext],
    models: Sequence[ModelCard],
    raw: Sequence[Mapping[str, Prediction]],
) -> list[dict[str, Estimate]]:
    if len(raw) != len(queries):
        msg = f"estimator {name!r} returned {len(raw)} results for {len(queries)} queries"
        raise RuntimeError(msg)
    out: list[dict[str, Estimate]] = []
    for ctx, per_model in zip(queries, raw, strict=True):
        row: dict[str, Estimate] = {}
        for card in models:
            pred = per_model[card.name]
            tokens = min(MAX_TOKENS, max(0.0, float(pred.output_tokens)))  # nan -> 0 too
            row[card.name] = Estimate(
                model=card.name,
                p_correct=_clip01(pred.p_correct),
                output_tokens=tokens,
                input_tokens=ctx.input_tokens,
                cost=card.cost(ctx.input_tokens, tokens),
                estimator=name,
                evidence=pred.evidence,
                p_std=pred.p_std,
                explanation=pred.explanation,
                samples=pred.samples,
                unparsed_samples=pred.unparsed_samples,
                degraded=pred.degraded,
                reason=pred.reason,
                estimator_tokens=pred.estimator_tokens,
            )
        out.append(row)
    return out
