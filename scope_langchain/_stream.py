"""Streaming the chosen model (``stream`` / ``astream``): the decision on the first chunk, usage summed over
the chunks, the reservation settled when the stream ends.

Retries and fallbacks happen only until the first chunk arrives; after that an error propagates.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.messages import BaseMessageChunk
from langchain_core.messages.ai import add_usage
from langchain_core.runnables import RunnableConfig
from tenacity import AsyncRetrying, Retrying

from scope_langchain._dispatch import Dispatcher, Prepared
from scope_langchain._messages import as_chunk, usage_of
from scope_langchain._metadata import scope_metadata, with_scope
from scope_langchain._retry import Failure
from scope_shared import Decision


def _open(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> tuple[uuid.UUID, Iterator[Any], BaseMessageChunk]:
    run_id = uuid.uuid4()
    model = d.models[decision.model]
    it = iter(model.stream(p.messages, d.child_config(config, p, decision, run_id), **kwargs))
    try:
        first = next(it)
    except StopIteration:
        msg = f"model {decision.model!r} streamed no output"
        raise ValueError(msg) from None
    return run_id, it, as_chunk(first, decision.model)


async def _aopen(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> tuple[uuid.UUID, AsyncIterator[Any], BaseMessageChunk]:
    run_id = uuid.uuid4()
    model = d.models[decision.model]
    it = model.astream(p.messages, d.child_config(config, p, decision, run_id), **kwargs).__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        msg = f"model {decision.model!r} streamed no output"
        raise ValueError(msg) from None
    return run_id, it, as_chunk(first, decision.model)


def stream(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> Iterator[BaseMessageChunk]:
    """Stream the chosen model's chunks, the decision on the first one."""
    failures: list[Failure] = []
    while True:
        try:
            opened: tuple[uuid.UUID, Iterator[Any], BaseMessageChunk] = Retrying(**d.recovery.retry_options())(
                _open, d, p, decision, config, kwargs
            )
        except BaseException as exc:
            decision = d.recovery.after_failure(p.settings, decision, exc, failures)
            continue
        break
    run_id, it, first = opened
    usage = usage_of(first)
    try:
        yield with_scope(first, scope_metadata(decision, run_id, failures, None))
        for raw in it:
            chunk = as_chunk(raw, decision.model)
            if (u := usage_of(chunk)) is not None:
                usage = add_usage(usage, u)
            yield chunk
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        d.settle(decision, usage)


async def astream(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> AsyncIterator[BaseMessageChunk]:
    """Async form of :func:`stream`."""
    failures: list[Failure] = []
    while True:
        try:
            aopened: tuple[uuid.UUID, AsyncIterator[Any], BaseMessageChunk] = await AsyncRetrying(
                **d.recovery.retry_options()
            )(_aopen, d, p, decision, config, kwargs)
        except BaseException as exc:
            decision = d.recovery.after_failure(p.settings, decision, exc, failures)
            continue
        break
    run_id, ait, first = aopened
    usage = usage_of(first)
    try:
        yield with_scope(first, scope_metadata(decision, run_id, failures, None))
        async for raw in ait:
            chunk = as_chunk(raw, decision.model)
            if (u := usage_of(chunk)) is not None:
                usage = add_usage(usage, u)
            yield chunk
    finally:
        aclose = getattr(ait, "aclose", None)
        if aclose is not None:
            await aclose()
        d.settle(decision, usage)
