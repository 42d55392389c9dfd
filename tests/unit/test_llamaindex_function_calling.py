"""ScopeLLM as a FunctionCallingLLM (FunctionAgent, chat_with_tools, predict_and_call), and the span tree of
a routed call: the wrapped LLM's call is a child of ScopeLLM's in every form (issue 16 item 18)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, ChatResponse
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.instrumentation.span.simple import SimpleSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.tools import FunctionTool

from scope_llamaindex import ScopeEventHandler, ScopeLLM
from scope_shared import ConfigError, ScopeEngine
from tests.unit.llamaindex_fixtures import (
    HELD_OUT,
    Q_CAPITAL,
    Q_CODE,
    ToolCallingFake,
    li_settings,  # noqa: F401 - autouse: every test here runs with it
    make_engine,
    replay_llms,
)


def lookup(query: str) -> str:
    """Look the question up in the team's notes."""
    return f"notes on: {query[:20]}"


TOOL = FunctionTool.from_defaults(fn=lookup)


def _tool_llms() -> dict[str, Any]:
    """small and big call tools; mid (a replay) does not."""
    return {"small": ToolCallingFake(model="small"), "mid": replay_llms()["mid"], "big": ToolCallingFake(model="big")}


def _scope(engine: ScopeEngine | None = None, llms: dict[str, Any] | None = None) -> ScopeLLM:
    return ScopeLLM(engine=engine or make_engine(), llms=llms or _tool_llms())


def _cost(engine: ScopeEngine, response: ChatResponse) -> float:
    usage = response.additional_kwargs
    return engine.cost_of(
        response.additional_kwargs["scope"]["model"],
        input_tokens=usage["prompt_tokens"],
        output_tokens=usage["completion_tokens"],
    )


def _run(agent: FunctionAgent, question: str) -> Any:
    async def go() -> Any:
        return await agent.run(user_msg=question)

    return asyncio.run(go())


def test_scope_llm_is_a_function_calling_llm_when_a_wrapped_llm_is() -> None:
    llm = _scope()
    assert isinstance(llm, FunctionCallingLLM)
    assert llm.metadata.is_function_calling_model is True
    assert llm.tool_models == ["small", "big"]
    plain = ScopeLLM(engine=make_engine(), llms=replay_llms())
    assert plain.metadata.is_function_calling_model is False and plain.tool_models == []


def test_chat_with_tools_routes_among_the_function_calling_models() -> None:
    engine = make_engine(budget=1.0)
    llm = _scope(engine)
    response = llm.chat_with_tools([TOOL], user_msg=Q_CODE, tool_required=True, allow_parallel_tool_calls=True)
    scope = response.additional_kwargs["scope"]
    assert scope["model"] == "big" and set(scope["decision"]["candidates"]) == {"small", "big"}
    assert scope["tool_calls"] == 1
    calls = llm.get_tool_calls_from_response(response)
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("lookup", {"query": Q_CODE})]
    # The chosen LLM prepared the call itself, with the flags the caller gave.
    big = llm.llms["big"]
    assert isinstance(big, ToolCallingFake)
    assert big.seen[-1]["tools"] == [TOOL]
    assert big.seen[-1]["tool_required"] is True and big.seen[-1]["allow_parallel_tool_calls"] is True
    assert engine.ledger is not None and engine.ledger.held == 0.0
    assert engine.ledger.spent == pytest.approx(_cost(engine, response))
    # A plain chat still routes among all three.
    plain = llm.chat([ChatMessage(role="user", content=Q_CAPITAL)])
    assert set(plain.additional_kwargs["scope"]["decision"]["candidates"]) == {"small", "mid", "big"}


def test_predict_and_call_and_the_streaming_forms() -> None:
    llm = _scope()
    out = llm.predict_and_call([TOOL], user_msg=Q_CODE)
    assert out.response == f"notes on: {Q_CODE[:20]}"
    *_, last = llm.stream_chat_with_tools([TOOL], user_msg=Q_CODE)
    assert last.additional_kwargs["scope"]["model"] == "big" and last.additional_kwargs["scope"]["tool_calls"] == 1
    assert llm.get_tool_calls_from_response(last)[0].tool_name == "lookup"

    async def run() -> None:
        response = await llm.achat_with_tools([TOOL], user_msg=Q_CAPITAL)
        assert response.additional_kwargs["scope"]["model"] == "small"
        chunks = [c async for c in await llm.astream_chat_with_tools([TOOL], user_msg=Q_CODE)]
        assert llm.get_tool_calls_from_response(chunks[-1])[0].tool_kwargs == {"query": Q_CODE}
        called = await llm.apredict_and_call([TOOL], user_msg=Q_CAPITAL)
        assert called.response == f"notes on: {Q_CAPITAL[:20]}"

    asyncio.run(run())


