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
from scope_langchain._metadata import _json_safe, with_scope
from scope_langchain._retry import Failure
from scope_shared.cascade import CascadePlan, CascadeResult, CascadeStep

Answers = dict[str, tuple[uuid.UUID, BaseMessage]]


def logprobs_of(message: BaseMessage) -> list[float] | None:
    """The token log-probabilities a message carries (OpenAI's ``response_metadata["logprobs"]``), if any."""
    found = message.response_metadata.get("logprobs") if message.response_metadata else None
    content = found.get("content") if isinstance(found, Mapping) else found
    if not isinstance(content, list):
        return None
    values = [t.get("logprob") for t in content if isinstance(t, Mapping)]
    floats = [float(v) for v in values if isinstance(v, int | float)]
    return floats or None


def _observe(plan: CascadePlan, step: CascadeStep, run_id: uuid.UUID, message: BaseMessage, answers: Answers) -> Any:
    answers[step.model] = (run_id, message)
    usage = usage_of(message)
    return plan.observe(
        step.model,
        message_text(message),
        input_tokens=usage["input_tokens"] if usage else None,
        output_tokens=usage["output_tokens"] if usage else None,
        logprobs=logprobs_of(message),
    )


def _returned(plan: CascadePlan, result: CascadeResult, answers: Answers, failures: list[Failure]) -> BaseMessage:
    """The message of the answer the plan returns, with every step in its scope metadata."""
    if result.model is None or result.model not in answers:
        if failures:
            raise failures[0].error
        msg = f"the cascade returned no answer ({result.stop_reason})"
        raise RuntimeError(msg)
    run_id, message = answers[result.model]
    meta: dict[str, Any] = _json_safe(plan.decision.summary())
    summary = result.summary()
    for s in summary["steps"]:
        done = answers.get(s["model"])
        s["run_id"] = str(done[0]) if done is not None and not s["error"] else None
    meta.update(
        model=result.model,
        run_id=str(run_id),
        failed=[{"model": f.model, "error": f"{type(f.error).__name__}: {f.error}"} for f in failures],
        actual_cost=result.cost,
        cascade=_json_safe(summary),
    )
    return with_scope(message, meta)


def run(d: Dispatcher, p: Prepared, config: RunnableConfig, kwargs: Mapping[str, Any]) -> BaseMessage:
    """Drive one call's cascade to its end; the returned answer's message."""
    plan = d.cascade_of(p).start(d.engine, p.question, input_tokens=p.input_tokens, options=p.settings)
    answers: Answers = {}
    failures: list[Failure] = []
    step: CascadeStep | CascadeResult = plan.first
    try:
        while isinstance(step, CascadeStep):
            run_id = uuid.uuid4()
            child = d.child_config(config, p, step.decision, run_id)
            model = d.models[step.model]
            try:
                out = Retrying(**d.recovery.retry_options())(model.invoke, p.messages, child, **kwargs)
            except Exception as exc:
                failures.append(Failure(step.model, exc))
                step = plan.fail(step.model, exc)
                continue
            step = _observe(plan, step, run_id, as_message(out, step.model), answers)
    except BaseException:
        plan.cancel()
        raise
    return _returned(plan, step, answers, failures)


async def arun(d: Dispatcher, p: Prepared, config: RunnableConfig, kwargs: Mapping[str, Any]) -> BaseMessage:
    """Async form of :func:`run`."""
    plan = await d.cascade_of(p).astart(d.engine, p.question, input_tokens=p.input_tokens, options=p.settings)
    answers: Answers = {}
    failures: list[Failure] = []
    step: CascadeStep | CascadeResult = plan.first
    try:
        while isinstance(step, CascadeStep):
            run_id = uuid.uuid4()
            child = d.child_config(config, p, step.decision, run_id)
            model = d.models[step.model]
            try:
                retrying = AsyncRetrying(**d.recovery.retry_options())
                out: Any = await retrying(model.ainvoke, p.messages, child, **kwargs)
            except Exception as exc:
                failures.append(Failure(step.model, exc))
                step = plan.fail(step.model, exc)
                continue
            step = _observe(plan, step, run_id, as_message(out, step.model), answers)
    except BaseException:
        plan.cancel()
        raise
    return _returned(plan, step, answers, failures)


def as_one_chunk(message: BaseMessage) -> BaseMessageChunk:
    """The cascade's answer as the single chunk a stream yields."""
    return AIMessageChunk(
        content=message.content,
        response_metadata=dict(message.response_metadata),
        usage_metadata=getattr(message, "usage_metadata", None),
        id=message.id,
    )
