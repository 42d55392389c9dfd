"""A cascade the caller drives: the engine decides each next call, the caller makes it.

The engine cannot call models (the adapters do), so a cascade is a stateful :class:`CascadePlan`::

    cascade = Cascade(calibration=calibration, grader="choice")
    plan = cascade.start(engine, query)            # or: await cascade.astart(engine, query)
    step = plan.first                              # a CascadeStep: the model to call, its cost reserved
    while isinstance(step, CascadeStep):
        reply = call_model(step.model, query)      # your code, sync or async
        step = plan.observe(step.model, reply.text, input_tokens=..., output_tokens=...)
    result = step                                  # a CascadeResult: whose answer to return, and why

The steps, the record of each call and the result are :mod:`.steps` (re-exported here). This module is one
job, the plan's state machine with the settings that make it, which is why it runs a little past 400 lines.

Each step is chosen by expected utility (:mod:`.planner`) from the posterior over the answers so far
(:mod:`.posterior`), within the engine's budget and per-call cap: a step whose expected cost does not fit is not
taken, and the step or result says so. :meth:`CascadePlan.observe` settles the step's reservation with the real
cost and reserves the next one through :meth:`ScopeEngine.reserve_next`; it does no I/O of its own, so the same
plan serves sync and async code. If a call fails, :meth:`CascadePlan.fail` releases its reservation and decides
again without that model; :meth:`CascadePlan.cancel` releases whatever is held.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from scope_shared.cascade.checkers import Checker, ModelAnswer, default_checkers
from scope_shared.cascade.parameters import CascadeCalibration
from scope_shared.cascade.planner import value_array
from scope_shared.cascade.posterior import Quadrature
from scope_shared.cascade.state import QueryModel
from scope_shared.cascade.steps import CascadeResult, CascadeStep, StepRecord, final_answer, summary_of
from scope_shared.errors import BudgetExceededError, ConfigError
from scope_shared.suites.graders import Grader, grader_named
from scope_shared.types import Decision, Estimate, RouteOptions

if TYPE_CHECKING:
    from scope_shared.engine import ScopeEngine

__all__ = ["Cascade", "CascadePlan", "CascadeResult", "CascadeStep", "StepRecord", "final_answer"]

logger = logging.getLogger(__name__)

#: What :meth:`Cascade.start` and :meth:`Cascade.plan` take as ``options``.
Options = RouteOptions | Mapping[str, Any] | None


class Cascade:
    """Cascade settings; :meth:`start` makes a :class:`CascadePlan` for one query.

    Args:
        calibration: the posterior's parameters, fitted on the anchors (:func:`~.calibration.fit_calibration`).
        grader: how answers are read and compared: a built-in kind (``choice``, ``number``, ``exact``) or a
            :class:`~scope_shared.suites.graders.Grader`; its kind selects the calibration.
        max_calls: calls per query at most.
        depth: calls the expected-utility lookahead looks ahead.
        max_candidates: models considered per query (a shortlist on the query's cost/accuracy frontier).
        checkers: post-hoc checkers of each answer (default: parse and log-probabilities).
        quadrature_points: nodes per factor of the latent-difficulty grid (default 10, or 7 with two factors).
    """

    def __init__(
        self,
        *,
        calibration: CascadeCalibration,
        grader: str | Grader,
        max_calls: int = 4,
        depth: int = 3,
        max_candidates: int = 8,
        checkers: Sequence[Checker] | None = None,
        quadrature_points: int | None = None,
    ) -> None:
        if not isinstance(calibration, CascadeCalibration):
            msg = f"calibration must be a CascadeCalibration, got {type(calibration).__name__}"
            raise ConfigError(msg)
        self.grader = grader_named(grader) if isinstance(grader, str) else grader
        if not isinstance(self.grader, Grader):
            msg = f"grader must be a grader kind or a Grader, got {type(grader).__name__}"
            raise ConfigError(msg)
        calibration.group(self.grader.kind)
        for name, value, low in (
            ("max_calls", max_calls, 1),
            ("depth", depth, 1),
            ("max_candidates", max_candidates, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                msg = f"{name} must be an integer >= {low}, got {value!r}"
                raise ConfigError(msg)
        self.calibration = calibration
        self.max_calls = max_calls
        self.depth = depth
        self.max_candidates = max_candidates
        self.checkers: tuple[Checker, ...] = tuple(checkers) if checkers is not None else default_checkers()
        for c in self.checkers:
            if not isinstance(c, Checker):
                msg = f"checkers must be Checker instances, got {type(c).__name__}"
                raise ConfigError(msg)
        factors = calibration.factors
        self.quad = Quadrature.of(quadrature_points or (10 if factors == 1 else 7), factors=factors)

    def __repr__(self) -> str:
        return (
            f"Cascade(kind={self.grader.kind!r}, max_calls={self.max_calls}, depth={self.depth}, "
            f"max_candidates={self.max_candidates})"
        )

    def query_model(
        self,
        estimates: Mapping[str, Estimate],
        *,
        grader: Grader | None = None,
        candidates: Sequence[str] | None = None,
    ) -> QueryModel:
        """The pure view of one query from its pre-hoc estimates (shared with the replay evaluation, which reads
        each query with the ``grader`` of its kind)."""
        return QueryModel(
            calibration=self.calibration,
            grader=grader or self.grader,
            estimates=estimates,
            candidates=candidates,
            max_candidates=self.max_candidates,
            quad=self.quad,
        )

    def start(
        self, engine: ScopeEngine, query: str, *, input_tokens: float | None = None, options: Options = None
    ) -> CascadePlan:
        """Estimate ``query`` with the engine and plan its first call (reserved)."""
        decision = engine.route(query, input_tokens=input_tokens, options=_unreserved(options))
        return self.plan(engine, decision, options=options)

    async def astart(
        self, engine: ScopeEngine, query: str, *, input_tokens: float | None = None, options: Options = None
    ) -> CascadePlan:
        """Async form of :meth:`start`."""
        decision = await engine.aroute(query, input_tokens=input_tokens, options=_unreserved(options))
        return self.plan(engine, decision, options=options)

    def plan(self, engine: ScopeEngine, decision: Decision, *, options: Options = None) -> CascadePlan:
        """A plan from a decision routed without a reservation (its estimates are the cascade's pre-hoc view)."""
        if decision.reservation_id is not None:
            msg = "the decision holds a reservation; route with options reserve=False (or use start/astart)"
            raise ConfigError(msg)
        max_cost = RouteOptions.of(options).max_cost_per_call if options is not None else None
        if max_cost is None:
            max_cost = engine.max_cost_per_call
        return CascadePlan(cascade=self, engine=engine, decision=decision, max_cost_per_call=max_cost)


def _unreserved(options: Options) -> RouteOptions:
    return RouteOptions.of(options).merged(RouteOptions(reserve=False))


class CascadePlan:
    """One query's cascade in progress; see the module docstring. Made by :meth:`Cascade.start`.

    Raises:
        BudgetExceededError: at construction, when no candidate's expected cost fits the remaining budget or
            the per-call cap.
    """

    def __init__(
        self, *, cascade: Cascade, engine: ScopeEngine, decision: Decision, max_cost_per_call: float | None
    ) -> None:
        self.cascade = cascade
        self.engine = engine
        self.decision = decision
        self.max_cost_per_call = max_cost_per_call
        self.query = cascade.query_model(decision.estimates)
        self._planner = self.query.planner(
            value_array([decision.value_per_correct]), depth=cascade.depth, max_calls=cascade.max_calls
        )
        self._node = self.query.root()
        self._records: list[StepRecord] = []
        self._texts: dict[str, str] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._pending: CascadeStep | None = None
        self._result: CascadeResult | None = None
        nxt = self._next()
        if isinstance(nxt, CascadeResult):
            msg = f"no model can be called for this query: {nxt.stop_reason}"
            raise BudgetExceededError(msg)
        self.first: CascadeStep = nxt

    def __repr__(self) -> str:
        state = "done" if self._result is not None else f"waiting for {self._pending.model if self._pending else None}"
        return f"CascadePlan(calls={len(self._records)}, {state})"

    @property
    def pending(self) -> CascadeStep | None:
        """The call asked for and not answered yet (None once the plan is done)."""
        return self._pending

    @property
    def result(self) -> CascadeResult | None:
        """The outcome, once the plan has stopped."""
        return self._result

    @property
    def steps(self) -> tuple[StepRecord, ...]:
        return tuple(self._records)

    # -- driving -----------------------------------------------------------------------------------

    def observe(
        self,
        model: str,
        text: str,
        *,
        input_tokens: float | None = None,
        output_tokens: float | None = None,
        logprobs: Sequence[float] | None = None,
    ) -> CascadeStep | CascadeResult:
        """Take the pending call's answer: settle its cost, update the posterior, and decide what is next.

        Args:
            model: the model that answered (the pending step's).
            text: its response.
            input_tokens, output_tokens: its real usage (without them the cost settled is the expected one).
            logprobs: the response tokens' log-probabilities, where the provider returned them.
        """
        with self._lock:
            step = self._take(model)
            cost, estimated = self._settle(step, input_tokens, output_tokens)
            extracted = self.cascade.grader.extract(text) if text.strip() else None
            obs = self.query.observe(
                self._node,
                ModelAnswer(model=model, text=text, answer=extracted, logprobs=logprobs),
                self.cascade.checkers,
            )
            self._node = obs.node
            self._texts[model] = text
            probs = obs.node.posterior.probabilities()
            p_answer = self.query.confidence(float(probs[obs.node.key[-1][1]])) if obs.usable else 0.0
            p_best = self.query.confidence(obs.node.posterior.best()[1])
            return self._advance(
                step,
                answer=extracted,
                summary=summary_of(text),
                usable=obs.usable,
                signals=obs.signals,
                p_answer=p_answer,
                p_best=p_best,
                cost=cost,
                cost_estimated=estimated,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )

    def fail(self, model: str, error: BaseException | str) -> CascadeStep | CascadeResult:
        """The pending call failed: release its reservation and decide again without ``model``."""
        with self._lock:
            step = self._take(model)
            self.engine.release(step.decision)
            why = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            self._failed[model] = f"its call failed ({why})"
            logger.warning("cascade call to %s failed (%s); deciding again without it", model, why)
            return self._advance(
                step,
                answer=None,
                summary="",
                usable=False,
                signals=(),
                p_answer=0.0,
                p_best=self.query.confidence(self._node.posterior.best()[1]),
                cost=0.0,
                cost_estimated=True,
                error=why,
            )

    def cancel(self) -> None:
        """Release the pending call's reservation (the caller gives up on the cascade)."""
        with self._lock:
            if self._pending is not None:
                self.engine.release(self._pending.decision)
                self._pending = None
            if self._result is None:
                self._result = self._finish("cancelled by the caller")

    # -- internals ---------------------------------------------------------------------------------

    def _take(self, model: str) -> CascadeStep:
        step = self._pending
        if step is None:
            msg = "no call is pending: the cascade has stopped" if self._result else "no call is pending"
            raise ConfigError(msg)
        if model != step.model:
            msg = f"the pending call is to {step.model!r}, not {model!r}"
            raise ConfigError(msg)
        self._pending = None
        return step

    def _settle(self, step: CascadeStep, input_tokens: float | None, output_tokens: float | None) -> tuple[float, bool]:
        if input_tokens is not None and output_tokens is not None:
            cost = self.engine.cost_of(step.model, input_tokens=input_tokens, output_tokens=output_tokens)
            self.engine.settle(step.decision, cost=cost)
            return cost, False
        self.engine.settle(step.decision, cost=step.expected_cost)
        return step.expected_cost, True

    def _advance(self, step: CascadeStep, **outcome: Any) -> CascadeStep | CascadeResult:
        """Record what ``step``'s call did (the :class:`StepRecord` fields beyond the step's own), decide what next."""
        self._records.append(
            StepRecord(
                index=step.index, model=step.model, reason=step.reason, p_prehoc=self.query.p[step.model], **outcome
            )
        )
        nxt = self._next()
        if isinstance(nxt, CascadeResult):
            self._result = nxt
        return nxt

    def _limits(self) -> dict[str, str]:
        """Uncalled candidates that cannot be called now, and why."""
        out: dict[str, str] = {}
        remaining = self.engine.remaining_budget
        factor = self.engine.reserve_factor
        for m in self.query.models:
            if m in self._node.called:
                continue
            cost = self.query.costs[m]
            if m in self._failed:
                out[m] = self._failed[m]
            elif self.max_cost_per_call is not None and cost > self.max_cost_per_call:
                out[m] = f"expected cost ${cost:.6g} > max_cost_per_call ${self.max_cost_per_call:.6g}"
            elif remaining is not None and cost * factor > remaining:
                out[m] = f"expected cost ${cost:.6g} does not fit the remaining budget ${remaining:.6g}"
        return out

    def _next(self) -> CascadeStep | CascadeResult:
        t0 = time.perf_counter()
        called = len(self._node.called)
        if called >= self.cascade.max_calls:
            return self._finish(f"max_calls ({self.cascade.max_calls}) reached")
        for _ in range(len(self.query.models) + 1):
            excluded = self._limits()
            allowed = [m for m in self.query.models if m not in excluded and m not in self._node.called]
            verdict = self._planner.decide(self._node, allowed=allowed)
            pick = int(verdict.choice[0])
            if pick < 0:
                return self._finish(self._why_stop(verdict.stop[0], verdict.proceed, excluded))
            model = verdict.models[pick]
            reason = self._why_call(model, verdict.stop[0], verdict.proceed)
            step_decision = self.engine.reserve_next(
                self.decision, model, reason=f"cascade step {called + 1}: {reason}"
            )
            if step_decision is None:  # taken by a concurrent caller between the check and the reservation
                self._failed[model] = "its expected cost no longer fits the remaining budget"
                continue
            note = self._blocked_note(excluded)
            step = CascadeStep(
                index=len(self._records),
                model=model,
                decision=step_decision,
                reason=reason + note,
                p_best=self.query.confidence(self._node.posterior.best()[1]),
                expected_cost=self.query.costs[model],
                excluded=excluded,
                decide_s=time.perf_counter() - t0,
            )
            self._pending = step
            return step
        return self._finish("no candidate fits the limits")

    def _blocked_note(self, excluded: Mapping[str, str]) -> str:
        """Says so when the step the plan would take without the limits is one the limits exclude."""
        blocked = {m: why for m, why in excluded.items() if m not in self._failed}
        if not blocked:
            return ""
        free = [m for m in self.query.models if m not in self._node.called and m not in self._failed]
        verdict = self._planner.decide(self._node, allowed=free)
        pick = int(verdict.choice[0])
        if pick >= 0 and verdict.models[pick] in blocked:
            m = verdict.models[pick]
            return f"; the best step, {m}, was not taken: {blocked[m]}"
        return ""

    def _why_call(self, model: str, stop: float, proceed: Mapping[str, Any]) -> str:
        gain = float(proceed[model][0])
        p_best = self.query.confidence(self._node.posterior.best()[1])
        head = f"{model}: expected utility {gain:.6g}"
        head += f" vs stopping {stop:.6g} (P(best answer) {p_best:.3f})" if math.isfinite(stop) else " (first call)"
        others = sorted((m for m in proceed if m != model), key=lambda m: -float(proceed[m][0]))
        if others:
            head += f"; runner-up {others[0]} {float(proceed[others[0]][0]):.6g}"
        return head + f"; p_correct {self.query.p[model]:.2f}, ${self.query.costs[model]:.6f}"

    def _why_stop(self, stop: float, proceed: Mapping[str, Any], excluded: Mapping[str, str]) -> str:
        if not math.isfinite(stop):
            blocked = "; ".join(f"{m}: {why}" for m, why in excluded.items()) or "no candidate left"
            return f"nothing could be called ({blocked})"
        if not proceed:
            reason = "every candidate has been called or is excluded"
            blocked = self._blocked_note(excluded)
            return reason + blocked
        best = max(proceed, key=lambda m: float(proceed[m][0]))
        why = f"stopping is worth {stop:.6g}, more than any next call (best: {best}, {float(proceed[best][0]):.6g})"
        return why + self._blocked_note(excluded)

    def _finish(self, reason: str) -> CascadeResult:
        model, _, p = final_answer(self.query, self._node)
        answer = next((r.answer for r in self._records if r.model == model and not r.error), None)
        text = self._texts.get(model, "") if model is not None else ""
        return CascadeResult(
            model=model,
            text=text,
            answer=answer,
            p_correct=p,
            stop_reason=reason,
            steps=tuple(self._records),
            cost=sum(r.cost for r in self._records),
        )
