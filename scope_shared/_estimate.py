"""The estimation stage of :class:`~scope_shared.engine.ScopeEngine`: queries -> anchor contexts -> each
candidate's priced estimates.

:class:`Estimation` embeds and retrieves from the anchor store (while the store is down, and for
``store_retry_s`` after each failure, from each model's last known record, marked degraded), runs the estimator
(its fallback while it is unavailable), fills in the models without outcomes from their priors, and applies the
escalation. The engine builds on it with the decisions, the budget and the recording. Private: adapters ask the
engine.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from scope_shared._decide import join
from scope_shared.errors import ConfigError, EstimatorUnavailableError, StoreUnavailableError
from scope_shared.escalation import Escalation
from scope_shared.estimators.anchors import AnchorStatsEstimator, Prior
from scope_shared.estimators.base import Estimator, QueryContext, most_anchors
from scope_shared.estimators.learned import LearnedEstimator
from scope_shared.priors import ModelPriors
from scope_shared.store import AnchorStore
from scope_shared.types import Estimate, ModelCard, ModelStats, RouteOptions

logger = logging.getLogger(__name__)

#: Characters of a query used for retrieval and estimation; longer queries are truncated (the default
#: embedder reads at most 256 word pieces anyway). Costs still use the full length.
MAX_QUERY_CHARS = 8000


class Estimation:
    """The engine's estimation stage; see the module docstring, and :class:`ScopeEngine` for the arguments
    (checked here, before any estimator is built)."""

    def __init__(
        self,
        *,
        store: AnchorStore,
        models: dict[str, ModelCard],
        priors: Mapping[str, Prior | str] | None,
        estimator: Estimator | None,
        fallback: Estimator | None,
        escalation: Escalation | None,
        k: int,
        on_store_down: str,
        store_retry_s: float,
    ) -> None:
        if k < 1:
            msg = f"k must be >= 1, got {k}"
            raise ConfigError(msg)
        if on_store_down not in ("degrade", "raise"):
            msg = f"on_store_down must be 'degrade' or 'raise', got {on_store_down!r}"
            raise ConfigError(msg)
        if not 0.0 <= store_retry_s < math.inf:
            msg = f"store_retry_s must be >= 0 seconds, got {store_retry_s}"
            raise ConfigError(msg)
        if escalation is not None and not isinstance(escalation, Escalation):
            msg = f"escalation must be an Escalation, got {type(escalation).__name__}"
            raise ConfigError(msg)
        self._store = store
        self.models = models
        self._priors = ModelPriors(priors, models)
        self.estimator = estimator or LearnedEstimator(k=k)
        if fallback is None and not isinstance(self.estimator, AnchorStatsEstimator):
            fallback = AnchorStatsEstimator(k=k)
        self.fallback = fallback
        self.escalation = escalation
        self.estimator.bind(store)
        if fallback is not None:
            fallback.bind(store)
        if escalation is not None:
            escalation.estimator.bind(store)
        self.k = k
        self.on_store_down = on_store_down
        self._last_stats: Mapping[str, ModelStats] | None = None
        self._fallback_warned_at = -math.inf
        self.store_retry_s = store_retry_s
        self._store_down: tuple[float, StoreUnavailableError] | None = None

    def contexts(
        self, queries: Sequence[str], *, input_tokens: Sequence[float | None] | None = None
    ) -> tuple[list[QueryContext], str]:
        """Embed and retrieve for each query; returns the contexts and a degradation reason ('' if none)."""
        texts = [_clean_query(q) for q in queries]
        tokens = list(input_tokens) if input_tokens is not None else [None] * len(texts)
        if len(tokens) != len(texts):
            msg = f"{len(tokens)} input_tokens values for {len(texts)} queries"
            raise ConfigError(msg)
        reason = ""
        try:
            if self._store_down is not None and time.monotonic() < self._store_down[0]:
                raise self._store_down[1]  # failed moments ago: don't make every caller wait out a timeout
            stats: Mapping[str, ModelStats] = self._store.model_stats()
            if not stats:
                self._store.require_anchors()  # says the store is empty
            version = self._store.version  # from the cached statistics: no round trip
            self._last_stats = stats
            vectors = self._store.embed([t[:MAX_QUERY_CHARS] for t in texts])
            anchors = self._store.query(vectors, k=self._retrieve_k(), fill=self._fill(), models=self.models)
            embeddings: list[Any] = list(vectors)
            self._store_down = None
        except StoreUnavailableError as exc:
            if self._store_down is None or self._store_down[1] is not exc:
                self._store_down = (time.monotonic() + self.store_retry_s, exc)
            if self.on_store_down == "raise" or self._last_stats is None:
                raise
            reason = f"anchor store unavailable ({exc}); estimated from each model's last known record"
            logger.warning("routing degraded: %s", reason)
            stats, anchors, version = self._last_stats, [() for _ in texts], "degraded"
            embeddings = [None] * len(texts)
        ctxs = [
            QueryContext(
                query=t,
                input_tokens=float(n) if n is not None else self._store.estimate_input_tokens(t),
                anchors=a,
                stats=stats,
                anchor_version=version,
                embedding=e,
            )
            for t, n, a, e in zip(texts, tokens, anchors, embeddings, strict=True)
        ]
        return ctxs, reason

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the estimators' start-up (the learned one loads or fits in the background); True if ready.

        Until it is ready, decisions come from the fallback estimator and are marked degraded.
        """
        stages = [self.estimator] + ([self.escalation.estimator] if self.escalation is not None else [])
        return all(stage.wait_ready(timeout) for stage in stages)

    def _retrieve_k(self) -> int:
        # Several models may lack outcomes on some anchors: retrieve more than k so each gets ~k.
        return self.k * 3

    def _fill(self) -> int | None:
        # Records are read until every candidate has as many outcomes as the estimators use (None: all).
        stages = [self.estimator] + ([self.escalation.estimator] if self.escalation is not None else [])
        return most_anchors(*stages)

    def _fallback_or_raise(self, exc: EstimatorUnavailableError) -> Estimator:
        if self.fallback is None:
            raise exc
        now = time.monotonic()
        # said at WARNING once a minute: at high traffic an outage would otherwise log a line per decision
        level = logging.WARNING if now - self._fallback_warned_at >= 60.0 else logging.DEBUG
        if level == logging.WARNING:
            self._fallback_warned_at = now
        name, fallback = self.estimator.name, self.fallback.name
        logger.log(level, "estimator %s unavailable (%s); falling back to %s", name, exc, fallback)
        return self.fallback

    def _price(self, ctxs: list[QueryContext], s: RouteOptions, reason: str) -> tuple[list[dict[str, Estimate]], str]:
        """Estimates for every context and candidate of the resolved options ``s``, and the degradation reason."""
        plan = self._priors.plan(ctxs, [self.models[n] for n in s.candidates or ()])
        try:
            rows = self.estimator.estimate(ctxs, plan.cards) if plan.cards else [{} for _ in ctxs]
        except EstimatorUnavailableError as exc:
            rows = self._fallback_or_raise(exc).estimate(ctxs, plan.cards)
            return plan.finish(ctxs, rows), join(reason, f"estimator unavailable: {exc}")
        rows = plan.finish(ctxs, rows)
        if self.escalation is None:
            return rows, reason
        try:
            return self.escalation.apply(ctxs, rows, plan.candidates, s.value_per_correct), reason
        except EstimatorUnavailableError as exc:
            logger.warning("escalation to %s unavailable (%s); first-stage estimates kept", self.escalation.name, exc)
            return rows, join(reason, f"escalation unavailable: {exc}")

    async def _aprice(
        self, ctxs: list[QueryContext], s: RouteOptions, reason: str
    ) -> tuple[list[dict[str, Estimate]], str]:
        """Async form of :meth:`_price`."""
        plan = self._priors.plan(ctxs, [self.models[n] for n in s.candidates or ()])
        try:
            rows = await self.estimator.aestimate(ctxs, plan.cards) if plan.cards else [{} for _ in ctxs]
        except EstimatorUnavailableError as exc:
            rows = await self._fallback_or_raise(exc).aestimate(ctxs, plan.cards)
            return plan.finish(ctxs, rows), join(reason, f"estimator unavailable: {exc}")
        rows = plan.finish(ctxs, rows)
        if self.escalation is None:
            return rows, reason
        try:
            return await self.escalation.aapply(ctxs, rows, plan.candidates, s.value_per_correct), reason
        except EstimatorUnavailableError as exc:
            logger.warning("escalation to %s unavailable (%s); first-stage estimates kept", self.escalation.name, exc)
            return rows, join(reason, f"escalation unavailable: {exc}")


def _clean_query(query: Any) -> str:
    if isinstance(query, bytes | bytearray):
        msg = "query is bytes; decode it to str first (e.g. data.decode('utf-8', errors='replace'))"
        raise ConfigError(msg)
    if not isinstance(query, str):
        msg = f"query must be a str, got {type(query).__name__}"
        raise ConfigError(msg)
    if not query.strip():
        msg = "query is empty or whitespace; nothing to route"
        raise ConfigError(msg)
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: route on the readable text
        return query.encode("utf-8", "replace").decode("utf-8")
    return query
