"""Streaming the chosen model (``stream`` / ``astream``): the decision on the first chunk, usage summed over
the chunks, the reservation settled when the stream ends.

Retries and fallbacks happen only until the first chunk arrives; after that an error propagates.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.messages import BaseMessageChunk
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.runnables import RunnableConfig

from scope_langchain._dispatch import Dispatcher, Prepared
from scope_langchain._messages import as_chunk, usage_of
from scope_langchain._metadata import scope_metadata, with_scope, without_model_name
from scope_langchain._retry import Failure
from scope_shared import Decision


class _Tally:
    """The chunks of one stream: each checked, their usage summed."""

    def __init__(self, model: str, first: BaseMessageChunk) -> None:
        self.model = model
        self.usage: UsageMetadata | None = usage_of(first)

    def __call__(self, raw: Any) -> BaseMessageChunk:
        chunk = as_chunk(raw, self.model)
        if (u := usage_of(chunk)) is not None:
            self.usage = add_usage(self.usage, u)
        return without_model_name(chunk)


def _no_output(decision: Decision) -> ValueError:
    msg = f"model {decision.model!r} streamed no output"
    return ValueError(msg)


def stream(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> Iterator[BaseMessageChunk]:
    """Stream the chosen model's chunks, the decision on the first one."""

    def open_(chosen: Decision) -> tuple[uuid.UUID, Iterator[Any], BaseMessageChunk]:
        run_id = uuid.uuid4()
        it = iter(d.models[chosen.model].stream(p.messages, d.child_config(config, p, chosen, run_id), **kwargs))
        try:
            first = next(it)
        except StopIteration:
            raise _no_output(chosen) from None
        return run_id, it, as_chunk(first, chosen.model)

    failures: list[Failure] = []
    decision, (run_id, it, first) = d.recovery.run(p.settings, decision, failures, open_)
    tally = _Tally(decision.model, first)
    try:
        yield with_scope(first, scope_metadata(decision, run_id, failures, None))
        for raw in it:
            yield tally(raw)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        d.settle(decision, tally.usage)


async def astream(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> AsyncIterator[BaseMessageChunk]:
    """Async form of :func:`stream`."""

    async def open_(chosen: Decision) -> tuple[uuid.UUID, AsyncIterator[Any], BaseMessageChunk]:
        run_id = uuid.uuid4()
        model = d.models[chosen.model]
        it = model.astream(p.messages, d.child_config(config, p, chosen, run_id), **kwargs).__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            raise _no_output(chosen) from None
        return run_id, it, as_chunk(first, chosen.model)

    failures: list[Failure] = []
    decision, (run_id, ait, first) = await d.recovery.arun(p.settings, decision, failures, open_)
    tally = _Tally(decision.model, first)
    try:
        yield with_scope(first, scope_metadata(decision, run_id, failures, None))
        async for raw in ait:
            yield tally(raw)
    finally:
        aclose = getattr(ait, "aclose", None)
        if aclose is not None:
            await aclose()
        d.settle(decision, tally.usage)
