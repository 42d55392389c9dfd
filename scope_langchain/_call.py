"""Calling the chosen model (``invoke`` / ``ainvoke``): retries, fallbacks, settling, the decision attached."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from tenacity import AsyncRetrying, Retrying

from scope_langchain._dispatch import Dispatcher, Prepared
from scope_langchain._messages import as_message, usage_of
from scope_langchain._metadata import scope_metadata, with_scope
from scope_langchain._retry import Failure
from scope_shared import Decision


def _invoke_once(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> tuple[uuid.UUID, BaseMessage]:
    run_id = uuid.uuid4()
    model = d.models[decision.model]
    out = model.invoke(p.messages, d.child_config(config, p, decision, run_id), **kwargs)
    return run_id, as_message(out, decision.model)


async def _ainvoke_once(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> tuple[uuid.UUID, BaseMessage]:
    run_id = uuid.uuid4()
    model = d.models[decision.model]
    out = await model.ainvoke(p.messages, d.child_config(config, p, decision, run_id), **kwargs)
    return run_id, as_message(out, decision.model)


def _done(
    d: Dispatcher, decision: Decision, done: tuple[uuid.UUID, BaseMessage], failures: list[Failure]
) -> BaseMessage:
    run_id, message = done
    cost = d.settle(decision, usage_of(message))
    return with_scope(message, scope_metadata(decision, run_id, failures, cost))


def call(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> BaseMessage:
    """Run the decision; on failure retry transient errors, then fall back down the ranking."""
    failures: list[Failure] = []
    while True:
        try:
            done: tuple[uuid.UUID, BaseMessage] = Retrying(**d.recovery.retry_options())(
                _invoke_once, d, p, decision, config, kwargs
            )
        except BaseException as exc:
            decision = d.recovery.after_failure(p.settings, decision, exc, failures)
            continue
        return _done(d, decision, done, failures)


async def acall(
    d: Dispatcher, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
) -> BaseMessage:
    """Async form of :func:`call`."""
    failures: list[Failure] = []
    while True:
        try:
            done: tuple[uuid.UUID, BaseMessage] = await AsyncRetrying(**d.recovery.retry_options())(
                _ainvoke_once, d, p, decision, config, kwargs
            )
        except BaseException as exc:
            decision = d.recovery.after_failure(p.settings, decision, exc, failures)
            continue
        return _done(d, decision, done, failures)
