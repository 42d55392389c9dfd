"""Calling the chosen model (``invoke`` / ``ainvoke``): retries, fallbacks, settling, the decision attached."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig

from scope_langchain._dispatch import Dispatcher, Prepared
from scope_langchain._messages import as_message, usage_of
from scope_langchain._metadata import scope_metadata, with_scope
from scope_langchain._retry import Failure
from scope_shared import Decision


def _answered(
    d: Dispatcher, decision: Decision, done: tuple[uuid.UUID, BaseMessage], failures: list[Failure]
) -> BaseMessage:
    run_id, message = done
    cost = d.settle(decision, usage_of(message))
    return with_scope(message, scope_metadata(decision, run_id, failures, cost))


def call(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> BaseMessage:
    """Run the decision; on failure retry transient errors, then fall back down the ranking."""

    def once(chosen: Decision) -> tuple[uuid.UUID, BaseMessage]:
        run_id = uuid.uuid4()
        out = d.models[chosen.model].invoke(p.messages, d.child_config(config, p, chosen, run_id), **kwargs)
        return run_id, as_message(out, chosen.model)

    failures: list[Failure] = []
    decision, done = d.recovery.run(p.settings, decision, failures, once)
    return _answered(d, decision, done, failures)


async def acall(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> BaseMessage:
    """Async form of :func:`call`."""

    async def once(chosen: Decision) -> tuple[uuid.UUID, BaseMessage]:
        run_id = uuid.uuid4()
        out = await d.models[chosen.model].ainvoke(p.messages, d.child_config(config, p, chosen, run_id), **kwargs)
        return run_id, as_message(out, chosen.model)

    failures: list[Failure] = []
    decision, done = await d.recovery.arun(p.settings, decision, failures, once)
    return _answered(d, decision, done, failures)
