"""The routing engine: store -> estimator -> policy, and outcomes back into the store.

``route()`` and ``aroute()`` share the pure helpers below, so their bodies differ only by ``await``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scope_shared.errors import (
    BudgetExceededError,
    ConfigError,
    DataError,
    EstimatorUnavailableError,
    StoreUnavailableError,
    UnknownModelError,
)
from scope_shared.estimators.anchors import AnchorStatsEstimator
from scope_shared.estimators.base import Estimator, ModelStats, QueryContext
from scope_shared.estimators.learned import LearnedEstimator
from scope_shared.policy import Budget, BudgetLedger, OnNoFit, choose
from scope_shared.store import AnchorStore
from scope_shared.types import Decision, Estimate, ModelCard, Outcome

__all__ = ["ScopeEngine"]

logger = logging.getLogger(__name__)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()

#: Characters of a query used for retrieval and estimation; longer queries are truncated (the default
#: embedder reads at most 256 word pieces anyway). Costs still use the full length.
MAX_QUERY_CHARS = 8000


@dataclass(frozen=True, slots=True)
class _Settings:
    value_per_correct: float | None
    max_cost_per_call: float | None
    candidates: tuple[str, ...]
    force_model: str | None
    reserve: bool


class ScopeEngine:
    """Routes each query to the candidate model with the best expected utility under the cost limits.

    Args:
        store: the anchor store.
        models: the candidate models and their prices.
        estimator: an :class:`Estimator`; defaults to :class:`LearnedEstimator` (the best measured; see the
            README's estimator table), with :class:`AnchorStatsEstimator` as its fallback.
        fallback: used when ``estimator`` raises :class:`EstimatorUnavailableError` (decisions are then
            marked degraded); defaults to anchor statistics when the estimator is something else.
        k: anchors retrieved per query.
        value_per_correct: USD a correct answer is worth (see :mod:`scope_shared.policy`); None = accuracy.
        max_cost_per_call: candidates whose expected cost exceeds this (USD) are excluded.
        budget: a :class:`Budget` or a shared :class:`BudgetLedger`.
        on_no_fit: ``"raise"`` (:class:`BudgetExceededError`) or ``"cheapest"`` (degraded decision) when no
            candidate fits the limits.
        on_store_down: ``"degrade"`` routes on the last known model statistics when the store is
            unreachable (decision marked degraded); ``"raise"`` fails fast.
        reserve_factor: reservations hold ``expected cost x reserve_factor`` (>= 1 leaves headroom for
            calls longer than expected).
        write_behind: seconds a recorded outcome may wait before it is written (0, the default: ``record``
            writes at once). Above 0, ``record`` settles the budget and returns; a background thread writes
            what was recorded in one batch at most this long after the first outcome queued. Writing the
            outcome of a call costs one Chroma write (20-40 ms at 100k anchors), which the LangChain and
            LlamaIndex handlers otherwise pay in the call's own thread. :meth:`flush` writes at once;
            :meth:`close` (also run at interpreter exit) writes what is left and stops the thread.
    """

    def __init__(
        self,
        *,
        store: AnchorStore,
        models: Sequence[ModelCard],
        estimator: Estimator | None = None,
        fallback: Estimator | None = None,
        k: int = 10,
        value_per_correct: float | None = None,
        max_cost_per_call: float | None = None,
        budget: Budget | BudgetLedger | None = None,
        on_no_fit: OnNoFit = "raise",
        on_store_down: str = "degrade",
        reserve_factor: float = 1.0,
        write_behind: float = 0.0,
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
        if not 0.0 <= write_behind < math.inf:
            msg = f"write_behind must be >= 0 seconds, got {write_behind}"
            raise ConfigError(msg)
        _check_value(value_per_correct)
        _check_cost(max_cost_per_call)
        self.store = store
        self.models: dict[str, ModelCard] = {c.name: c for c in cards}
        self.estimator = estimator or LearnedEstimator(k=k)
        if fallback is None and not isinstance(self.estimator, AnchorStatsEstimator):
            fallback = AnchorStatsEstimator(k=k)
        self.fallback = fallback
        self.estimator.bind(store)
        if fallback is not None:
            fallback.bind(store)
        self.k = k
        self.value_per_correct = value_per_correct
        self.max_cost_per_call = max_cost_per_call
        self.ledger = BudgetLedger(budget) if isinstance(budget, Budget) else budget
        self.on_no_fit: OnNoFit = on_no_fit
        self.on_store_down = on_store_down
        self.reserve_factor = reserve_factor
        self.write_behind = write_behind
        self._pending: list[Outcome] = []
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time: batches land in recording order
        self._queued = threading.Event()
        self._writer: threading.Thread | None = None
        self._closing = threading.Event()
        self._last_stats: Mapping[str, ModelStats] | None = None

    def __repr__(self) -> str:
        return (
            f"ScopeEngine(models={list(self.models)}, estimator={self.estimator.name!r}, "
            f"store={self.store!r}, budget={self.ledger.budget if self.ledger else None})"
        )

    # -- settings ------------------------------------------------------------------------------

    def _settings(
        self,
        value_per_correct: Any,
        max_cost_per_call: Any,
        candidates: Sequence[str] | None,
        force_model: str | None,
        reserve: bool,
    ) -> _Settings:
        value = self.value_per_correct if value_per_correct is UNSET else value_per_correct
        cap = self.max_cost_per_call if max_cost_per_call is UNSET else max_cost_per_call
        _check_value(value)
        _check_cost(cap)
        names = tuple(candidates) if candidates is not None else tuple(self.models)
        if not names:
            msg = "candidates is empty"
            raise ConfigError(msg)
        for name in (*names, *([force_model] if force_model else [])):
            self.card(name)
        return _Settings(value, cap, names, force_model, reserve)

    def card(self, name: str) -> ModelCard:
        """The model card of ``name``; :class:`UnknownModelError` with the known names otherwise."""
        try:
            return self.models[name]
        except KeyError:
            msg = f"unknown model {name!r}; known: {sorted(self.models)}"
            raise UnknownModelError(msg) from None

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
            stats: Mapping[str, ModelStats] = self.store.model_stats()
            if not stats:
                self.store.require_anchors()  # says the store is empty
            version = self.store.version  # from the cached statistics: no round trip
            self._last_stats = stats
            vectors = self.store.embed([t[:MAX_QUERY_CHARS] for t in texts])
            anchors = self.store.query(vectors, k=self._retrieve_k(), fill=self._fill(), models=self.models)
            embeddings: list[Any] = list(vectors)
        except StoreUnavailableError as exc:
            if self.on_store_down == "raise" or self._last_stats is None:
                raise
            reason = f"anchor store unavailable ({exc}); estimated from each model's last known record"
            logger.warning("routing degraded: %s", reason)
            stats, anchors, version = self._last_stats, [() for _ in texts], "degraded"
            embeddings = [None] * len(texts)
        ctxs = [
            QueryContext(
                query=t,
                input_tokens=float(n) if n is not None else self.store.estimate_input_tokens(t),
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
        # Records are read until every candidate has as many outcomes as the estimator uses (None: all).
        return self.estimator.anchors_per_model

    def _with_value(self, ctxs: Sequence[QueryContext], value: float | None) -> list[QueryContext]:
        return [
            QueryContext(
                query=c.query,
                input_tokens=c.input_tokens,
                anchors=c.anchors,
                stats=c.stats,
                anchor_version=c.anchor_version,
                value_per_correct=value,
                embedding=c.embedding,
            )
            for c in ctxs
        ]

    def _fallback_or_raise(self, exc: EstimatorUnavailableError) -> Estimator:
        if self.fallback is None:
            raise exc
        logger.warning(
            "estimator %s unavailable (%s); falling back to %s", self.estimator.name, exc, self.fallback.name
        )
        return self.fallback

    def estimate(
        self,
        queries: Sequence[str],
        *,
        input_tokens: Sequence[float | None] | None = None,
        candidates: Sequence[str] | None = None,
        value_per_correct: Any = UNSET,
    ) -> tuple[list[dict[str, Estimate]], str]:
        """Estimates for every query and candidate; returns them and a degradation reason ('' if none)."""
        s = self._settings(value_per_correct, UNSET, candidates, None, False)
        ctxs, reason = self.contexts(queries, input_tokens=input_tokens)
        ctxs = self._with_value(ctxs, s.value_per_correct)
        cards = [self.models[n] for n in s.candidates]
        try:
            return self.estimator.estimate(ctxs, cards), reason
        except EstimatorUnavailableError as exc:
            est = self._fallback_or_raise(exc)
            return est.estimate(ctxs, cards), _join(reason, f"estimator unavailable: {exc}")

    async def aestimate(
        self,
        queries: Sequence[str],
        *,
        input_tokens: Sequence[float | None] | None = None,
        candidates: Sequence[str] | None = None,
        value_per_correct: Any = UNSET,
    ) -> tuple[list[dict[str, Estimate]], str]:
        """Async form of :meth:`estimate`."""
        s = self._settings(value_per_correct, UNSET, candidates, None, False)
        ctxs, reason = await asyncio.to_thread(self.contexts, queries, input_tokens=input_tokens)
        ctxs = self._with_value(ctxs, s.value_per_correct)
        cards = [self.models[n] for n in s.candidates]
        try:
            return await self.estimator.aestimate(ctxs, cards), reason
        except EstimatorUnavailableError as exc:
            est = self._fallback_or_raise(exc)
            return await est.aestimate(ctxs, cards), _join(reason, f"estimator unavailable: {exc}")

    # -- routing -------------------------------------------------------------------------------

    def route(
        self,
        query: str,
        *,
        input_tokens: float | None = None,
        value_per_correct: Any = UNSET,
        max_cost_per_call: Any = UNSET,
        candidates: Sequence[str] | None = None,
        force_model: str | None = None,
        reserve: bool = True,
    ) -> Decision:
        """Decide which model should answer ``query``.

        With a budget, the chosen model's expected cost is reserved until :meth:`settle`, :meth:`record`
        or :meth:`release` is called with the decision (``reserve=False`` only decides).
        """
        return self.route_batch(
            [query],
            input_tokens=[input_tokens],
            value_per_correct=value_per_correct,
            max_cost_per_call=max_cost_per_call,
            candidates=candidates,
            force_model=force_model,
            reserve=reserve,
        )[0]

    def route_batch(
        self,
        queries: Sequence[str],
        *,
        input_tokens: Sequence[float | None] | None = None,
        value_per_correct: Any = UNSET,
        max_cost_per_call: Any = UNSET,
        candidates: Sequence[str] | None = None,
        force_model: str | None = None,
        reserve: bool = True,
    ) -> list[Decision]:
        """Route several queries with one retrieval and one estimator call."""
        self.flush()
        s = self._settings(value_per_correct, max_cost_per_call, candidates, force_model, reserve)
        estimates, reason = self.estimate(
            queries, input_tokens=input_tokens, candidates=s.candidates, value_per_correct=s.value_per_correct
        )
        return self._decide_all(queries, estimates, s, reason)

    async def aroute(
        self,
        query: str,
        *,
        input_tokens: float | None = None,
        value_per_correct: Any = UNSET,
        max_cost_per_call: Any = UNSET,
        candidates: Sequence[str] | None = None,
        force_model: str | None = None,
        reserve: bool = True,
    ) -> Decision:
        """Async form of :meth:`route`."""
        decisions = await self.aroute_batch(
            [query],
            input_tokens=[input_tokens],
            value_per_correct=value_per_correct,
            max_cost_per_call=max_cost_per_call,
            candidates=candidates,
            force_model=force_model,
            reserve=reserve,
        )
        return decisions[0]

    async def aroute_batch(
        self,
        queries: Sequence[str],
        *,
        input_tokens: Sequence[float | None] | None = None,
        value_per_correct: Any = UNSET,
        max_cost_per_call: Any = UNSET,
        candidates: Sequence[str] | None = None,
        force_model: str | None = None,
        reserve: bool = True,
    ) -> list[Decision]:
        """Async form of :meth:`route_batch`."""
        await asyncio.to_thread(self.flush)
        s = self._settings(value_per_correct, max_cost_per_call, candidates, force_model, reserve)
        estimates, reason = await self.aestimate(
            queries, input_tokens=input_tokens, candidates=s.candidates, value_per_correct=s.value_per_correct
        )
        return self._decide_all(queries, estimates, s, reason)

    def _decide_all(
        self, queries: Sequence[str], estimates: Sequence[dict[str, Estimate]], s: _Settings, reason: str
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
        self,
        decision: Decision,
        *,
        exclude: Sequence[str] = (),
        max_cost_per_call: Any = UNSET,
        force_model: str | None = None,
        reserve: bool = True,
        reason: str = "",
    ) -> Decision:
        """Choose again from ``decision``'s estimates, without retrieving or estimating again.

        For a fallback after the chosen model failed (``exclude`` it; release the old decision first), or
        to reserve, item by item, a batch routed with ``reserve=False``. ``reason`` is added to the new
        decision's reason.
        """
        left = {n: e for n, e in decision.estimates.items() if n not in set(exclude)}
        if not left:
            msg = f"every candidate is excluded ({sorted(exclude)}); nothing left to choose from"
            raise ConfigError(msg)
        s = self._settings(decision.value_per_correct, max_cost_per_call, tuple(left), force_model, reserve)
        new = self._decide(decision.query, left, s, reason)
        if decision.degraded and not new.degraded:  # keep a degraded estimation visible
            new = new.model_copy(update={"degraded": True, "reason": _join(new.reason, decision.reason)})
        return new

    def _decide(self, query: str, estimates: dict[str, Estimate], s: _Settings, reason: str) -> Decision:
        degraded_est = [f"{n}: {e.reason}" for n, e in estimates.items() if e.degraded]
        reason = _join(reason, "; ".join(degraded_est))
        ledger = self.ledger if s.reserve else None
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

    def cost_of(self, model: str, *, input_tokens: float, output_tokens: float) -> float:
        """Real USD cost of a call of ``model``."""
        return self.card(model).cost(input_tokens, output_tokens)

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
        if self.ledger is None or rid is None:
            return None
        if cost is None:
            name = model or (decision.model if isinstance(decision, Decision) else None)
            if name is None or input_tokens is None or output_tokens is None:
                msg = "settle needs cost=, or model with input_tokens and output_tokens"
                raise ConfigError(msg)
            cost = self.cost_of(name, input_tokens=input_tokens, output_tokens=output_tokens)
        return cost if self.ledger.settle(rid, cost) else None

    def release(self, decision: Decision | str) -> bool:
        """Release a decision's reservation when its call never ran."""
        rid = decision.reservation_id if isinstance(decision, Decision) else decision
        if self.ledger is None or rid is None:
            return False
        return self.ledger.release(rid)

    def record(self, outcome: Outcome, *, decision: Decision | str | None = None) -> None:
        """Write a real outcome into the store (retried later if the store is down) and settle its cost.

        With ``write_behind`` above 0 the outcome is queued and written by a background thread.
        """
        self.card(outcome.model)
        if decision is not None and outcome.input_tokens is not None and outcome.output_tokens is not None:
            self.settle(
                decision,
                model=outcome.model,
                input_tokens=outcome.input_tokens,
                output_tokens=outcome.output_tokens,
            )
        with self._pending_lock:
            self._pending.append(outcome)
        if self.write_behind > 0 and not self._closing.is_set():
            self._start_writer()
            self._queued.set()
        else:
            self.flush()

    async def arecord(self, outcome: Outcome, *, decision: Decision | str | None = None) -> None:
        """Async form of :meth:`record`."""
        await asyncio.to_thread(self.record, outcome, decision=decision)

    @property
    def pending(self) -> int:
        """Outcomes not written yet: queued by ``write_behind``, or kept while the store was down."""
        with self._pending_lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write the outcomes not written yet, in one batch; returns how many were written.

        Of several outcomes of one model on one query, the last recorded is written (as writing them one by
        one would leave it). If the store is down they stay queued; if the store rejects them, the
        :class:`DataError` is raised and they are dropped, so they cannot block later outcomes.
        """
        with self._flush_lock:
            with self._pending_lock:
                taken = list(self._pending)
            if not taken:
                return 0
            batch = list({(o.query, o.model): o for o in taken}.values())
            try:
                self.store.add(batch, progress=False)
            except StoreUnavailableError as exc:
                logger.warning("anchor store unavailable; %d outcome(s) kept for retry: %s", len(taken), exc)
                return 0
            except DataError:
                with self._pending_lock:
                    del self._pending[: len(taken)]
                raise
            with self._pending_lock:
                del self._pending[: len(taken)]  # only flush removes, under _flush_lock: these are the first
            return len(taken)

    def close(self) -> None:
        """Write what is queued and stop the write-behind thread (a later ``record`` writes at once)."""
        self._closing.set()
        self._queued.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=max(5.0, 2 * self.write_behind))
        self.flush()

    def _start_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        with self._pending_lock:
            if self._writer is not None and self._writer.is_alive():
                return
            ref = weakref.ref(self)
            self._writer = threading.Thread(target=_write_loop, args=(ref, self._queued), daemon=True)
            self._writer.name = "scope-write-behind"
            self._writer.start()
            atexit.register(_close_at_exit, ref)


def _write_loop(ref: weakref.ReferenceType[ScopeEngine], queued: threading.Event) -> None:
    """The write-behind thread: wait for a queued outcome, gather for ``write_behind`` seconds, write."""
    while True:
        fired = queued.wait(timeout=30.0)
        engine = ref()
        if engine is None:  # the engine was collected: nothing left to write for
            return
        if not fired:
            del engine
            continue
        closing = engine._closing  # noqa: SLF001 - the engine's own thread
        closing.wait(engine.write_behind)  # gather what else is recorded meanwhile; close() cuts it short
        queued.clear()
        try:
            engine.flush()
        except Exception:
            logger.exception("write-behind: recorded outcomes could not be written")
        if closing.is_set():
            return
        if engine.pending:  # the store was down: try again after another wait
            closing.wait(max(engine.write_behind, 1.0))
            queued.set()
        del engine


def _close_at_exit(ref: weakref.ReferenceType[ScopeEngine]) -> None:
    engine = ref()
    if engine is not None and engine.pending:
        engine.close()


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
    return query


def _check_value(value: float | None) -> None:
    if value is not None and (math.isnan(value) or value < 0):
        msg = f"value_per_correct must be >= 0 USD (or None for accuracy only), got {value}"
        raise ConfigError(msg)


def _check_cost(cap: float | None) -> None:
    if cap is not None and (math.isnan(cap) or cap < 0):
        msg = f"max_cost_per_call must be >= 0 USD or None, got {cap}"
        raise ConfigError(msg)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
