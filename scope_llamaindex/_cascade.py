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

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from llama_index.core.base.llms.types import ChatResponse, CompletionResponse

from scope_llamaindex._responses import text_of
from scope_shared.cascade import CascadeDriver, CascadePlan, CascadeResult, CascadeStep, Reply

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


def _read(kept: tuple[str, Any]) -> Reply:
    response = kept[1]
    info = response.additional_kwargs.get("scope", {})
    return Reply(
        text=text_of(response),
        input_tokens=info.get("input_tokens"),
        output_tokens=info.get("output_tokens"),
        logprobs=_logprobs(response),
    )


def _driver(
    plan: CascadePlan, start: Start[C], finish: Callable[[C, R], R], call_id: Callable[[C], str]
) -> CascadeDriver[C, R, tuple[str, R]]:
    """Each step's response kept with its call id."""
    return CascadeDriver(plan, start=start, finish=lambda c, raw: (call_id(c), finish(c, raw)), read=_read)


def _returned(driver: CascadeDriver[C, R, tuple[str, R]], result: CascadeResult, kept: tuple[str, R]) -> R:
    """The chosen response, its ``additional_kwargs["scope"]`` extended with every step."""
    response = kept[1]
    summary = result.summary()
    for s in summary["steps"]:
        done = driver.replies.get(s["model"])
        s["call_id"] = done[0] if done is not None and not s["error"] else None
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
    driver = _driver(plan, start, finish, call_id)
    return _returned(driver, *driver.run(ask))


async def adrive(
    plan: CascadePlan,
    start: Start[C],
    ask: Callable[[C], Awaitable[R]],
    finish: Callable[[C, R], R],
    call_id: Callable[[C], str],
) -> R:
    """Async form of :func:`drive`."""
    driver = _driver(plan, start, finish, call_id)
    return _returned(driver, *await driver.arun(ask))


def one_chunk(response: R) -> R:
    """The cascade's answer as the single chunk a stream yields (its text as the chunk's delta)."""
    response.delta = text_of(response)
    return response
