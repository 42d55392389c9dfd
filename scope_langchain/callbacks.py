"""``ScopeOutcomeHandler``: records each routed call's real outcome into the anchor store.

The loop it closes: a call is routed -> the chosen model answers -> its real token usage settles the budget
-> its correctness (from a grader now, or from feedback later) is written through ``engine.record`` -> the
next similar question is estimated from it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from scope_langchain._messages import last_question
from scope_langchain._metadata import META_MODEL, META_QUESTION, META_RESERVATION
from scope_shared import ConfigError, Outcome, ScopeEngine

__all__ = ["Grader", "ScopeOutcomeHandler"]

logger = logging.getLogger(__name__)

Grader = Callable[[str, str], float]
"""``grader(question, answer_text) -> correctness in [0, 1]``."""

_MAX_DEPTH = 64


@dataclass(slots=True)
class _Run:
    model: str
    question: str
    reservation_id: str | None
    parent: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class _Ended:
    model: str
    question: str
    input_tokens: int | None
    output_tokens: int | None
    parent: uuid.UUID | None


class ScopeOutcomeHandler(BaseCallbackHandler):
    """Records the outcome of every routed chat-model call through ``engine.record``.

    Attach it like any callback handler: ``chain.invoke(x, config={"callbacks": [handler]})`` or
    ``router.with_config(callbacks=[handler])``. It acts on chat-model runs the router started (metadata
    ``scope_model``) and on direct calls of a chat model whose ``ls_model_name`` is one of the engine's cards.

    On ``on_llm_end`` it reads the real ``usage_metadata`` (or ``llm_output["token_usage"]``) and settles
    the call's budget reservation with the real cost. Correctness comes from ``grader(question, answer)``,
    when given, and the outcome is recorded at once; otherwise the call waits for
    :meth:`record_feedback` (at most ``max_pending`` calls wait; the oldest is dropped, with a warning).

    Each run is recorded at most once. The handler is thread-safe, works under sync and async chains (the
    callback manager runs it in a worker thread there), and never raises into the chain: a failure to
    record is logged (``scope_langchain.callbacks``) and the call's result is untouched.

    Args:
        engine: the engine whose store learns the outcomes (the router's engine).
        grader: optional ``(question, answer_text) -> float in [0, 1]``.
        max_pending: calls kept waiting for feedback.
    """

    raise_error = False

    def __init__(self, *, engine: ScopeEngine, grader: Grader | None = None, max_pending: int = 10_000) -> None:
        if not isinstance(engine, ScopeEngine):
            msg = f"engine must be a ScopeEngine, got {type(engine).__name__}"
            raise ConfigError(msg)
        if grader is not None and not callable(grader):
            msg = f"grader must be callable (question, answer) -> float, got {type(grader).__name__}"
            raise ConfigError(msg)
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            msg = f"max_pending must be an int >= 1, got {max_pending!r}"
            raise ConfigError(msg)
        self.engine = engine
        self.grader = grader
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._parents: OrderedDict[uuid.UUID, uuid.UUID | None] = OrderedDict()
        self._runs: OrderedDict[uuid.UUID, _Run] = OrderedDict()
        self._pending: OrderedDict[uuid.UUID, _Ended] = OrderedDict()
        self._done: OrderedDict[uuid.UUID, float] = OrderedDict()
        self.recorded = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"ScopeOutcomeHandler(recorded={self.recorded}, pending={self.pending}, failures={self.failures})"

    @property
    def pending(self) -> int:
        """Calls that ended and wait for :meth:`record_feedback`."""
        with self._lock:
            return len(self._pending)

    # -- bookkeeping ------------------------------------------------------------------------------

    def _bounded_put(self, table: OrderedDict[uuid.UUID, Any], key: uuid.UUID, value: Any, limit: int) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > limit:
            old, _ = table.popitem(last=False)
            if table is self._pending:
                logger.warning("run %s waited too long for feedback and was dropped (max_pending=%d)", old, limit)

    def _fail(self) -> None:
        with self._lock:
            self.failures += 1

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
        with self._lock:
            self._bounded_put(self._parents, run_id, parent_run_id, 8 * self.max_pending)

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
            with self._lock:
                self._bounded_put(self._parents, run_id, parent_run_id, 8 * self.max_pending)
            model = self._model_of(meta)
            if model is None or not messages:
                return
            question = meta.get(META_QUESTION)
            if not isinstance(question, str):
                question = last_question(messages[0])
            reservation = meta.get(META_RESERVATION)
            run = _Run(model, question, reservation if isinstance(reservation, str) else None, parent_run_id)
            with self._lock:
                self._bounded_put(self._runs, run_id, run, self.max_pending)
        except Exception:
            self._fail()
            logger.warning("could not track chat model run %s", run_id, exc_info=True)

    def on_llm_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def on_llm_end(self, response: LLMResult, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        try:
            with self._lock:
                run = self._runs.pop(run_id, None)
                if run is None or run_id in self._done or run_id in self._pending:
                    return
            self._on_end(run_id, run, response)
        except Exception:
            self._fail()
            logger.warning("could not record the outcome of run %s", run_id, exc_info=True)

    def _on_end(self, run_id: uuid.UUID, run: _Run, response: LLMResult) -> None:
        gen = response.generations[0][0] if response.generations and response.generations[0] else None
        if gen is None:
            logger.warning("run %s of %s ended without a generation; nothing recorded", run_id, run.model)
            return
        in_tok, out_tok = _tokens(gen, response)
        if run.reservation_id is not None and in_tok is not None and out_tok is not None:
            self.engine.settle(run.reservation_id, model=run.model, input_tokens=in_tok, output_tokens=out_tok)
        ended = _Ended(run.model, run.question, in_tok, out_tok, run.parent)
        if self.grader is not None:
            try:
                correct = _check_correct(self.grader(run.question, gen.text))
            except Exception:
                self._fail()
                logger.warning("grader failed on run %s; it waits for feedback instead", run_id, exc_info=True)
            else:
                with self._lock:
                    if run_id in self._done:
                        return
                    self._bounded_put(self._done, run_id, time.monotonic(), 4 * self.max_pending)
                self._record(run_id, ended, correct)
                return
        with self._lock:
            self._bounded_put(self._pending, run_id, ended, self.max_pending)

    def _record(self, run_id: uuid.UUID, ended: _Ended, correct: float) -> bool:
        try:
            outcome = Outcome(
                query=ended.question,
                model=ended.model,
                correct=correct,
                input_tokens=ended.input_tokens,
                output_tokens=ended.output_tokens,
            )
            self.engine.record(outcome)
        except Exception:
            self._fail()
            logger.warning("could not record the outcome of run %s (%s)", run_id, ended.model, exc_info=True)
            return False
        with self._lock:
            self.recorded += 1
        logger.debug("recorded %s on run %s: correct=%s", ended.model, run_id, correct)
        return True

    # -- feedback --------------------------------------------------------------------------------

    def _descends(self, run_id: uuid.UUID, ancestor: uuid.UUID, parent: uuid.UUID | None) -> bool:
        node, depth = parent, 0
        while node is not None and depth < _MAX_DEPTH:
            if node == ancestor:
                return True
            node, depth = self._parents.get(node), depth + 1
        return False

    def record_feedback(self, run: uuid.UUID | str | BaseMessage, correct: float) -> int:
        """Record the correctness of a finished call; returns how many outcomes were recorded.

        ``run`` is the routed call's run id (``response_metadata["scope"]["run_id"]``), the message itself,
        or the id of any run above it (e.g. the ``run_id`` you passed in the chain's config): every call
        waiting under it gets this grade. A run already recorded is not recorded again (returns 0).

        Raises:
            ConfigError: ``correct`` is not in [0, 1] or ``run`` is not a run id.
        """
        correct = _check_correct(correct)
        target = _run_id_of(run)
        with self._lock:
            if target in self._pending:
                picked = [target]
            else:
                picked = [rid for rid, e in self._pending.items() if self._descends(rid, target, e.parent)]
            taken = [(rid, self._pending.pop(rid)) for rid in picked]
            for rid, _ in taken:
                self._bounded_put(self._done, rid, time.monotonic(), 4 * self.max_pending)
            already = not taken and target in self._done
        if not taken:
            if already:
                logger.info("run %s was already recorded; feedback ignored", target)
            else:
                logger.warning("no finished routed call is waiting for feedback under run %s", target)
            return 0
        return sum(self._record(rid, ended, correct) for rid, ended in taken)

    async def arecord_feedback(self, run: uuid.UUID | str | BaseMessage, correct: float) -> int:
        """Async form of :meth:`record_feedback` (the store write runs in a worker thread)."""
        return await asyncio.to_thread(self.record_feedback, run, correct)


def _check_correct(value: Any) -> float:
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, int | float) or math.isnan(value) or not 0.0 <= value <= 1.0:
        msg = f"correct must be a number in [0, 1], got {value!r}"
        raise ConfigError(msg)
    return float(value)


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
    usage_dict = (response.llm_output or {}).get("token_usage") or {}
    if isinstance(usage_dict, dict) and "prompt_tokens" in usage_dict and "completion_tokens" in usage_dict:
        return int(usage_dict["prompt_tokens"]), int(usage_dict["completion_tokens"])
    return None, None
