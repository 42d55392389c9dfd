"""Calling the model being profiled: what a ``call`` returns, which errors are retried, and the retry itself.

A ``call`` is any function from a prompt to ``(text, usage)``; ``usage`` is ``None``, a :class:`Usage`, a pair
``(input_tokens, output_tokens)``, or a provider's usage record (OpenAI's ``prompt_tokens`` /
``completion_tokens``, LangChain's ``usage_metadata``, Anthropic's ``input_tokens`` / ``output_tokens``). An
``async def`` call (or one returning an awaitable) runs on one event loop in a background thread, so an async
client keeps its connection pool.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, NamedTuple

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
    wait_random,
)

from scope_shared.feedback import reported_tokens
from scope_shared.transient import is_transient, status_of

__all__ = ["Call", "CallResult", "ErrorKind", "Usage", "as_usage", "classify", "is_transient"]

logger = logging.getLogger(__name__)

#: ``(text, usage)``; see the module docstring for what ``usage`` may be.
CallResult = tuple[str | None, Any]
Call = Callable[[str], "CallResult | str | Awaitable[CallResult | str]"]

ErrorKind = Literal["transient", "anchor", "fatal"]

_FATAL_STATUS = frozenset({401, 402, 403, 404, 405})


class Usage(NamedTuple):
    """Tokens a call used, as the provider reported them (None for a count it did not report)."""

    input_tokens: int | None = None
    output_tokens: int | None = None


def as_usage(value: Any) -> Usage:
    """A call's ``usage`` as a :class:`Usage`; counts that are not whole numbers >= 0 are taken as unreported."""
    if value is None:
        return Usage()
    if isinstance(value, Usage):
        return Usage(*reported_tokens({"input_tokens": value.input_tokens, "output_tokens": value.output_tokens}))
    if isinstance(value, tuple | list) and len(value) == 2:
        return Usage(*reported_tokens({"input_tokens": value[0], "output_tokens": value[1]}))
    return Usage(*reported_tokens(value if isinstance(value, Mapping) else value))


def classify(exc: BaseException) -> ErrorKind:
    """What a failed call means for the run.

    ``transient``: retry it. ``anchor``: the request for this one anchor was refused (HTTP 400, 413, 422: a
    prompt too long for the model, say): the anchor is reported as failed and the run goes on. ``fatal``:
    anything else (401/403/404, an error of the call function itself): the run stops.
    """
    if is_transient(exc):
        return "transient"
    status = status_of(exc)
    if status is not None and 400 <= status < 500 and status not in _FATAL_STATUS:
        return "anchor"
    return "fatal"


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    logger.info("model call failed (attempt %d): %s: %s; retrying", state.attempt_number, type(exc).__name__, exc)


class _Loop:
    """One event loop in a daemon thread, started on first use, for async calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, awaitable: Awaitable[Any]) -> Any:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="scope-profile-loop", daemon=True).start()
            loop = self._loop

        async def wait() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), loop).result()

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


class Caller:
    """Calls ``call`` with retries (tenacity) on transient errors; thread-safe.

    Args:
        call: the model.
        retries: further attempts after a transient error.
        backoff: first wait in seconds, doubling up to 32x, plus up to ``backoff`` of jitter.
        stop: once set, no further retry is attempted (the run is stopping).
    """

    def __init__(self, call: Call, *, retries: int, backoff: float, stop: threading.Event) -> None:
        self._call = call
        self._loop = _Loop()
        self._retrying = Retrying(
            stop=stop_after_attempt(retries + 1) | stop_when_event_set(stop),
            wait=wait_exponential(multiplier=backoff, max=backoff * 32) + wait_random(0, backoff),
            retry=retry_if_exception(is_transient),
            reraise=True,
            before_sleep=_log_retry,
        )

    def __call__(self, prompt: str) -> tuple[str, Usage]:
        return self._retrying(self._once, prompt)

    def _once(self, prompt: str) -> tuple[str, Usage]:
        result: Any = self._call(prompt)
        if inspect.isawaitable(result):
            result = self._loop.run(result)
        if isinstance(result, str):
            return result, Usage()
        if not (isinstance(result, tuple) and len(result) == 2) or not isinstance(result[0], str | None):
            msg = f"call returned {type(result).__name__}; a profiling call returns (text, usage) or text"
            raise TypeError(msg)
        return result[0] or "", as_usage(result[1])

    def close(self) -> None:
        self._loop.close()
