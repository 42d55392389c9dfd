"""``ScopeOutcomeHandler``: records each routed call's real outcome into the anchor store.

The loop it closes: a call is routed -> the chosen model answers -> its real token usage settles the budget
-> its correctness (from a grader now, or from feedback later) is written through ``engine.record`` -> the
next similar question is estimated from it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from scope_langchain._messages import last_question
from scope_langchain._metadata import META_MODEL, META_QUESTION, META_RESERVATION
from scope_shared import ConfigError, ScopeEngine
from scope_shared.feedback import FeedbackBook, FeedbackCounts, FinishedCall, Grader, reported_tokens

__all__ = ["Grader", "ScopeOutcomeHandler"]

logger = logging.getLogger(__name__)

_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class _Run:
    model: str
    question: str
    reservation_id: str | None
    parent: uuid.UUID | None


class ScopeOutcomeHandler(FeedbackCounts, BaseCallbackHandler):
    """Records the outcome of every routed chat-model call through ``engine.record``.

    Attach it like any callback handler: ``chain.invoke(x, config={"callbacks": [handler]})`` or
    ``router.with_config(callbacks=[handler])``. It acts on chat-model runs the router started (metadata
    ``scope_model``) and on direct calls of a chat model whose ``ls_model_name`` is one of the engine's cards.

    On ``on_llm_end`` it reads the real ``usage_metadata`` (or ``llm_output["token_usage"]``) and settles
    the call's budget reservation with the real cost. Correctness comes from ``grader(question, answer)``,
    when given, and the outcome is recorded at once; otherwise, or when the grader returns None, the call
    waits for :meth:`record_feedback` (at most ``max_pending`` calls wait; the oldest is dropped, with a
    warning). The bookkeeping is :class:`scope_shared.feedback.FeedbackBook`, shared with the LlamaIndex
    handler.

    Each run is recorded at most once. The handler is thread-safe, works under sync and async chains (the
    callback manager runs it in a worker thread there), and never raises into the chain: a failure to
    record is logged (``scope_shared.feedback``) and the call's result is untouched.

    Args:
        engine: the engine whose store learns the outcomes (the router's engine).
        grader: optional :data:`~scope_shared.feedback.Grader`, ``(question, answer) -> float | bool | None``.
        max_pending: calls kept waiting for feedback.
    """

    raise_error = False

    def __init__(self, *, engine: ScopeEngine, grader: Grader | None = None, max_pending: int = 10_000) -> None:
        self._book = FeedbackBook(engine=engine, grader=grader, max_pending=max_pending)
        self.engine = engine
        self.grader = grader
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._parents: OrderedDict[uuid.UUID, uuid.UUID | None] = OrderedDict()
        self._runs: OrderedDict[uuid.UUID, _Run] = OrderedDict()

    def __repr__(self) -> str:
        return f"ScopeOutcomeHandler(recorded={self.recorded}, pending={self.pending}, failures={self.failures})"

    # -- bookkeeping ------------------------------------------------------------------------------

    def _put(self, table: OrderedDict[uuid.UUID, Any], key: uuid.UUID, value: Any, limit: int) -> None:
        with self._lock:
            table[key] = value
            table.move_to_end(key)
            while len(table) > limit:
                table.popitem(last=False)

    def _model_of(self, metadata: dict[str, Any]) -> str | None:
        name = metadata.get(META_MODEL)
        if isinstance(name, str):
            return name
        name = metadata.get("ls_model_name")
        return name if isinstance(name, str) and name in self.engine.models else None

    # -- callbacks -------------------------------------------------------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: uuid.UUID,
        parent_run_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._put(self._parents, run_id, parent_run_id, 8 * self.max_pending)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: uuid.UUID,
        parent_run_id: uuid.UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            meta = metadata or {}
            self._put(self._parents, run_id, parent_run_id, 8 * self.max_pending)
            if (kwargs.get("invocation_params") or {}).get("_type") == "scope-router":
                return  # a ScopeChatModel's own run: the chosen model's run below it is the one recorded
            model = self._model_of(meta)
            if model is None or not messages:
                return
            question = meta.get(META_QUESTION)
            if not isinstance(question, str):
                question = last_question(messages[0])
            reservation = meta.get(META_RESERVATION)
            run = _Run(model, question, reservation if isinstance(reservation, str) else None, parent_run_id)
            self._put(self._runs, run_id, run, self.max_pending)
        except Exception:
            self._book.note_failure()
            logger.warning("could not track chat model run %s", run_id, exc_info=True)

    def on_llm_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def on_llm_end(self, response: LLMResult, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        try:
            with self._lock:
                run = self._runs.pop(run_id, None)
            if run is not None:
                self._on_end(run_id, run, response)
        except Exception:
            self._book.note_failure()
            logger.warning("could not record the outcome of run %s", run_id, exc_info=True)

    def _on_end(self, run_id: uuid.UUID, run: _Run, response: LLMResult) -> None:
        gen = response.generations[0][0] if response.generations and response.generations[0] else None
        if gen is None:
            logger.warning("run %s of %s ended without a generation; nothing recorded", run_id, run.model)
            return
        in_tok, out_tok = _tokens(gen, response)
        call = FinishedCall(
            call_id=str(run_id),
            question=run.question,
            model=run.model,
            answer=gen.text,
            input_tokens=in_tok,
            output_tokens=out_tok,
            parent=str(run.parent) if run.parent is not None else None,
        )
        if self._book.seen(call.call_id):
            return
        if run.reservation_id is not None and in_tok is not None and out_tok is not None:
            self.engine.settle(run.reservation_id, model=run.model, input_tokens=in_tok, output_tokens=out_tok)
        self._book.finish(call)

    # -- feedback --------------------------------------------------------------------------------

    def _descends(self, ancestor: uuid.UUID, parent: str | None) -> bool:
        node, depth = uuid.UUID(parent) if parent else None, 0
        with self._lock:
            while node is not None and depth < _MAX_DEPTH:
                if node == ancestor:
                    return True
                node, depth = self._parents.get(node), depth + 1
        return False

    def record_feedback(self, run: uuid.UUID | str | BaseMessage, correct: float | bool) -> int:
        """Record the correctness of a finished call; returns how many outcomes were recorded.

        ``run`` is the routed call's run id (``response_metadata["scope"]["run_id"]``), the message itself,
        or the id of any run above it (e.g. the ``run_id`` you passed in the chain's config): every call
        waiting under it gets this grade. A run already recorded is not recorded again (returns 0).

        Raises:
            ConfigError: ``correct`` is not in [0, 1] or ``run`` is not a run id.
        """
        target = _run_id_of(run)
        waiting = self._book.waiting()
        ids = [c.call_id for c in waiting if c.call_id == str(target)]
        if not ids:
            ids = [c.call_id for c in waiting if self._descends(target, c.parent)] or [str(target)]
        return self._book.feedback(ids, correct)

    async def arecord_feedback(self, run: uuid.UUID | str | BaseMessage, correct: float | bool) -> int:
        """Async form of :meth:`record_feedback` (the store write runs in a worker thread)."""
        return await asyncio.to_thread(self.record_feedback, run, correct)


def _run_id_of(run: uuid.UUID | str | BaseMessage) -> uuid.UUID:
    if isinstance(run, uuid.UUID):
        return run
    if isinstance(run, BaseMessage):
        scope = run.response_metadata.get("scope")
        if isinstance(scope, dict) and scope.get("run_id"):
            return _run_id_of(str(scope["run_id"]))
        if run.id:
            return _run_id_of(run.id)
        msg = "the message has neither response_metadata['scope']['run_id'] nor an id"
        raise ConfigError(msg)
    if isinstance(run, str):
        text = run
        for prefix in ("lc_run--", "run-"):  # LangChain's message ids embed the run id
            if text.startswith(prefix):
                text = text[len(prefix) :]
        try:
            return uuid.UUID(text[:36])
        except ValueError:
            pass
    msg = f"not a run id: {run!r}; pass a UUID, its string, or the routed message"
    raise ConfigError(msg)


def _tokens(gen: Any, response: LLMResult) -> tuple[int | None, int | None]:
    if isinstance(gen, ChatGeneration):
        usage = getattr(gen.message, "usage_metadata", None)
        if usage:
            return int(usage["input_tokens"]), int(usage["output_tokens"])
    inp, out = reported_tokens((response.llm_output or {}).get("token_usage"))
    return (inp, out) if inp is not None and out is not None else (None, None)
