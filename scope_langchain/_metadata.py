"""What the router writes into LangChain's run metadata and response metadata."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig

from scope_langchain._redact import describe, redact
from scope_langchain._retry import Failure
from scope_shared import Decision

#: Metadata keys set on the chosen model's run, read by :class:`ScopeOutcomeHandler`.
META_MODEL = "scope_model"
META_RESERVATION = "scope_reservation_id"
META_QUESTION = "scope_question"

M = TypeVar("M", bound=BaseMessage)


def child_config(config: RunnableConfig, decision: Decision, run_id: uuid.UUID, question: str | None) -> RunnableConfig:
    """The chosen model's config: its own run id, and metadata naming the decision for the handler.

    ``question`` is set when the router routed on another text than the handler's default rule would read.
    """
    meta: dict[str, Any] = {**(config.get("metadata") or {}), META_MODEL: decision.model}
    if decision.reservation_id:
        meta[META_RESERVATION] = decision.reservation_id
    if question is not None:
        meta[META_QUESTION] = question
    child: RunnableConfig = {**config, "metadata": meta, "run_id": run_id}
    child.pop("run_name", None)
    return child


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def scope_metadata(
    decision: Decision, run_id: uuid.UUID, failures: Sequence[Failure], cost: float | None
) -> dict[str, Any]:
    """What goes into ``response_metadata["scope"]``: the decision's summary, the chosen model's run id,
    the models that failed before it (each error's type and its message with credentials masked) and the real
    cost (when the model reported its usage)."""
    meta: dict[str, Any] = _json_safe(decision.summary())
    if isinstance(meta.get("reason"), str):
        meta["reason"] = redact(meta["reason"])
    meta["run_id"] = str(run_id)
    meta["failed"] = [{"model": f.model, "error": describe(f.error)} for f in failures]
    if cost is not None:
        meta["actual_cost"] = cost
    return meta


def with_scope(message: M, scope: Mapping[str, Any]) -> M:
    """A copy of ``message`` with ``scope`` in its ``response_metadata``, and ``model_name`` set to the chosen
    model (the name of its card; the wrapped model's own run keeps what its provider reported)."""
    meta = {**message.response_metadata, "model_name": scope["model"], "scope": dict(scope)}
    return message.model_copy(update={"response_metadata": meta})


def without_model_name(chunk: M) -> M:
    """A streamed chunk after the first: ``model_name`` is on the first chunk only (merged chunks concatenate
    strings, so a second one would garble it)."""
    if "model_name" not in chunk.response_metadata:
        return chunk
    meta = {k: v for k, v in chunk.response_metadata.items() if k != "model_name"}
    return chunk.model_copy(update={"response_metadata": meta})
