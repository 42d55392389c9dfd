"""When the chosen model fails: which errors are transient, retrying them (tenacity), then falling back down
the decision's ranking through ``engine.redecide``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from scope_langchain._redact import describe
from scope_shared import BudgetExceededError, ConfigError, Decision, RouteOptions, ScopeEngine

logger = logging.getLogger(__name__)

T = TypeVar("T")

@dataclass(frozen=True, slots=True)
class Failure:
    """One model that failed during a call."""

    model: str
    error: BaseException


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning(
        "transient error from the chosen model (attempt %d): %s; retrying",
        state.attempt_number,
        describe(exc) if exc is not None else "no exception",
    )


@dataclass(frozen=True)
class Recovery:
    """Retries on the same model, then fallbacks to the next best candidate (documented on ``ScopeRouter``)."""

    engine: ScopeEngine
    retries: int
    retry_wait: float
    max_fallbacks: int
    fallback_on: tuple[type[BaseException], ...]
    retry_if: Callable[[BaseException], bool]

    @classmethod
    def of(cls, engine: ScopeEngine, settings: Any) -> Recovery:
        """From ``settings`` (a ScopeRouter or ScopeChatModel: their fields share these names)."""
        names = ("retries", "retry_wait", "max_fallbacks", "fallback_on", "retry_if")
        return cls(engine=engine, **{name: getattr(settings, name) for name in names})

    def retry_options(self) -> dict[str, Any]:
        """Keyword arguments of tenacity's ``Retrying`` / ``AsyncRetrying``."""
        return {
            "stop": stop_after_attempt(self.retries + 1),
            # retry_wait * 2**(attempt - 1), at most 16 * retry_wait, plus up to retry_wait of jitter
            "wait": wait_exponential(multiplier=self.retry_wait, max=self.retry_wait * 16)
            + wait_random(0, self.retry_wait),
            "retry": retry_if_exception(self.retry_if),
            "reraise": True,
            "before_sleep": _log_retry,
        }

    def run(
        self, settings: RouteOptions, decision: Decision, failures: list[Failure], call: Callable[[Decision], T]
    ) -> tuple[Decision, T]:
        """``call(decision)``, retried, then on the fallback decisions until one succeeds; returns the decision
        that succeeded and its result (``failures`` lists the models that failed), or raises the first error."""
        while True:
            try:
                return decision, Retrying(**self.retry_options())(call, decision)
            except BaseException as exc:
                decision = self.after_failure(settings, decision, exc, failures)

    async def arun(
        self,
        settings: RouteOptions,
        decision: Decision,
        failures: list[Failure],
        call: Callable[[Decision], Awaitable[T]],
    ) -> tuple[Decision, T]:
        """Async form of :meth:`run`."""
        while True:
            try:
                return decision, await AsyncRetrying(**self.retry_options())(call, decision)
            except BaseException as exc:
                decision = self.after_failure(settings, decision, exc, failures)

    def after_failure(
        self, settings: RouteOptions, decision: Decision, exc: BaseException, failures: list[Failure]
    ) -> Decision:
        """Release the failed call's reservation; return the fallback decision or raise the first error."""
        self.engine.release(decision)
        if not isinstance(exc, Exception):  # cancelled, interrupted: stop at once
            raise exc
        failures.append(Failure(decision.model, exc))
        logger.warning("routed model %s failed: %s", decision.model, describe(exc))
        nxt = self._fallback(settings, decision, exc, failures)
        if nxt is None:
            first = failures[0].error
            if len(failures) > 1 and hasattr(first, "add_note"):  # Python >= 3.11
                tried = ", ".join(f"{f.model} ({type(f.error).__name__})" for f in failures)
                first.add_note(f"scope-router tried: {tried}")
            raise first
        logger.warning("falling back from %s to %s", decision.model, nxt.model)
        return nxt

    def _fallback(
        self, settings: RouteOptions, decision: Decision, exc: Exception, failures: Sequence[Failure]
    ) -> Decision | None:
        if not isinstance(exc, self.fallback_on) or len(failures) > self.max_fallbacks:
            return None
        if settings.force_model is not None or not decision.utilities:
            return None  # forced, or nothing fitted the limits: there is no ranked alternative
        failed = [f.model for f in failures]
        if not any(m in decision.utilities and m not in failed for m in decision.estimates):
            return None
        try:
            return self.engine.redecide(
                decision,
                exclude=failed,
                options={"max_cost_per_call": settings.max_cost_per_call},
                reason=f"fallback after {decision.model} failed ({type(exc).__name__})",
            )
        except (BudgetExceededError, ConfigError) as err:
            logger.warning("no fallback after %s failed: %s", decision.model, err)
            return None
