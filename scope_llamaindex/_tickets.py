"""Tickets: which LLM calls belong to which :class:`~scope_llamaindex.ScopeSelector` selection, and what they
used and cost.

The selector opens one ticket per selected model in the current context (:func:`open_tickets`). While a
ticket is open, an LLM call that starts in that context on its model is attributed to it
(:meth:`Ticket.attribute`): the first call's real cost settles the selection's reservation, later calls are
charged to the budget, both through the engine. Closing a ticket that saw no LLM call releases its
reservation. The registry is module-global on purpose: the selector opens tickets and the event handler,
a separate object, finds them by call id when the router's query ends.

A retrieval makes no LLM call of its own, so nothing would ever settle a ``RouterRetriever`` selection:
:class:`SelectionCloser`, registered once on LlamaIndex's root dispatcher by the first
:class:`~scope_llamaindex.ScopeSelector`, closes the tickets opened during a retrieval when it ends, and those
opened during a retrieval or a query that raised (releasing what no LLM call used); the selection active
before the retrieval becomes active again.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.query import QueryEndEvent, QueryStartEvent
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent, RetrievalStartEvent
from llama_index.core.instrumentation.events.span import SpanDropEvent  # type: ignore[attr-defined]

from scope_llamaindex._responses import Measured
from scope_shared import Decision, ScopeEngine
from scope_shared.feedback import FinishedCall

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Ticket:
    """One model of a ScopeSelector selection and the LLM calls attributed to it."""

    call_id: str
    decision: Decision
    engine: ScopeEngine
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
    def model(self) -> str:
        return self.decision.model

    @property
    def query(self) -> str:
        return self.decision.query

    def attribute(self, used: Measured, raw: Any) -> None:
        """Count one LLM call of this ticket's model; settle the reservation with the first call's cost and
        charge later calls to the budget."""
        with self.lock:
            # A CustomLLM's chat() calls its complete(): both end events carry the same raw object.
            if raw is not None and any(r is raw for r in self.raws):
                return
            if raw is not None:
                self.raws.append(raw)
            first = self.calls == 0
            self.calls += 1
            self.input_tokens += used.input_tokens
            self.output_tokens += used.output_tokens
            self.answer = used.answer
            if not used.reported:
                self.calls_without_usage += 1
            cost = self.engine.cost_of(self.model, input_tokens=used.input_tokens, output_tokens=used.output_tokens)
            self.cost += cost
        if self.decision.reservation_id is None:
            return
        if first:
            self.engine.settle(self.decision, cost=cost)
        else:
            self.engine.charge(self.model, input_tokens=used.input_tokens, output_tokens=used.output_tokens)

    def close(self) -> bool:
        """Stop attributing calls; releases the reservation if no LLM call was attributed. False if closed."""
        with self.lock:
            if self.closed:
                return False
            self.closed = True
            unused = self.calls == 0
        if unused:
            self.engine.release(self.decision)
        return True

    def finished(self, answer: str) -> FinishedCall:
        """The finished call whose outcome is recorded (no token counts when no LLM call was attributed)."""
        with self.lock:
            counted = self.calls > 0
            return FinishedCall(
                call_id=self.call_id,
                question=self.query,
                model=self.model,
                answer=answer,
                input_tokens=self.input_tokens if counted else None,
                output_tokens=self.output_tokens if counted else None,
            )


# Tickets open in the current context; read when an LLM call starts.
_ACTIVE: ContextVar[tuple[Ticket, ...]] = ContextVar("scope_llamaindex_active_tickets", default=())
# Every ticket still referenced (by a ScopeSelection), so a router's QueryEndEvent can find them by id.
_OPEN: weakref.WeakValueDictionary[str, Ticket] = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.Lock()


def open_tickets(engine: ScopeEngine, decisions: Sequence[Decision]) -> list[Ticket]:
    """Open one ticket per selected decision and make them the current context's active tickets."""
    tickets = [Ticket(call_id=uuid.uuid4().hex, decision=d, engine=engine) for d in decisions]
    with _OPEN_LOCK:
        for t in tickets:
            _OPEN[t.call_id] = t
    _ACTIVE.set(tuple(tickets))
    return tickets


def active_tickets() -> list[Ticket]:
    """The tickets open in the current context."""
    return [t for t in _ACTIVE.get() if not t.closed]


def find_ticket(call_id: str) -> Ticket | None:
    with _OPEN_LOCK:
        return _OPEN.get(call_id)


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


# -- closing selections when the retrieval (or failed query) that opened them ends ----------------------

# The tickets active when a retrieval or query started, by its span id; bounded (a span that never ends is
# forgotten eventually, and its tickets' reservations expire with the budget's TTL).
_SCOPES: OrderedDict[str, tuple[Ticket, ...]] = OrderedDict()
_SCOPES_LOCK = threading.Lock()
_MAX_SCOPES = 10_000


def _enter(span_id: str | None) -> None:
    if span_id is None:
        return
    with _SCOPES_LOCK:
        _SCOPES[span_id] = _ACTIVE.get()
        while len(_SCOPES) > _MAX_SCOPES:
            _SCOPES.popitem(last=False)


def _leave(span_id: str | None, *, close: bool) -> int:
    """Forget the span; with ``close``, close the tickets opened since it started. Returns how many."""
    if span_id is None:
        return 0
    with _SCOPES_LOCK:
        before = _SCOPES.pop(span_id, None)
    if before is None or not close:
        return 0
    now = _ACTIVE.get()
    opened = [t for t in now if not any(t is b for b in before)]
    for ticket in opened:
        ticket.close()
    if opened:
        _ACTIVE.set(before)
    return len(opened)


class SelectionCloser(BaseEventHandler):
    """Closes the selections a retrieval opened when it ends, and those of a retrieval or query that raised.

    Closing releases the reservation of a selection no LLM call used. A query's selections that end normally
    are closed by :class:`~scope_llamaindex.ScopeEventHandler` instead, which records their outcomes.
    """

    @classmethod
    def class_name(cls) -> str:
        return "ScopeSelectionCloser"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        try:
            if isinstance(event, RetrievalStartEvent | QueryStartEvent):
                _enter(event.span_id)
            elif isinstance(event, RetrievalEndEvent | SpanDropEvent):
                closed = _leave(event.span_id, close=True)
                if closed and isinstance(event, SpanDropEvent):
                    logger.debug("closed %d selection(s) of a failed span %s", closed, event.span_id)
            elif isinstance(event, QueryEndEvent):
                _leave(event.span_id, close=False)
        except Exception:
            logger.warning("could not close a selection on %s", type(event).__name__, exc_info=True)


_CLOSER = SelectionCloser()
_CLOSER_LOCK = threading.Lock()


def watch_selections() -> None:
    """Register the :class:`SelectionCloser` on LlamaIndex's root dispatcher unless it is there already."""
    root = get_dispatcher()
    with _CLOSER_LOCK:
        if not any(h is _CLOSER for h in root.event_handlers):
            root.add_event_handler(_CLOSER)