@pytest.mark.parametrize("streaming", [False, True])
def test_function_agent_runs_on_scope_llm(streaming: bool) -> None:
    engine = make_engine(budget=1.0)
    llm = _scope(engine)
    agent = FunctionAgent(tools=[TOOL], llm=llm, streaming=streaming)
    events: list[Any] = []

    class Calls(BaseEventHandler):
        def handle(self, event: BaseEvent, **kwargs: Any) -> None:
            if type(event).__name__ == "ScopeCallEvent":
                events.append(event)

    grades = {o.query: o.correct for o in HELD_OUT if o.model == "big"}
    calls = Calls()
    get_dispatcher().add_event_handler(calls)
    try:
        with ScopeEventHandler(engine=engine, grader=lambda q, a: grades[q] if a.startswith("[big]") else None) as h:
            result = _run(agent, Q_CODE)
    finally:
        get_dispatcher().event_handlers.remove(calls)
    # Step 1: big asks for the tool; step 2: big answers from the tool's output.
    assert str(result.response.content) == f"[big] notes on: {Q_CODE[:20]}"
    assert [(e.model, e.tool_calls) for e in events] == [("big", 1), ("big", 0)]
    assert engine.ledger is not None and engine.ledger.held == 0.0
    assert engine.ledger.spent == pytest.approx(sum(e.cost for e in events))
    # Only the answer is an outcome: the step that asked for a tool is not graded.
    assert h.recorded == 1 and h.pending == 0


def test_tool_calls_are_refused_clearly_when_no_wrapped_llm_supports_them() -> None:
    llm = ScopeLLM(engine=make_engine(budget=1.0), llms=replay_llms())
    with pytest.raises(ConfigError, match=r"none of the wrapped LLMs supports function calling \(big: ReplayLLM, mid"):
        llm.chat_with_tools([TOOL], user_msg=Q_CODE)
    assert llm.engine.ledger is not None and llm.engine.ledger.held == 0.0
    agent = FunctionAgent(tools=[TOOL], llm=llm)
    with pytest.raises(Exception, match="LLM must be a FunctionCallingLLM"):
        _run(agent, Q_CODE)


def test_tool_calls_of_an_unstamped_response() -> None:
    call = _scope().chat_with_tools([TOOL], user_msg=Q_CODE)
    unstamped = ChatResponse(message=call.message)
    # Both function-calling LLMs are of one kind: either reads the calls.
    assert _scope().get_tool_calls_from_response(unstamped)[0].tool_name == "lookup"

    class OtherKind(ToolCallingFake):
        pass

    mixed = _scope(llms={"small": ToolCallingFake(model="small"), "big": OtherKind(model="big")})
    with pytest.raises(ConfigError, match="no additional_kwargs\\['scope'\\]"):
        mixed.get_tool_calls_from_response(unstamped)
    plain = _scope().chat([ChatMessage(role="user", content=Q_CAPITAL)])
    assert plain.additional_kwargs["scope"]["model"] == "small"
    mid = _scope(llms={"mid": replay_llms()["mid"], "big": ToolCallingFake(model="big")})
    answer = mid.complete(Q_CAPITAL)
    stamped_mid = ChatResponse(message=ChatMessage(content=answer.text), additional_kwargs=answer.additional_kwargs)
    assert stamped_mid.additional_kwargs["scope"]["model"] == "mid"
    assert mid.get_tool_calls_from_response(stamped_mid, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="mid answered without tool calls"):
        mid.get_tool_calls_from_response(stamped_mid)


# -- span parentage ----------------------------------------------------------------------------------------

LLM_EVENTS = (LLMChatStartEvent, LLMChatEndEvent, LLMCompletionStartEvent, LLMCompletionEndEvent)


