"""Outcomes back into the anchor store: a LlamaIndex instrumentation event handler.

Two kinds of routed calls reach :class:`ScopeEventHandler`:

- a :class:`~scope_llamaindex.ScopeLLM` call, announced by one :class:`ScopeCallEvent` carrying the decision,
  the real token counts and the answer (ScopeLLM has already settled its budget reservation);
- a :class:`~scope_llamaindex.ScopeSelector` selection. The selector opens a *ticket* in the current context;
  every LLM call that starts in that context on the selected model (its ``metadata.model_name``, or an alias)
  is attributed to it: the first call's real cost settles the selection's reservation, later calls are
  charged to the budget. The router's ``QueryEndEvent`` (whose response carries the ``selector_result``)
  closes the ticket; a ticket that saw no LLM call releases its reservation.

When a call ends, the outcome (query, model, tokens) is graded by ``grader`` if one is given; otherwise, or
when the grader returns None, it waits for :meth:`ScopeEventHandler.feedback`. Graded outcomes go to
``engine.record``. The handler is idempotent (a repeated event or feedback records once), thread-safe, and
never raises into the user's query: its own failures are logged.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
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

from scope_shared import ConfigError, Decision, Outcome, ScopeEngine, ScopeError, UnknownModelError

__all__ = ["Grader", "ScopeCallEvent", "ScopeEventHandler", "usage_of"]

logger = logging.getLogger(__name__)

#: ``grader(query, answer, model) -> correctness in [0, 1]``, or None when it cannot tell (then the outcome
#: waits for :meth:`ScopeEventHandler.feedback`).
Grader = Callable[[str, str, str], "float | None"]

_INPUT_KEYS = ("prompt_tokens", "input_tokens")
_OUTPUT_KEYS = ("completion_tokens", "output_tokens")


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value < 0 or value != value or value != int(value):
        return None
    return int(value)


def _read_usage(source: Any) -> tuple[int | None, int | None]:
    if source is None:
        return None, None
    if not isinstance(source, Mapping):
        source = {k: getattr(source, k, None) for k in (*_INPUT_KEYS, *_OUTPUT_KEYS)}
    inp = next((c for c in (_count(source.get(k)) for k in _INPUT_KEYS) if c is not None), None)
    out = next((c for c in (_count(source.get(k)) for k in _OUTPUT_KEYS) if c is not None), None)
    return inp, out


def usage_of(response: Any) -> tuple[int | None, int | None]:
    """Prompt and completion tokens a LlamaIndex chat or completion response reports (None if not).

    Looks where integrations put them: ``additional_kwargs`` (OpenAI's ``prompt_tokens`` /
    ``completion_tokens``, Anthropic's ``input_tokens`` / ``output_tokens``), the message's
    ``additional_kwargs`` (chat responses converted from completions), then ``raw.usage``.
    """
    message = getattr(response, "message", None)
    raw = getattr(response, "raw", None)
    raw_usage = raw.get("usage") if isinstance(raw, Mapping) else getattr(raw, "usage", None)
    inp: int | None = None
    out: int | None = None
    for source in (
        getattr(response, "additional_kwargs", None),
        getattr(message, "additional_kwargs", None),
        raw_usage,
    ):
        i, o = _read_usage(source)
        inp = inp if inp is not None else i
        out = out if out is not None else o
    return inp, out


def text_of(response: Any) -> str:
    """The answer text of a chat or completion response."""
    message = getattr(response, "message", None)
    if message is not None:
        return str(getattr(message, "content", None) or "")
    return str(getattr(response, "text", None) or "")


class ScopeCallEvent(BaseEvent):
    """Emitted by :class:`~scope_llamaindex.ScopeLLM` when a routed call has finished and been settled.

    Token counts are the provider's when ``usage_reported``; otherwise estimated from the text length.
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

    @classmethod
    def class_name(cls) -> str:
        return "ScopeCallEvent"


@dataclass(eq=False)
class Ticket:
    """One routed call (a ScopeLLM call, or one model of a ScopeSelector selection) and what it used."""

    call_id: str
    decision: Decision
    model: str
    engine: ScopeEngine | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    calls_without_usage: int = 0
    cost: float = 0.0
    answer: str = ""
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    raws: list[Any] = field(default_factory=list, repr=False)

    @property
    def query(self) -> str:
        return self.decision.query

    def outcome(self, correct: float) -> Outcome:
        with self.lock:
            counted = self.calls > 0
            return Outcome(
                query=self.query,
                model=self.model,
                correct=correct,
                output_tokens=self.output_tokens if counted else None,
                input_tokens=self.input_tokens if counted else None,
            )


# Selector tickets open in the current context; read by the handler when an LLM call starts.
_ACTIVE: ContextVar[tuple[Ticket, ...]] = ContextVar("scope_llamaindex_active_tickets", default=())
# Every ticket still referenced (by a ScopeSelection), so a router's QueryEndEvent can find them by id.
_OPEN: weakref.WeakValueDictionary[str, Ticket] = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.Lock()
_REGISTRY_LOCK = threading.Lock()


def open_tickets(engine: ScopeEngine, decisions: Sequence[Decision]) -> list[Ticket]:
    """Open one ticket per selected decision and make them the current context's active tickets."""
    tickets = [Ticket(call_id=uuid.uuid4().hex, decision=d, model=d.model, engine=engine) for d in decisions]
    with _OPEN_LOCK:
        for t in tickets:
            _OPEN[t.call_id] = t
    _ACTIVE.set(tuple(tickets))
    return tickets


def find_ticket(call_id: str) -> Ticket | None:
    with _OPEN_LOCK:
        return _OPEN.get(call_id)


def close_ticket(ticket: Ticket) -> bool:
    """Close a selector ticket; releases its reservation if no LLM call was attributed. False if closed."""
    with ticket.lock:
        if ticket.closed:
            return False
        ticket.closed = True
        unused = ticket.calls == 0
    if unused and ticket.engine is not None and ticket.decision.reservation_id is not None:
        ticket.engine.release(ticket.decision)
    return True


def call_ids_of(call: Any) -> list[str]:
    """The call ids a response, selection or id refers to."""
    if isinstance(call, str):
        return [call]
    call_id = getattr(call, "call_id", None)
    if isinstance(call_id, str):
        return [call_id]
    kwargs = getattr(call, "additional_kwargs", None)
    if isinstance(kwargs, Mapping) and isinstance(kwargs.get("scope"), Mapping):
        cid = kwargs["scope"].get("call_id")
        return [cid] if isinstance(cid, str) else []
    selections = getattr(call, "selections", None)
    if selections is None:
        metadata = getattr(call, "metadata", None)
        result = metadata.get("selector_result") if isinstance(metadata, Mapping) else None
        selections = getattr(result, "selections", None)
    if isinstance(selections, Iterable):
        return [s.call_id for s in selections if isinstance(getattr(s, "call_id", None), str)]
    return []


class ScopeEventHandler(BaseEventHandler):
    """Records real outcomes of routed calls through ``engine.record``.

    Register it on LlamaIndex's root dispatcher (``handler.register()``, or ``with handler:``); both are
    idempotent.

    Args:
        engine: where outcomes are recorded (``engine.record``). It may be the routing engine, or a separate
            one over another store when the routing store must not change (replay evaluation).
        grader: ``grader(query, answer, model) -> float | None``; without one, outcomes wait for
            :meth:`feedback`.
        aliases: LLM ``metadata.model_name`` -> engine model name, for a selected query engine whose LLM
            reports a different name than its tool.
        max_pending: outcomes kept waiting for feedback; the oldest is dropped (and logged) beyond it.
    """

    engine: ScopeEngine = Field(exclude=True)
    grader: Grader | None = Field(default=None, exclude=True)
    aliases: dict[str, str] = Field(default_factory=dict)
    max_pending: int = 10_000

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _pending: OrderedDict[str, Ticket] = PrivateAttr(default_factory=OrderedDict)
    _seen: OrderedDict[str, None] = PrivateAttr(default_factory=OrderedDict)
    _spans: OrderedDict[str | None, Ticket] = PrivateAttr(default_factory=OrderedDict)
    _claimed: OrderedDict[str, None] = PrivateAttr(default_factory=OrderedDict)
    _recorded: int = PrivateAttr(default=0)

    def __init__(
        self,
        *,
        engine: ScopeEngine,
        grader: Grader | None = None,
        aliases: Mapping[str, str] | None = None,
        max_pending: int = 10_000,
    ) -> None:
        if not isinstance(engine, ScopeEngine):
            msg = f"engine must be a ScopeEngine, got {type(engine).__name__}"
            raise ConfigError(msg)
        if grader is not None and not callable(grader):
            msg = "grader must be a callable grader(query, answer, model) -> float | None, or None"
            raise ConfigError(msg)
        if max_pending < 1:
            msg = f"max_pending must be >= 1, got {max_pending}"
            raise ConfigError(msg)
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

    # -- state ---------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Outcomes waiting for :meth:`feedback`."""
        with self._lock:
            return len(self._pending)

    @property
    def recorded(self) -> int:
        """Outcomes this handler has recorded."""
        with self._lock:
            return self._recorded

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
        ticket = Ticket(
            call_id=event.call_id,
            decision=event.decision,
            model=event.model,
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            calls=1,
            calls_without_usage=0 if event.usage_reported else 1,
            cost=event.cost,
            answer=event.answer,
            closed=True,
        )
        self._finish(ticket, event.answer)

    def _on_llm_start(self, event: LLMChatStartEvent | LLMCompletionStartEvent) -> None:
        active = [t for t in _ACTIVE.get() if not t.closed]
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
        raw = getattr(response, "raw", None)
        inp, out = usage_of(response)
        reported = inp is not None and out is not None
        answer = text_of(response)
        engine = ticket.engine
        if engine is None:
            return
        if inp is None:
            prompt = (
                event.prompt
                if isinstance(event, LLMCompletionEndEvent)
                else "\n".join(str(m.content or "") for m in event.messages)
            )
            inp = int(engine.estimate_tokens(prompt))
        if out is None:
            out = int(engine.estimate_tokens(answer))
        with ticket.lock:
            # A CustomLLM's chat() calls its complete(): both end events carry the same raw object.
            if raw is not None and any(r is raw for r in ticket.raws):
                return
            if raw is not None:
                ticket.raws.append(raw)
            first = ticket.calls == 0
            ticket.calls += 1
            ticket.input_tokens += inp
            ticket.output_tokens += out
            ticket.answer = answer
            if not reported:
                ticket.calls_without_usage += 1
            cost = engine.cost_of(ticket.model, input_tokens=inp, output_tokens=out)
            ticket.cost += cost
        if ticket.decision.reservation_id is None:
            return
        if first:
            engine.settle(ticket.decision, cost=cost)
        else:
            engine.charge(ticket.model, input_tokens=inp, output_tokens=out)

    def _on_query_end(self, event: QueryEndEvent) -> None:
        response = event.response
        metadata = getattr(response, "metadata", None)
        result = metadata.get("selector_result") if isinstance(metadata, Mapping) else None
        selections = getattr(result, "selections", None) or []
        ids = [s.call_id for s in selections if isinstance(getattr(s, "call_id", None), str)]
        tickets = [t for t in (find_ticket(i) for i in ids) if t is not None]
        final = getattr(response, "response", None)
        for ticket in tickets:
            if not close_ticket(ticket):
                continue
            if ticket.calls == 0:
                logger.warning(
                    "no LLM call of %r was seen for the selection of query %.60r; recording its outcome "
                    "without token counts (set aliases= if its LLM reports another model_name)",
                    ticket.model,
                    ticket.query,
                )
            answer = final if isinstance(final, str) and len(tickets) == 1 else ticket.answer
            self._finish(ticket, answer)

    # -- grading and recording -----------------------------------------------------------------

    def _finish(self, ticket: Ticket, answer: str) -> None:
        with self._lock:
            if ticket.call_id in self._claimed:
                return
            self._claimed[ticket.call_id] = None
            while len(self._claimed) > 4 * self.max_pending:
                self._claimed.popitem(last=False)
        grade = self._grade(ticket, answer)
        if grade is not None:
            self._record(ticket, grade)
            return
        with self._lock:
            self._pending[ticket.call_id] = ticket
            while len(self._pending) > self.max_pending:
                dropped, _ = self._pending.popitem(last=False)
                logger.warning(
                    "dropped the outcome of call %s: no feedback among the last %d", dropped, self.max_pending
                )

    def _grade(self, ticket: Ticket, answer: str) -> float | None:
        if self.grader is None:
            return None
        try:
            grade = self.grader(ticket.query, answer, ticket.model)
        except Exception:
            logger.warning(
                "grader failed on call %s; the outcome waits for feedback", ticket.call_id, exc_info=True
            )
            return None
        if grade is None:
            return None
        value = float(grade)
        if not 0.0 <= value <= 1.0:
            logger.warning(
                "grader returned %r for call %s, outside [0, 1]; the outcome waits for feedback",
                grade,
                ticket.call_id,
            )
            return None
        return value

    def _record(self, ticket: Ticket, correct: float) -> None:
        try:
            self.engine.record(ticket.outcome(correct))
        except ScopeError:
            logger.warning(
                "could not record the outcome of call %s (model %r)",
                ticket.call_id,
                ticket.model,
                exc_info=True,
            )
            return
        with self._lock:
            self._recorded += 1

    def feedback(self, call: Any, *, correct: float, model: str | None = None) -> int:
        """Grade calls waiting for feedback and record them; returns how many were recorded.

        Args:
            call: a call id, a ScopeLLM response (its ``additional_kwargs["scope"]``), a router's ``Response``
                or ``SelectorResult``, or a :class:`~scope_llamaindex.ScopeSelection`.
            correct: the grade in [0, 1].
            model: with a multi-selection, the model the grade is for (default: every selected model).

        Calls already recorded or unknown are skipped (logged), so repeating feedback is harmless.
        """
        value = float(correct)
        if not 0.0 <= value <= 1.0:
            msg = f"correct must be in [0, 1], got {correct!r}"
            raise ConfigError(msg)
        ids = call_ids_of(call)
        if not ids:
            msg = (
                f"no scope call id found in {type(call).__name__}; "
                "pass a ScopeLLM response, a router response, a selection or a call id"
            )
            raise ConfigError(msg)
        done = 0
        for call_id in ids:
            with self._lock:
                ticket = self._pending.get(call_id)
                if ticket is None or (model is not None and ticket.model != model):
                    ticket = None
                else:
                    del self._pending[call_id]
            if ticket is None:
                logger.info(
                    "no outcome of call %s waits for feedback (recorded already, or unknown)", call_id
                )
                continue
            self._record(ticket, value)
            done += 1
        return done
