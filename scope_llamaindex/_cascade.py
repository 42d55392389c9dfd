"""Cascades (``cascade=`` on ``ScopeLLM``): the core's plan decides every call, this module makes them.

Each step calls its model's LLM; the response is settled, stamped and announced like any routed call (a
:class:`~scope_llamaindex.ScopeCallEvent` per step, so :class:`~scope_llamaindex.ScopeEventHandler` records every
step's outcome), then observed by the plan, until it stops. A step whose LLM raises is reported to the plan,
which releases its reservation and decides again without it. The response returned is the chosen answer's, its
``additional_kwargs["scope"]`` extended with ``cascade``: every step (model, call id, answer, a summary of the
response, the checkers' evidence, P(correct), cost) and why the cascade stopped.

Streaming: a cascade must read each answer whole, so the ``stream_*`` methods run the cascade to its end and
yield the returned answer as one chunk (no token-by-token streaming while cascading).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from llama_index.core.base.llms.types import ChatResponse, CompletionResponse

from scope_llamaindex._responses import text_of
from scope_shared.cascade import CascadePlan, CascadeResult, CascadeStep

logger = logging.getLogger(__name__)

R = TypeVar("R", ChatResponse, CompletionResponse)
C = TypeVar("C")

#: ``step -> the call it makes`` / ``call -> response`` / ``(call, response) -> the settled, stamped response``
Start = Callable[[CascadeStep], C]


def _logprobs(response: Any) -> list[float] | None:
    found = getattr(response, "logprobs", None)
    if not found:
        return None
    values: list[float] = []
    for entry in found:
        for token in entry if isinstance(entry, list) else [entry]:
            value = getattr(token, "logprob", None)
            if isinstance(value, int | float):
                values.append(float(value))
    return values or None


def _observe(plan: CascadePlan, step: CascadeStep, response: Any) -> CascadeStep | CascadeResult:
    info = response.additional_kwargs.get("scope", {})
    return plan.observe(
        step.model,
        text_of(response),
        input_tokens=info.get("input_tokens"),
        output_tokens=info.get("output_tokens"),
        logprobs=_logprobs(response),
    )


def _returned(
    result: CascadeResult, responses: dict[str, Any], calls: dict[str, str], first_error: Exception | None
) -> Any:
    if result.model is None or result.model not in responses:
        if first_error is not None:
            raise first_error
        msg = f"the cascade returned no answer ({result.stop_reason})"
        raise RuntimeError(msg)
    response = responses[result.model]
    summary = result.summary()
    for s in summary["steps"]:
        s["call_id"] = calls.get(s["model"]) if not s["error"] else None
    response.additional_kwargs["scope"] = {**response.additional_kwargs.get("scope", {}), "cascade": summary}
    return response


def drive(
    plan: CascadePlan,
    start: Start[C],
    ask: Callable[[C], R],
    finish: Callable[[C, R], R],
    call_id: Callable[[C], str],
) -> R:
    """Run ``plan`` to its end: ``start`` a step's call, ``ask`` its LLM, ``finish`` (settle, stamp, announce)."""
    responses: dict[str, R] = {}
    calls: dict[str, str] = {}
    first_error: Exception | None = None
    step: CascadeStep | CascadeResult = plan.first
    try:
        while isinstance(step, CascadeStep):
            call = start(step)
            try:
                raw = ask(call)
            except Exception as exc:
                first_error = first_error or exc
                logger.warning("cascade step %s failed: %s: %s", step.model, type(exc).__name__, exc)
                step = plan.fail(step.model, exc)
                continue
            response = finish(call, raw)
            responses[step.model], calls[step.model] = response, call_id(call)
            step = _observe(plan, step, response)
    except BaseException:
        plan.cancel()
        raise
    out: R = _returned(step, responses, calls, first_error)
    return out


async def adrive(
    plan: CascadePlan,
    start: Start[C],
    ask: Callable[[C], Awaitable[R]],
    finish: Callable[[C, R], R],
    call_id: Callable[[C], str],
) -> R:
    """Async form of :func:`drive`."""
    responses: dict[str, R] = {}
    calls: dict[str, str] = {}
    first_error: Exception | None = None
    step: CascadeStep | CascadeResult = plan.first
    try:
        while isinstance(step, CascadeStep):
            call = start(step)
            try:
                raw = await ask(call)
            except Exception as exc:
                first_error = first_error or exc
                logger.warning("cascade step %s failed: %s: %s", step.model, type(exc).__name__, exc)
                step = plan.fail(step.model, exc)
                continue
            response = finish(call, raw)
            responses[step.model], calls[step.model] = response, call_id(call)
            step = _observe(plan, step, response)
    except BaseException:
        plan.cancel()
        raise
    out: R = _returned(step, responses, calls, first_error)
    return out


def one_chunk(response: R) -> R:
    """The cascade's answer as the single chunk a stream yields (its text as the chunk's delta)."""
    response.delta = text_of(response)
    return response
