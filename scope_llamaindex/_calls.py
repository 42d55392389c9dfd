"""A routed call of :class:`~scope_llamaindex.ScopeLLM` in flight: the chosen LLM, the span its call runs
under, and the watch on its stream."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from llama_index.core.base.llms.types import ChatResponse, CompletionResponse
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM

from scope_llamaindex._tools import ToolRequest
from scope_shared import Decision

__all__ = ["Call", "R", "Watch", "aonce", "call_id_of", "in_span", "once"]

R = TypeVar("R", ChatResponse, CompletionResponse)


@dataclass(frozen=True, slots=True)
class Call:
    """A routed call in flight, and the span (ScopeLLM's) the chosen LLM's call runs under."""

    call_id: str
    decision: Decision
    query: str
    prompt: str
    llm: LLM
    span_id: str | None = None
    tools: ToolRequest | None = None

    @property
    def model(self) -> str:
        return self.decision.model

    @property
    def tool_llm(self) -> FunctionCallingLLM:
        return cast(FunctionCallingLLM, self.llm)


@contextmanager
def in_span(span_id: str | None) -> Iterator[None]:
    """Make ``span_id`` the active span: work a stream does lazily nests under the call that opened it."""
    if span_id is None:
        yield
        return
    token = active_span_id.set(span_id)
    try:
        yield
    finally:
        active_span_id.reset(token)


class Watch(Generic[R]):
    """A stream in flight: stamps each chunk with the call and keeps the last one."""

    def __init__(self, stamp: dict[str, Any]) -> None:
        self.stamp = stamp
        self.last: R | None = None

    def __call__(self, chunk: R) -> R:
        chunk.additional_kwargs["scope"] = self.stamp
        self.last = chunk
        return chunk


def call_id_of(call: Call) -> str:
    return call.call_id


def once(response: R) -> Generator[R, None, None]:
    yield response


async def aonce(response: R) -> AsyncGenerator[R, None]:
    yield response
