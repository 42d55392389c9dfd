"""The routing engine: store -> estimator -> policy, and outcomes back into the store.

Adapters talk to the engine only: they route (:meth:`ScopeEngine.route` and its batch and async forms, with
:class:`~scope_shared.types.RouteOptions`), settle, release, record, and use the small facades here
(:meth:`~ScopeEngine.estimate_tokens`, :meth:`~ScopeEngine.reserve_next`, :meth:`~ScopeEngine.charge`);
they never reach the store or the ledger. The engine orchestrates stages kept in their own modules:
:mod:`scope_shared._estimate` (queries -> anchor contexts -> priced estimates; :class:`ScopeEngine` extends its
:class:`~scope_shared._estimate.Estimation`), :mod:`scope_shared._decide` (choosing and reserving) and
:mod:`scope_shared.recorder` (writing outcomes). ``route()`` and ``aroute()`` share those pure helpers, so
their bodies differ only by ``await``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scope_shared._decide import candidates_left, decide, keep_degraded, reserve_next, settle_expected
from scope_shared._estimate import MAX_QUERY_CHARS, Estimation
from scope_shared.budget import Budget, BudgetLedger
from scope_shared.errors import ConfigError, UnknownModelError
from scope_shared.escalation import Escalation
from scope_shared.estimators.anchors import Prior
from scope_shared.estimators.base import Estimator
from scope_shared.policy import OnNoFit
from scope_shared.recorder import Recorder, unsent_path
from scope_shared.store import AnchorStore
from scope_shared.types import Decision, Estimate, ModelCard, Outcome, RouteOptions

__all__ = ["MAX_QUERY_CHARS", "ScopeEngine"]

logger = logging.getLogger(__name__)

Options = RouteOptions | Mapping[str, Any] | None


class ScopeEngine(Estimation):
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
        if on_no_fit not in ("raise", "cheapest"):
            msg = f"on_no_fit must be 'raise' or 'cheapest', got {on_no_fit!r}"
            raise ConfigError(msg)
        if not reserve_factor >= 1.0:
            msg = f"reserve_factor must be >= 1, got {reserve_factor}"
            raise ConfigError(msg)
        if not 0.0 <= write_behind < math.inf:
            msg = f"write_behind must be >= 0 seconds, got {write_behind}"
            raise ConfigError(msg)
        self._defaults = RouteOptions.of(value_per_correct=value_per_correct, max_cost_per_call=max_cost_per_call)
        super().__init__(
            store=store,
            models={c.name: c for c in cards},
            priors=priors,
            estimator=estimator,
            fallback=fallback,
            escalation=escalation,
            k=k,
            on_store_down=on_store_down,
            store_retry_s=store_retry_s,
        )
        self._ledger = BudgetLedger(budget) if isinstance(budget, Budget) else budget
        self.on_no_fit: OnNoFit = on_no_fit
        self.reserve_factor = reserve_factor
        self._recorder = Recorder(
            self._write, write_behind=write_behind, unsent=unsent_path(unsent, lambda: store.identity)
        )
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
        return reserve_next(self._ledger, decision, model, reserve_factor=self.reserve_factor, reason=reason)

    def charge(self, model: str, *, input_tokens: float, output_tokens: float) -> float:
        """Count a call that had no reservation of its own against the budget; returns its USD cost."""
        cost = self.cost_of(model, input_tokens=input_tokens, output_tokens=output_tokens)
        if self._ledger is not None:
            self._ledger.charge(cost)
        return cost

    # -- estimation (contexts() and wait_ready() are Estimation's) -----------------------------

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
        return self._price(ctxs, s, reason)

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
        return await self._aprice(ctxs, s, reason)

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
        left = candidates_left(decision, exclude)
        s = self._resolve(options, candidates=tuple(left))
        s = s.merged(RouteOptions(value_per_correct=decision.value_per_correct))
        return keep_degraded(decision, self._decide(decision.query, left, s, reason))

    def _decide(self, query: str, estimates: dict[str, Estimate], s: RouteOptions, reason: str) -> Decision:
        ledger = self._ledger if s.reserve else None
        return decide(
            query, estimates, s, reason, ledger=ledger, reserve_factor=self.reserve_factor, on_no_fit=self.on_no_fit
        )

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
            elif self._ledger is not None:
                warned, factor = self._settled_blind, self.reserve_factor
                settle_expected(self._ledger, decision, outcome.model, reserve_factor=factor, warned=warned)
        self._recorder.put(outcome)

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

    def close(self) -> None:
        """Write what is queued and stop the write-behind thread (a later ``record`` writes at once)."""
        self._recorder.close()
