"""The routing engine: store -> estimator -> policy, and outcomes back into the store.

Adapters talk to the engine only: they route (:meth:`ScopeEngine.route` and its batch and async forms, with
:class:`~scope_shared.types.RouteOptions`), settle, release, record, and use the small facades here
(:meth:`~ScopeEngine.estimate_tokens`, :meth:`~ScopeEngine.reserve_next`, :meth:`~ScopeEngine.charge`);
they never reach the store or the ledger. ``route()`` and ``aroute()`` share the pure helpers below, so
their bodies differ only by ``await``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scope_shared.budget import Budget, BudgetLedger
from scope_shared.errors import (
    BudgetExceededError,
    ConfigError,
    EstimatorUnavailableError,
    StoreUnavailableError,
    UnknownModelError,
)
from scope_shared.escalation import Escalation
from scope_shared.estimators.anchors import AnchorStatsEstimator, Prior
from scope_shared.estimators.base import Estimator, QueryContext, most_anchors
from scope_shared.estimators.learned import LearnedEstimator
from scope_shared.policy import OnNoFit, choose
from scope_shared.priors import ModelPriors
from scope_shared.recorder import Recorder
from scope_shared.store import AnchorStore
from scope_shared.types import Decision, Estimate, ModelCard, ModelStats, Outcome, RouteOptions

__all__ = ["MAX_QUERY_CHARS", "ScopeEngine"]

logger = logging.getLogger(__name__)

#: Characters of a query used for retrieval and estimation; longer queries are truncated (the default
#: embedder reads at most 256 word pieces anyway). Costs still use the full length.
MAX_QUERY_CHARS = 8000

Options = RouteOptions | Mapping[str, Any] | None


class ScopeEngine:
    """Routes each query to the candidate model with the best expected utility under the cost limits.

    Args:
        store: the anchor store.
        models: the candidate models and their prices.
        estimator: an :class:`Estimator`; defaults to :class:`LearnedEstimator` (the best measured; see
            docs/estimators.md), with :class:`AnchorStatsEstimator` as its fallback.
        fallback: used when ``estimator`` raises :class:`EstimatorUnavailableError` (decisions are then
            marked degraded); defaults to anchor statistics when the estimator is something else.
        escalation: a second, costlier estimation stage applied after pricing to queries whose best
            candidates are close (:class:`~scope_shared.escalation.Escalation`, e.g. SCOPE on vLLM).
        k: anchors retrieved per query.
        value_per_correct: USD a correct answer is worth (see :mod:`scope_shared.policy`); None = accuracy.
            The default of every call whose :class:`RouteOptions` leave it unset.
        max_cost_per_call: candidates whose expected cost exceeds this (USD) are excluded (the default of
            every call whose options leave it unset).
        budget: a :class:`Budget` or a shared :class:`BudgetLedger`.
        on_no_fit: ``"raise"`` (:class:`BudgetExceededError`) or ``"cheapest"`` (degraded decision) when no
            candidate fits the limits.
        on_store_down: ``"degrade"`` routes on the last known model statistics when the store is
            unreachable (decision marked degraded); ``"raise"`` fails fast.
        reserve_factor: reservations hold ``expected cost x reserve_factor`` (>= 1 leaves headroom for
            calls longer than expected).
        write_behind: seconds a recorded outcome may wait before it is written (default 0.5; 0: ``record``
            writes at once). Above 0, ``record`` settles the budget and returns; a background thread writes
            what was recorded in one batch at most this long after the first outcome queued, so a routed call's
            outcome is visible to decisions up to that long after it is recorded (:meth:`flush` at once). Writing the
            outcome of a call costs one Chroma write (20-40 ms at 100k anchors), which the LangChain and
            LlamaIndex handlers otherwise pay in the call's own thread. :meth:`flush` writes at once;
            :meth:`close` (also run at interpreter exit, and on SIGTERM when the program has no handler of its
            own) writes what is left and stops the thread.
        priors: for models with no recorded outcome yet (a new model not profiled), a
            :class:`~scope_shared.estimators.Prior` (stated accuracy and length) or the name of a similar model
            whose per-query estimate stands in; those estimates and decisions are marked degraded. Used until
            the model has outcomes (:mod:`scope_shared.priors`).
        store_retry_s: after the store failed (down, or no answer within its timeout), decisions for this many
            seconds skip it and degrade at once instead of each waiting out the timeout.
        unsent: a file for recorded outcomes still unwritten when the process exits (the store was down):
            the next engine over the same store replays it. ``"auto"``: one per store under
            ``$XDG_STATE_HOME/scope-router/unsent/`` (none for an in-memory store); None: such outcomes are
            logged as lost.
    """

    def __init__(
        self,
        *,
        store: AnchorStore,
        models: Sequence[ModelCard],
        estimator: Estimator | None = None,
        fallback: Estimator | None = None,
        escalation: Escalation | None = None,
        k: int = 10,
        value_per_correct: float | None = None,
        max_cost_per_call: float | None = None,
        budget: Budget | BudgetLedger | None = None,
        on_no_fit: OnNoFit = "raise",
        on_store_down: str = "degrade",
        reserve_factor: float = 1.0,
        write_behind: float = 0.5,
        unsent: str | Path | None = "auto",
        store_retry_s: float = 5.0,
        priors: Mapping[str, Prior | str] | None = None,
    ) -> None:
        cards = list(models)
        if not cards:
            msg = "models is empty; pass the candidate ModelCards"
            raise ConfigError(msg)
        names = [c.name for c in cards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f"duplicate model names: {dupes}"
            raise ConfigError(msg)
        if k < 1:
            msg = f"k must be >= 1, got {k}"
            raise ConfigError(msg)
        if on_no_fit not in ("raise", "cheapest"):
            msg = f"on_no_fit must be 'raise' or 'cheapest', got {on_no_fit!r}"
            raise ConfigError(msg)
        if on_store_down not in ("degrade", "raise"):
            msg = f"on_store_down must be 'degrade' or 'raise', got {on_store_down!r}"
            raise ConfigError(msg)
        if not reserve_factor >= 1.0:
            msg = f"reserve_factor must be >= 1, got {reserve_factor}"
            raise ConfigError(msg)
        if not 0.0 <= store_retry_s < math.inf:
            msg = f"store_retry_s must be >= 0 seconds, got {store_retry_s}"
            raise ConfigError(msg)
        if not 0.0 <= write_behind < math.inf:
            msg = f"write_behind must be >= 0 seconds, got {write_behind}"
            raise ConfigError(msg)
        if escalation is not None and not isinstance(escalation, Escalation):
            msg = f"escalation must be an Escalation, got {type(escalation).__name__}"
            raise ConfigError(msg)
        self._defaults = RouteOptions.of(value_per_correct=value_per_correct, max_cost_per_call=max_cost_per_call)
        self._store = store
        self.models: dict[str, ModelCard] = {c.name: c for c in cards}
        self._priors = ModelPriors(priors, self.models)
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
        self._ledger = BudgetLedger(budget) if isinstance(budget, Budget) else budget
        self.on_no_fit: OnNoFit = on_no_fit
        self.on_store_down = on_store_down
        self.reserve_factor = reserve_factor
        self._recorder = Recorder(self._write, write_behind=write_behind, unsent=_unsent_path(unsent, store))
        self._last_stats: Mapping[str, ModelStats] | None = None
        self._fallback_warned_at = -math.inf
        self.store_retry_s = store_retry_s
        self._store_down: tuple[float, StoreUnavailableError] | None = None
        self._settled_blind: set[str] = set()  # models whose usage-less outcomes were settled (logged once)

    def __repr__(self) -> str:
        return (
            f"ScopeEngine(models={list(self.models)}, estimator={self.estimator.name!r}, "
            f"store={self._store!r}, budget={self._ledger.budget if self._ledger else None})"
        )

    # -- settings and read-only views ----------------------------------------------------------

    @property
    def options(self) -> RouteOptions:
        """The engine's default route options (``value_per_correct`` and ``max_cost_per_call`` set)."""
        return self._defaults

    @property
    def value_per_correct(self) -> float | None:
        """The default trade-off: USD a correct answer is worth (None: accuracy only)."""
        return self._defaults.value_per_correct

    @property
    def max_cost_per_call(self) -> float | None:
        """The default per-call cap in USD (None: none)."""
        return self._defaults.max_cost_per_call

    @property
    def write_behind(self) -> float:
        return self._recorder.write_behind

    @property
    def store(self) -> AnchorStore:
        """The anchor store, for inspection (adapters ask the engine instead: see the module doc)."""
        return self._store

    @property
    def ledger(self) -> BudgetLedger | None:
        """The budget ledger (None without a budget), for inspection; spend goes through the engine."""
        return self._ledger

    def _resolve(self, options: Options, candidates: Sequence[str] | None = None) -> RouteOptions:
        """``options`` over the engine's defaults, every field set; model names checked."""
        resolved = self._defaults.merged(options)
        if candidates is not None:
            resolved = resolved.merged(RouteOptions(candidates=tuple(candidates)))
        names = resolved.candidates if resolved.candidates is not None else tuple(self.models)
        for name in (*names, *([resolved.force_model] if resolved.force_model else [])):
            self.card(name)
        return resolved.merged(RouteOptions(candidates=names))

    def card(self, name: str) -> ModelCard:
        """The model card of ``name``; :class:`UnknownModelError` with the known names otherwise."""
        try:
            return self.models[name]
        except KeyError:
            msg = f"unknown model {name!r}; known: {sorted(self.models)}"
            raise UnknownModelError(msg) from None

    # -- facades for adapters ------------------------------------------------------------------

    def estimate_tokens(self, text: str) -> float:
        """Tokens of ``text`` from the anchors' recorded tokens-per-character ratio (0 for no text)."""
        return self._store.estimate_input_tokens(text) if text else 0.0

    def cost_of(self, model: str, *, input_tokens: float, output_tokens: float) -> float:
        """Real USD cost of a call of ``model``."""
        return self.card(model).cost(input_tokens, output_tokens)

    @property
    def remaining_budget(self) -> float | None:
        """What a new reservation may still take (None without a budget)."""
        return self._ledger.remaining if self._ledger is not None else None

    def reserve_next(self, decision: Decision, model: str, *, reason: str = "") -> Decision | None:
        """``decision`` for another of its candidates, ``model``, with that model's expected cost reserved.

        For a caller that runs more than the chosen model (a top-n selection): returns None when the
        reservation does not fit the budget. Without a budget nothing is reserved.
        """
        est = decision.estimates[model]
        res = None
        if self._ledger is not None:
            res = self._ledger.try_reserve(est.cost * self.reserve_factor, model=model)
            if res is None:
                return None
        return decision.switched(
            model, reason=reason, reservation_id=res.id if res else None, reserved=res.amount if res else 0.0
        )

    def charge(self, model: str, *, input_tokens: float, output_tokens: float) -> float:
        """Count a call that had no reservation of its own against the budget; returns its USD cost."""
        cost = self.cost_of(model, input_tokens=input_tokens, output_tokens=output_tokens)
        if self._ledger is not None:
            self._ledger.charge(cost)
        return cost

    # -- estimation ----------------------------------------------------------------------------

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

    def estimate(
        self,
        queries: Sequence[str],
        *,
        input_tokens: Sequence[float | None] | None = None,
        options: Options = None,
    ) -> tuple[list[dict[str, Estimate]], str]:
        """Estimates for every query and candidate; returns them and a degradation reason ('' if none)."""
        s = self._resolve(options)
        ctxs, reason = self.contexts(queries, input_tokens=input_tokens)
        plan = self._priors.plan(ctxs, [self.models[n] for n in s.candidates or ()])
        try:
            rows = self.estimator.estimate(ctxs, plan.cards) if plan.cards else [{} for _ in ctxs]
        except EstimatorUnavailableError as exc:
            rows = self._fallback_or_raise(exc).estimate(ctxs, plan.cards)
            return plan.finish(ctxs, rows), _join(reason, f"estimator unavailable: {exc}")
        rows = plan.finish(ctxs, rows)
        if self.escalation is None:
            return rows, reason
        try:
            return self.escalation.apply(ctxs, rows, plan.candidates, s.value_per_correct), reason
        except EstimatorUnavailableError as exc:
            logger.warning("escalation to %s unavailable (%s); first-stage estimates kept", self.escalation.name, exc)
            return rows, _join(reason, f"escalation unavailable: {exc}")

    async def aestimate(
        self,
        queries: Sequence[str],
        *,
        input_tokens: Sequence[float | None] | None = None,
        options: Options = None,
    ) -> tuple[list[dict[str, Estimate]], str]:
        """Async form of :meth:`estimate`."""
        s = self._resolve(options)
        ctxs, reason = await asyncio.to_thread(self.contexts, queries, input_tokens=input_tokens)
        plan = self._priors.plan(ctxs, [self.models[n] for n in s.candidates or ()])
        try:
            rows = await self.estimator.aestimate(ctxs, plan.cards) if plan.cards else [{} for _ in ctxs]
        except EstimatorUnavailableError as exc:
            rows = await self._fallback_or_raise(exc).aestimate(ctxs, plan.cards)
            return plan.finish(ctxs, rows), _join(reason, f"estimator unavailable: {exc}")
        rows = plan.finish(ctxs, rows)
        if self.escalation is None:
            return rows, reason
        try:
            return await self.escalation.aapply(ctxs, rows, plan.candidates, s.value_per_correct), reason
        except EstimatorUnavailableError as exc:
            logger.warning("escalation to %s unavailable (%s); first-stage estimates kept", self.escalation.name, exc)
            return rows, _join(reason, f"escalation unavailable: {exc}")

    # -- routing -------------------------------------------------------------------------------

    def route(self, query: str, *, input_tokens: float | None = None, options: Options = None) -> Decision:
        """Decide which model should answer ``query``.

        ``options`` (:class:`RouteOptions` or a mapping of its fields) override the engine's settings for
        this call. With a budget, the chosen model's expected cost is reserved until :meth:`settle`,
        :meth:`record` or :meth:`release` is called with the decision (``reserve=False`` only decides).
        """
        return self.route_batch([query], input_tokens=[input_tokens], options=options)[0]

    def route_batch(
        self,
        queries: Sequence[str],
        *,
        input_tokens: Sequence[float | None] | None = None,
        options: Options = None,
    ) -> list[Decision]:
        """Route several queries with one retrieval and one estimator call."""
        self._retry_unwritten()
        s = self._resolve(options)
        estimates, reason = self.estimate(queries, input_tokens=input_tokens, options=s)
        return self._decide_all(queries, estimates, s, reason)

    async def aroute(self, query: str, *, input_tokens: float | None = None, options: Options = None) -> Decision:
        """Async form of :meth:`route`."""
        decisions = await self.aroute_batch([query], input_tokens=[input_tokens], options=options)
        return decisions[0]

    async def aroute_batch(
        self,
        queries: Sequence[str],
        *,
        input_tokens: Sequence[float | None] | None = None,
        options: Options = None,
    ) -> list[Decision]:
        """Async form of :meth:`route_batch`."""
        if self._recorder.write_behind == 0 and self._recorder.pending:
            await asyncio.to_thread(self._retry_unwritten)
        s = self._resolve(options)
        estimates, reason = await self.aestimate(queries, input_tokens=input_tokens, options=s)
        return self._decide_all(queries, estimates, s, reason)

    def _decide_all(
        self, queries: Sequence[str], estimates: Sequence[dict[str, Estimate]], s: RouteOptions, reason: str
    ) -> list[Decision]:
        decisions: list[Decision] = []
        try:
            for q, e in zip(queries, estimates, strict=True):
                decisions.append(self._decide(q, e, s, reason))
        except BaseException:
            for d in decisions:  # a later query did not fit: hold nothing for a batch that fails
                self.release(d)
            raise
        return decisions

    def redecide(
        self, decision: Decision, *, exclude: Sequence[str] = (), options: Options = None, reason: str = ""
    ) -> Decision:
        """Choose again from ``decision``'s estimates, without retrieving or estimating again.

        For a fallback after the chosen model failed (``exclude`` it; release the old decision first), or
        to reserve, item by item, a batch routed with ``reserve=False``. The trade-off stays the decision's;
        ``options`` may set ``max_cost_per_call``, ``force_model`` and ``reserve``. ``reason`` is added to
        the new decision's reason.
        """
        left = {n: e for n, e in decision.estimates.items() if n not in set(exclude)}
        if not left:
            msg = f"every candidate is excluded ({sorted(exclude)}); nothing left to choose from"
            raise ConfigError(msg)
        s = self._resolve(options, candidates=tuple(left))
        s = s.merged(RouteOptions(value_per_correct=decision.value_per_correct))
        new = self._decide(decision.query, left, s, reason)
        if decision.degraded and not new.degraded:  # keep a degraded estimation visible
            new = new.model_copy(update={"degraded": True, "reason": _join(new.reason, decision.reason)})
        return new

    def _decide(self, query: str, estimates: dict[str, Estimate], s: RouteOptions, reason: str) -> Decision:
        degraded_est = [f"{n}: {e.reason}" for n, e in estimates.items() if e.degraded]
        reason = _join(reason, "; ".join(degraded_est))
        ledger = self._ledger if s.reserve else None
        if s.force_model is not None:
            est = estimates[s.force_model]
            res = None
            if ledger is not None:
                res = ledger.try_reserve(est.cost * self.reserve_factor, model=s.force_model)
                if res is None:
                    msg = (
                        f"forced model {s.force_model!r} (expected ${est.cost:.6g}) does not fit the "
                        f"remaining budget ${ledger.remaining:.6g}"
                    )
                    raise BudgetExceededError(msg)
            return Decision(
                model=s.force_model,
                query=query,
                estimates=estimates,
                utilities={},
                utility=float("nan"),
                value_per_correct=s.value_per_correct,
                degraded=bool(reason),
                reason=_join("forced by the caller", reason),
                reservation_id=res.id if res else None,
                reserved_cost=res.amount if res else 0.0,
            )
        for _ in range(8):  # a concurrent caller may take the budget between choosing and reserving
            remaining = ledger.remaining / self.reserve_factor if ledger is not None else None
            pick = choose(
                estimates,
                value_per_correct=s.value_per_correct,
                max_cost_per_call=s.max_cost_per_call,
                remaining_budget=remaining,
                on_no_fit=self.on_no_fit,
            )
            res = None
            if ledger is not None:
                amount = estimates[pick.model].cost * self.reserve_factor
                res = ledger.try_reserve(amount, model=pick.model, allow_over=not pick.fits)
                if res is None:
                    continue
            degraded = bool(reason) or not pick.fits
            if not pick.fits:
                logger.warning("routing degraded: %s", pick.reason)
            return Decision(
                model=pick.model,
                query=query,
                estimates=estimates,
                utilities=pick.utilities,
                utility=pick.utilities.get(pick.model, float("nan")),
                value_per_correct=s.value_per_correct,
                excluded=pick.excluded,
                degraded=degraded,
                reason=_join(pick.reason, reason),
                reservation_id=res.id if res else None,
                reserved_cost=res.amount if res else 0.0,
            )
        msg = "could not reserve budget after 8 attempts under contention"
        raise BudgetExceededError(msg)

    # -- settling and recording ----------------------------------------------------------------

    def settle(
        self,
        decision: Decision | str,
        *,
        model: str | None = None,
        input_tokens: float | None = None,
        output_tokens: float | None = None,
        cost: float | None = None,
    ) -> float | None:
        """Settle a decision's reservation with the real cost; returns the cost settled (None if nothing)."""
        rid = decision.reservation_id if isinstance(decision, Decision) else decision
        if self._ledger is None or rid is None:
            return None
        if cost is None:
            name = model or (decision.model if isinstance(decision, Decision) else None)
            if name is None or input_tokens is None or output_tokens is None:
                msg = "settle needs cost=, or model with input_tokens and output_tokens"
                raise ConfigError(msg)
            cost = self.cost_of(name, input_tokens=input_tokens, output_tokens=output_tokens)
        return cost if self._ledger.settle(rid, cost) else None

    def release(self, decision: Decision | str) -> bool:
        """Release a decision's reservation when its call never ran."""
        rid = decision.reservation_id if isinstance(decision, Decision) else decision
        if self._ledger is None or rid is None:
            return False
        return self._ledger.release(rid)

    def record(self, outcome: Outcome, *, decision: Decision | str | None = None) -> None:
        """Write a real outcome into the store (retried later if the store is down) and settle its cost.

        With ``decision`` (or its reservation id), its reservation is settled: at the real cost when the
        outcome carries both token counts, else at the expected cost (logged: the real spend is unknown). With
        ``write_behind`` above 0 the outcome is queued and written by a background thread.
        """
        self.card(outcome.model)
        if decision is not None:
            if outcome.input_tokens is not None and outcome.output_tokens is not None:
                self.settle(
                    decision,
                    model=outcome.model,
                    input_tokens=outcome.input_tokens,
                    output_tokens=outcome.output_tokens,
                )
            else:
                self._settle_expected(decision, outcome.model)
        self._recorder.put(outcome)

    def _settle_expected(self, decision: Decision | str, model: str) -> None:
        """Settle a reservation whose real usage is unknown at its expected cost, and say so."""
        if self._ledger is None:
            return
        expected: float | None
        if isinstance(decision, Decision):
            rid, expected = decision.reservation_id, decision.estimate.cost
        else:
            held = self._ledger.reservation(decision)
            rid, expected = decision, (held.amount / self.reserve_factor if held is not None else None)
        if rid is None or expected is None or not self._ledger.settle(rid, expected):
            return
        if model not in self._settled_blind:
            self._settled_blind.add(model)
            logger.warning(
                "outcome of %s recorded without token counts: its reservation is settled at the expected cost "
                "$%.6g (record input_tokens and output_tokens to count the real spend)",
                model,
                expected,
            )

    def _retry_unwritten(self) -> None:
        """Writing synchronously, outcomes kept while the store was down are retried before routing (with
        ``write_behind``, the writer thread retries them and routing never waits for a write)."""
        if self._recorder.write_behind == 0 and self._recorder.pending:
            self._recorder.flush()

    def _write(self, outcomes: Sequence[Outcome]) -> None:
        self._store.add(outcomes, progress=False)

    @property
    def pending(self) -> int:
        """Outcomes not written yet: queued by ``write_behind``, or kept while the store was down."""
        return self._recorder.pending

    def flush(self) -> int:
        """Write the outcomes not written yet, in one batch; returns how many were written.

        Of several outcomes of one model on one query, the last recorded is written. If the store is down
        they stay queued; if the store rejects them, the :class:`DataError` is raised and they are dropped,
        so they cannot block later outcomes.
        """
        return self._recorder.flush()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the estimators' start-up (the learned one loads or fits in the background); True if ready.

        Until it is ready, decisions come from the fallback estimator and are marked degraded.
        """
        stages = [self.estimator] + ([self.escalation.estimator] if self.escalation is not None else [])
        return all(stage.wait_ready(timeout) for stage in stages)

    def close(self) -> None:
        """Write what is queued and stop the write-behind thread (a later ``record`` writes at once)."""
        self._recorder.close()


def _unsent_path(unsent: str | Path | None, store: AnchorStore) -> Path | None:
    if unsent != "auto":
        return Path(unsent) if unsent is not None else None
    identity = store.identity
    if identity is None:
        return None
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "scope-router" / "unsent" / (hashlib.sha256(identity.encode()).hexdigest()[:24] + ".jsonl")


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


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
