"""Cascades (``cascade=`` on ``ScopeRouter`` and ``ScopeChatModel``): the core's plan decides every call, this
module makes them.

Each step's model is invoked with the whole conversation (transient errors retried as for a routed call; a
model that still fails is reported to the plan, which releases its reservation and decides again without it),
its answer and real usage are observed, and so on until the plan stops. The message returned is the answer the
plan chose, with ``response_metadata["scope"]`` holding the first decision's summary, the model returned, every
model that failed, the total cost, and ``cascade``: every step (model, run id, answer, a summary of the
response, the checkers' evidence, P(correct) after it, cost) and why the cascade stopped. Every step is a child
run with the router's metadata, so :class:`~scope_langchain.ScopeOutcomeHandler` records each step's outcome.

Streaming: a cascade must read each answer whole before deciding, so ``stream`` runs the cascade to its end and
yields the returned answer as one chunk (no token-by-token streaming while cascading).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.runnables import RunnableConfig
from tenacity import AsyncRetrying, Retrying

from scope_langchain._dispatch import Dispatcher, Prepared
from scope_langchain._messages import as_message, message_text, usage_of
from scope_langchain._metadata import _json_safe, scope_metadata, with_scope
from scope_langchain._redact import redact
from scope_langchain._retry import Failure
from scope_shared.cascade import CascadeDriver, CascadePlan, CascadeResult, CascadeStep, Reply

#: A step's call: the model, its child run's id and config.
Step = tuple[str, uuid.UUID, RunnableConfig]


def logprobs_of(message: BaseMessage) -> list[float] | None:
    """The token log-probabilities a message carries (OpenAI's ``response_metadata["logprobs"]``), if any."""
    found = message.response_metadata.get("logprobs") if message.response_metadata else None
    content = found.get("content") if isinstance(found, Mapping) else found
    if not isinstance(content, list):
        return None
    values = [t.get("logprob") for t in content if isinstance(t, Mapping)]
    floats = [float(v) for v in values if isinstance(v, int | float)]
    return floats or None


#: A step's answer: its run id and message.
Answer = tuple[uuid.UUID, BaseMessage]
Driver = CascadeDriver[Step, Any, Answer]


def _read(answer: Answer) -> Reply:
    message = answer[1]
    usage = usage_of(message)
    return Reply(
        text=message_text(message),
        input_tokens=usage["input_tokens"] if usage else None,
        output_tokens=usage["output_tokens"] if usage else None,
        logprobs=logprobs_of(message),
    )


def _driver(d: Dispatcher, p: Prepared, config: RunnableConfig, plan: CascadePlan) -> Driver:
    """Each step a child run (its own run id and config) of the step's model; its reply read as a message."""

    def start(step: CascadeStep) -> Step:
        run_id = uuid.uuid4()
        return step.model, run_id, d.child_config(config, p, step.decision, run_id)

    def finish(call: Step, out: Any) -> Answer:
        return call[1], as_message(out, call[0])

    return CascadeDriver(plan, start=start, finish=finish, read=_read)


def _returned(driver: Driver, result: CascadeResult, answer: Answer) -> BaseMessage:
    """The message of the answer the plan returns, with every step in its scope metadata."""
    run_id, message = answer
    summary = result.summary()
    for s in summary["steps"]:
        done = driver.replies.get(s["model"])
        s["run_id"] = str(done[0]) if done is not None and not s["error"] else None
        if s["error"]:
            s["error"] = redact(s["error"])
    failures = [Failure(m, e) for m, e in driver.errors]
    meta = scope_metadata(driver.plan.decision, run_id, failures, result.cost)
    meta.update(model=result.model, actual_cost=result.cost, cascade=_json_safe(summary))
    return with_scope(message, meta)


def run(d: Dispatcher, p: Prepared, config: RunnableConfig, kwargs: Mapping[str, Any]) -> BaseMessage:
    """Drive one call's cascade to its end (transient errors retried per step); the returned answer's message."""
    plan = d.cascade_of(p).start(d.engine, p.question, input_tokens=p.input_tokens, options=p.settings)
    driver = _driver(d, p, config, plan)

    def ask(call: Step) -> Any:
        return Retrying(**d.recovery.retry_options())(d.models[call[0]].invoke, p.messages, call[2], **kwargs)

    return _returned(driver, *driver.run(ask))


async def arun(d: Dispatcher, p: Prepared, config: RunnableConfig, kwargs: Mapping[str, Any]) -> BaseMessage:
    """Async form of :func:`run`."""
    plan = await d.cascade_of(p).astart(d.engine, p.question, input_tokens=p.input_tokens, options=p.settings)
    driver = _driver(d, p, config, plan)

    async def ask(call: Step) -> Any:
        return await AsyncRetrying(**d.recovery.retry_options())(
            d.models[call[0]].ainvoke, p.messages, call[2], **kwargs
        )

    return _returned(driver, *await driver.arun(ask))


def as_one_chunk(message: BaseMessage) -> BaseMessageChunk:
    """The cascade's answer as the single chunk a stream yields."""
    return AIMessageChunk(
        content=message.content,
        response_metadata=dict(message.response_metadata),
        usage_metadata=getattr(message, "usage_metadata", None),
        id=message.id,
    )
