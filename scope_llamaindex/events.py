"""Outcomes back into the anchor store: a LlamaIndex instrumentation event handler.

Two kinds of routed calls reach :class:`ScopeEventHandler`:

- a :class:`~scope_llamaindex.ScopeLLM` call, announced by one :class:`ScopeCallEvent` carrying the decision,
  the real token counts and the answer (ScopeLLM has already settled its budget reservation); an agent's
  step that answered with tool calls records no outcome (the step after the tool results does);
- a :class:`~scope_llamaindex.ScopeSelector` selection. The selector opens a *ticket* per selected model
  (:mod:`scope_llamaindex._tickets`); the handler attributes every LLM call that starts in that context on
  the selected model (its ``metadata.model_name``, or an alias) to it, which settles or charges the budget
  through the engine. The router's ``QueryEndEvent`` (whose response carries the ``selector_result``) closes
  the ticket; a ticket that saw no LLM call releases its reservation.

Each finished call goes to a :class:`~scope_shared.feedback.FeedbackBook` (shared with the LangChain
handler): graded by ``grader`` if one is given; otherwise, or when the grader returns None, it waits for
:meth:`ScopeEventHandler.feedback`. Graded outcomes go to ``engine.record``. The handler is idempotent (a
repeated event or feedback records once), thread-safe, and never raises into the user's query: its own
failures are logged.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.dispatcher import Dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.instrumentation.events.query import QueryEndEvent

from scope_llamaindex._responses import measure, prompt_of
from scope_llamaindex._tickets import Ticket, active_tickets, call_ids_of, find_ticket
from scope_shared import ConfigError, Decision, ScopeEngine, UnknownModelError
from scope_shared.feedback import FeedbackBook, FeedbackCounts, FinishedCall, Grader

__all__ = ["Grader", "ScopeCallEvent", "ScopeEventHandler"]

logger = logging.getLogger(__name__)

_REGISTRY_LOCK = threading.Lock()


class ScopeCallEvent(BaseEvent):
    """Emitted by :class:`~scope_llamaindex.ScopeLLM` when a routed call has finished and been settled.

    Token counts are the provider's when ``usage_reported``; otherwise estimated from the text length.
    ``tool_calls`` counts the tool calls in the answer of a ``chat_with_tools`` call: such a step of an agent
    is not an answer to the question, so no outcome is recorded for it.
    """

    call_id: str
    query: str
    model: str
    answer: str
    input_tokens: int
    output_tokens: int
    usage_reported: bool
    cost: float
    decision: Decision
    tool_calls: int = 0

    @classmethod
    def class_name(cls) -> str:
        return "ScopeCallEvent"


class ScopeEventHandler(FeedbackCounts, BaseEventHandler):
    """Records real outcomes of routed calls through ``engine.record``.

    Register it on LlamaIndex's root dispatcher (``handler.register()``, or ``with handler:``); both are
    idempotent.

    Args:
        engine: where outcomes are recorded (``engine.record``). It may be the routing engine, or a separate
            one over another store when the routing store must not change (replay evaluation).
        grader: :data:`~scope_shared.feedback.Grader`, ``grader(question, answer) -> float | bool | None``;
            without one, or when it returns None, outcomes wait for :meth:`feedback`.
        aliases: LLM ``metadata.model_name`` -> engine model name, for a selected query engine whose LLM
            reports a different name than its tool.
        max_pending: outcomes kept waiting for feedback; the oldest is dropped (and logged) beyond it.
    """

    engine: ScopeEngine = Field(exclude=True)
    grader: Grader | None = Field(default=None, exclude=True)
    aliases: dict[str, str] = Field(default_factory=dict)
    max_pending: int = 10_000

    _book: FeedbackBook = PrivateAttr()
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _seen: OrderedDict[str, None] = PrivateAttr(default_factory=OrderedDict)
    _spans: OrderedDict[str | None, Ticket] = PrivateAttr(default_factory=OrderedDict)

    def __init__(
        self,
        *,
        engine: ScopeEngine,
        grader: Grader | None = None,
        aliases: Mapping[str, str] | None = None,
        max_pending: int = 10_000,
    ) -> None:
        book = FeedbackBook(engine=engine, grader=grader, max_pending=max_pending)
        for llm_name, model in (aliases or {}).items():
            try:
                engine.card(model)
            except UnknownModelError:
                known = sorted(engine.models)
                msg = f"alias {llm_name!r} -> {model!r}: not a model of the engine; known: {known}"
                raise UnknownModelError(msg) from None
        fields: dict[str, Any] = {
            "engine": engine,
            "grader": grader,
            "aliases": dict(aliases or {}),
            "max_pending": max_pending,
        }
        super().__init__(**fields)
        self._book = book

    @classmethod
    def class_name(cls) -> str:
        return "ScopeEventHandler"

    # -- registration --------------------------------------------------------------------------

    def register(self, dispatcher: Dispatcher | None = None) -> ScopeEventHandler:
        """Add this handler to ``dispatcher`` (default: the root one) unless it is already there."""
        d = dispatcher or get_dispatcher()
        with _REGISTRY_LOCK:
            if not any(h is self for h in d.event_handlers):
                d.add_event_handler(self)
        return self

    def unregister(self, dispatcher: Dispatcher | None = None) -> bool:
        """Remove this handler from ``dispatcher`` (default: the root one); False if it was not there."""
        d = dispatcher or get_dispatcher()
        with _REGISTRY_LOCK:
            kept = [h for h in d.event_handlers if h is not self]
            removed = len(kept) != len(d.event_handlers)
            d.event_handlers = kept
        return removed

    def __enter__(self) -> ScopeEventHandler:
        return self.register()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unregister()

    # -- events --------------------------------------------------------------------------------

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        try:
            if not self._first_time(event.id_):
                return
            if isinstance(event, ScopeCallEvent):
                self._on_call(event)
            elif isinstance(event, LLMChatStartEvent | LLMCompletionStartEvent):
                self._on_llm_start(event)
            elif isinstance(event, LLMChatEndEvent | LLMCompletionEndEvent):
                self._on_llm_end(event)
            elif isinstance(event, QueryEndEvent):
                self._on_query_end(event)
        except Exception:
            self._book.note_failure()
            logger.warning(
                "ScopeEventHandler failed on %s; the query is unaffected", type(event).__name__, exc_info=True
            )

    def _first_time(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._seen:
                return False
            self._seen[event_id] = None
            while len(self._seen) > 4 * self.max_pending:
                self._seen.popitem(last=False)
            return True

    def _on_call(self, event: ScopeCallEvent) -> None:
        if event.tool_calls:
            logger.debug(
                "call %s (%s) asked for %d tool call(s): no outcome", event.call_id, event.model, event.tool_calls
            )
            return
        call = FinishedCall(
            call_id=event.call_id,
            question=event.query,
            model=event.model,
            answer=event.answer,
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
        )
        self._book.finish(call)

    def _on_llm_start(self, event: LLMChatStartEvent | LLMCompletionStartEvent) -> None:
        active = active_tickets()
        if not active:
            return
        name = event.model_dict.get("model_name") or event.model_dict.get("model")
        name = self.aliases.get(str(name), str(name))
        match = next((t for t in active if t.model == name), None)
        if match is None:
            logger.debug(
                "LLM call on %r during a selection of %s: not attributed (set aliases= if it is one of them)",
                name,
                [t.model for t in active],
            )
            return
        with self._lock:
            self._spans[event.span_id] = match
            while len(self._spans) > self.max_pending:
                self._spans.popitem(last=False)

    def _on_llm_end(self, event: LLMChatEndEvent | LLMCompletionEndEvent) -> None:
        with self._lock:
            ticket = self._spans.pop(event.span_id, None)
        response = event.response
        if ticket is None or response is None:
            return
        prompt = event.prompt if isinstance(event, LLMCompletionEndEvent) else prompt_of(event.messages)
        used = measure(response, prompt, lambda text: int(ticket.engine.estimate_tokens(text)))
        ticket.attribute(used, getattr(response, "raw", None))

    def _on_query_end(self, event: QueryEndEvent) -> None:
        response = event.response
        tickets = [t for t in (find_ticket(i) for i in call_ids_of(response)) if t is not None]
        final = getattr(response, "response", None)
        for ticket in tickets:
            if not ticket.close():
                continue
            if ticket.calls == 0:
                logger.warning(
                    "no LLM call of %r was seen for the selection of query %.60r; recording its outcome "
                    "without token counts (set aliases= if its LLM reports another model_name)",
                    ticket.model,
                    ticket.query,
                )
            answer = final if isinstance(final, str) and len(tickets) == 1 else ticket.answer
            self._book.finish(ticket.finished(answer))

    # -- feedback ------------------------------------------------------------------------------

    def feedback(self, call: Any, *, correct: float | bool, model: str | None = None) -> int:
        """Grade calls waiting for feedback and record them; returns how many were recorded.

        Args:
            call: a call id, a ScopeLLM response (its ``additional_kwargs["scope"]``), a router's ``Response``
                or ``SelectorResult``, or a :class:`~scope_llamaindex.ScopeSelection`.
            correct: the grade in [0, 1] (or a bool).
            model: with a multi-selection, the model the grade is for (default: every selected model).

        Calls already recorded or unknown are skipped (logged), so repeating feedback is harmless.

        Raises:
            ConfigError: ``correct`` is not a grade, or ``call`` names no call.
        """
        ids = call_ids_of(call)
        if not ids:
            msg = (
                f"no scope call id found in {type(call).__name__}; "
                "pass a ScopeLLM response, a router response, a selection or a call id"
            )
            raise ConfigError(msg)
        return self._book.feedback(ids, correct, model=model)