class _Spans(BaseSpanHandler[SimpleSpan]):
    """Records each span's parent."""

    _parents: dict[str, str | None] = PrivateAttr(default_factory=dict)

    @property
    def parents(self) -> dict[str, str | None]:
        return self._parents

    def new_span(
        self,
        id_: str,
        bound_args: Any,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SimpleSpan:
        self._parents[id_] = parent_span_id
        return SimpleSpan(id_=id_, parent_id=parent_span_id)

    def prepare_to_exit_span(
        self, id_: str, bound_args: Any, instance: Any | None = None, result: Any | None = None, **kwargs: Any
    ) -> SimpleSpan | None:
        return None

    def prepare_to_drop_span(
        self, id_: str, bound_args: Any, instance: Any | None = None, err: BaseException | None = None, **kwargs: Any
    ) -> SimpleSpan | None:
        return None


class _LLMEvents(BaseEventHandler):
    """Records each LLM start/end event: its kind, the LLM's model name (start events) and its span."""

    seen: list[tuple[str, str | None, str | None]] = []

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, LLM_EVENTS):
            model = (
                event.model_dict.get("model_name")
                if isinstance(event, LLMChatStartEvent | LLMCompletionStartEvent)
                else None
            )
            self.seen.append((type(event).__name__, model, event.span_id))


@pytest.fixture
def traced() -> Iterator[tuple[_LLMEvents, _Spans]]:
    root = get_dispatcher()
    # fresh containers: BaseSpanHandler's defaults are shared mutable objects
    events = _LLMEvents(seen=[])
    spans = _Spans(open_spans={}, completed_spans=[], dropped_spans=[], current_span_ids={})
    root.add_event_handler(events)
    root.add_span_handler(spans)
    try:
        yield events, spans
    finally:
        root.event_handlers.remove(events)
        root.span_handlers.remove(spans)


def _ancestors(span: str | None, parents: dict[str, str | None]) -> list[str]:
    chain: list[str] = []
    while span is not None and span in parents:
        span = parents[span]
        if span is not None:
            chain.append(span)
    return chain


async def _adrain(gen: Any) -> None:
    async for _ in gen:
        pass


def _forms(llm: ScopeLLM) -> dict[str, Callable[[], Any]]:
    msgs = [ChatMessage(role="user", content=Q_CODE)]
    return {
        "complete": lambda: llm.complete(Q_CODE),
        "chat": lambda: llm.chat(msgs),
        "stream_complete": lambda: list(llm.stream_complete(Q_CODE)),
        "stream_chat": lambda: list(llm.stream_chat(msgs)),
        "acomplete": lambda: asyncio.run(llm.acomplete(Q_CODE)),
        "achat": lambda: asyncio.run(llm.achat(msgs)),
        "astream_complete": lambda: asyncio.run(_adrain_call(llm.astream_complete(Q_CODE))),
        "astream_chat": lambda: asyncio.run(_adrain_call(llm.astream_chat(msgs))),
    }


async def _adrain_call(coro: Any) -> None:
    await _adrain(await coro)


@pytest.mark.parametrize(
    "form",
    ["complete", "chat", "stream_complete", "stream_chat", "acomplete", "achat", "astream_complete", "astream_chat"],
)
def test_the_wrapped_llms_call_is_a_child_span_of_scope_llms(form: str, traced: tuple[_LLMEvents, _Spans]) -> None:
    events, spans = traced
    _forms(ScopeLLM(engine=make_engine(), llms=replay_llms()))[form]()
    starts = [(model, span) for kind, model, span in events.seen if kind.endswith("StartEvent")]
    outer = [span for model, span in starts if model == "scope-router"]
    assert len(outer) == 1, events.seen
    inner = [(model, span) for model, span in starts if model != "scope-router"]
    assert inner and {m for m, _ in inner} == {"big"}
    for _, span in inner:
        assert outer[0] in _ancestors(span, spans.parents), (form, span, spans.parents)
    # Every end event belongs to the outer span or one below it.
    for kind, _, span in events.seen:
        assert span == outer[0] or outer[0] in _ancestors(span, spans.parents), (kind, span)


@pytest.mark.parametrize("form", ["chat_with_tools", "astream_chat_with_tools"])
def test_a_tool_calls_wrapped_call_is_a_child_span_too(form: str, traced: tuple[_LLMEvents, _Spans]) -> None:
    events, spans = traced
    llm = _scope()
    if form == "chat_with_tools":
        llm.chat_with_tools([TOOL], user_msg=Q_CODE)
    else:
        asyncio.run(_adrain_call(llm.astream_chat_with_tools([TOOL], user_msg=Q_CODE)))
    starts = [(model, span) for kind, model, span in events.seen if kind.endswith("StartEvent")]
    (outer,) = [span for model, span in starts if model == "scope-router"]
    inner = [span for model, span in starts if model == "big"]
    assert inner and all(outer in _ancestors(span, spans.parents) for span in inner)
