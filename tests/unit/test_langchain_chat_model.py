"""ScopeChatModel: the router as a BaseChatModel (invoke, async, stream, config, tools, structured output)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.callbacks.usage import UsageMetadataCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langchain_core.tracers.schemas import Run
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from scope_langchain import ScopeChatModel, ScopeOutcomeHandler, ScopeRouter

try:
    from langchain_core.tracers._streaming import _V2StreamingCallbackHandler
except ImportError:  # langchain-core < 1.8
    _V2StreamingCallbackHandler = None  # type: ignore[assignment,misc]
from scope_shared import Budget, ConfigError, UnknownModelError
from tests.unit.langchain_fakes import (
    MATH_Q,
    TRIVIA_Q,
    V_MIXED,
    Script,
    calls,
    fake,
    fakes,
    make_engine,
    recording,
    reply,
)


def _chat(**kwargs: Any) -> ScopeChatModel:
    engine = make_engine(**kwargs.pop("engine_kwargs", {}))
    return ScopeChatModel(engine=engine, models=kwargs.pop("models", fakes()), retry_wait=0.0, **kwargs)


def _chosen(message: BaseMessage) -> str:
    return str(message.response_metadata["scope"]["model"])


class Answer(BaseModel):
    """The final answer."""

    value: int


class ToolFake(GenericFakeChatModel):
    """GenericFakeChatModel with tool binding that records what reached _generate."""

    seen: list[dict[str, Any]] = []

    def bind_tools(self, tools: Any, *, tool_choice: str | None = None, **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], tool_choice=tool_choice, **kwargs)

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.seen.append(kwargs)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def _tool_fakes(value: int) -> dict[str, ToolFake]:
    out = {}
    for name in ("cheap", "mid", "strong"):
        msg = AIMessage(
            content="",
            tool_calls=[{"name": "Answer", "args": {"value": value}, "id": f"call-{name}"}],
            usage_metadata={"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
        )
        out[name] = ToolFake(messages=Script(msg), seen=[])
    return out


def test_is_a_chat_model_and_validates() -> None:
    chat = _chat()
    assert isinstance(chat, BaseChatModel) and chat._llm_type == "scope-router"
    with pytest.raises(UnknownModelError, match="gpt-9"):
        ScopeChatModel(engine=make_engine(), models={"gpt-9": fake("gpt-9")})
    with pytest.raises(ConfigError, match="value_per_correct"):
        ScopeChatModel(engine=make_engine(), models=fakes(), value_per_correct=-2)


@pytest.mark.parametrize(("question", "expected"), [(MATH_Q, "mid"), (TRIVIA_Q, "cheap")])
def test_invoke_routes(question: str, expected: str) -> None:
    models = fakes()
    out = _chat(models=models, value_per_correct=V_MIXED).invoke(question)
    assert isinstance(out, AIMessage) and out.content == f"{expected} answers" and _chosen(out) == expected
    assert out.usage_metadata is not None and out.usage_metadata["output_tokens"] == 30
    assert [n for n, m in models.items() if calls(m)] == [expected]


async def test_ainvoke_and_astream() -> None:
    chat = _chat(value_per_correct=V_MIXED)
    assert _chosen(await chat.ainvoke(MATH_Q)) == "mid"
    chunks = [c async for c in chat.astream(TRIVIA_Q)]
    assert "".join(str(c.content) for c in chunks) == "cheap answers"
    assert chunks[0].response_metadata["scope"]["model"] == "cheap"


def test_stream() -> None:
    chunks = list(_chat(value_per_correct=0.0).stream(MATH_Q))
    assert "".join(str(c.content) for c in chunks) == "cheap answers"
    assert chunks[0].response_metadata["scope"]["model"] == "cheap"


def test_per_call_configurable_and_configurable_fields() -> None:
    chat = _chat(value_per_correct=V_MIXED)
    assert _chosen(chat.invoke(TRIVIA_Q, {"configurable": {"value_per_correct": None}})) == "strong"
    assert _chosen(chat.with_config(configurable={"force_model": "mid"}).invoke(TRIVIA_Q)) == "mid"
    fields = chat.configurable_fields(value_per_correct=ConfigurableField(id="v"))
    assert _chosen(fields.invoke(MATH_Q)) == "mid"
    assert _chosen(fields.invoke(MATH_Q, {"configurable": {"v": 0.0}})) == "cheap"
    assert [_chosen(m) for m in chat.batch([MATH_Q, TRIVIA_Q], {"configurable": {"value_per_correct": 0.0}})] == [
        "cheap",
        "cheap",
    ]


def test_in_a_chain_with_budget_settled() -> None:
    chat = _chat(value_per_correct=V_MIXED, engine_kwargs={"budget": Budget(limit=1.0)})
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | chat | StrOutputParser()
    assert chain.invoke({"q": MATH_Q}) == "mid answers"
    ledger = chat.engine.ledger
    assert ledger is not None and ledger.held == 0.0
    assert ledger.settled_total == pytest.approx((12 * 1.0 + 30 * 2.0) / 1e6)


def test_fallback_inside_the_chat_model() -> None:
    from tests.unit.test_langchain_fallbacks import Boom

    models = {"strong": fake("strong", Boom("x")), "mid": fake("mid"), "cheap": fake("cheap")}
    out = _chat(models=models, value_per_correct=None).invoke(MATH_Q)
    assert _chosen(out) == "mid" and out.response_metadata["scope"]["failed"][0]["model"] == "strong"


def _two_runs(tracer: RunCollectorCallbackHandler) -> tuple[Run, Run]:
    """The one root run the tracer kept, and its one child."""
    (outer,) = tracer.traced_runs
    (inner,) = outer.child_runs
    return outer, inner


@pytest.mark.parametrize("how", ["invoke", "stream", "ainvoke", "astream"])
async def test_wrapped_model_runs_nest_under_the_chat_model_run(how: str) -> None:
    """Tracers see the chosen model's run under the ScopeChatModel run, however it is called (``stream()``
    hands ``_stream`` no run manager: the run used to be detached there)."""
    tracer = RunCollectorCallbackHandler()
    chat, config = _chat(value_per_correct=V_MIXED), {"callbacks": [tracer]}
    if how == "invoke":
        chat.invoke(MATH_Q, config)
    elif how == "ainvoke":
        await chat.ainvoke(MATH_Q, config)
    elif how == "stream":
        list(chat.stream(MATH_Q, config))
    else:
        [c async for c in chat.astream(MATH_Q, config)]
    outer, inner = _two_runs(tracer)
    assert outer.parent_run_id is None and inner.parent_run_id == outer.id
    assert inner.extra["metadata"]["scope_model"] == "mid" and "nostream" in (inner.tags or [])
    assert outer.outputs is not None and inner.outputs is not None


@pytest.mark.parametrize("how", ["stream", "astream"])
async def test_stream_records_the_outcome_like_invoke(how: str) -> None:
    engine = make_engine()
    handler = ScopeOutcomeHandler(engine=engine, grader=lambda q, a: 1.0)
    chat = ScopeChatModel(engine=engine, models=fakes(), value_per_correct=V_MIXED, retry_wait=0.0)
    config: Any = {"callbacks": [handler]}
    if how == "stream":
        text = "".join(str(c.content) for c in chat.stream(MATH_Q, config))
    else:
        text = "".join([str(c.content) async for c in chat.astream(MATH_Q, config)])
    assert text == "mid answers"
    assert (handler.recorded, handler.pending, handler.failures) == (1, 0, 0)
    chat.invoke(TRIVIA_Q, config)
    assert handler.recorded == 2


class _TokenText(BaseCallbackHandler):
    """The text a token consumer shows: each token it is sent, from any run."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.parts.append(token)

    def on_stream_event(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, dict) and isinstance(event.get("delta"), dict):
            self.parts.append(str(event["delta"].get("text", "")))


class _V1Streaming(_TokenText, _StreamingCallbackHandler):
    """Like LangGraph's v1 messages-mode handler: its presence makes ``invoke`` stream."""

    def tap_output_aiter(self, run_id: Any, output: Any) -> Any:
        return output

    def tap_output_iter(self, run_id: Any, output: Any) -> Any:
        return output


_V2Streaming: Any = None
if _V2StreamingCallbackHandler is not None:

    class _V2Streaming(_TokenText, _V2StreamingCallbackHandler):  # type: ignore[no-redef]
        """Like LangGraph's v2 messages-mode handler: ``invoke`` drives the v2 event protocol."""


@pytest.mark.parametrize(
    ("handler", "how"),
    [("v1", "invoke"), ("v2", "invoke"), ("v1", "stream"), ("plain", "stream"), ("plain", "astream")],
)
async def test_token_consumers_get_each_token_once(handler: str, how: str) -> None:
    """LangGraph's ``stream_mode="messages"`` showed every token twice: the ScopeChatModel run and the chosen
    model's run both emitted it to the same handler."""
    if handler == "v2" and _V2Streaming is None:
        pytest.skip("langchain-core < 1.8 has no v2 streaming protocol")
    consumer = {"v1": _V1Streaming, "v2": _V2Streaming, "plain": _TokenText}[handler]()
    chat, config = _chat(value_per_correct=V_MIXED), {"callbacks": [consumer]}
    if how == "invoke":
        chat.invoke(MATH_Q, config)
    elif how == "stream":
        list(chat.stream(MATH_Q, config))
    else:
        [c async for c in chat.astream(MATH_Q, config)]
    assert "".join(consumer.parts) == "mid answers"


def test_usage_is_counted_once() -> None:
    """A usage counter passed in the config sums usage per ``model_name`` over the chat model runs it sees: it
    sees the ScopeChatModel run only. (Handlers LangChain itself adds to every run, through a configure hook
    such as ``get_usage_metadata_callback()``, see both runs; docs/langchain.md says so.)"""
    snapshot = reply("mid").model_copy(update={"response_metadata": {"model_name": "mid-2024-01-01"}})
    models = {"cheap": fake("cheap"), "mid": fake("mid", snapshot), "strong": fake("strong")}
    usage = UsageMetadataCallbackHandler()
    _chat(models=models, value_per_correct=V_MIXED).invoke(MATH_Q, {"callbacks": [usage]})
    assert usage.usage_metadata == {"mid": {"input_tokens": 12, "output_tokens": 30, "total_tokens": 42}}


def test_bind_tools_binds_every_wrapped_model() -> None:
    models = _tool_fakes(156)
    bound = _chat(models=models, value_per_correct=V_MIXED).bind_tools([Answer], tool_choice="any")
    assert isinstance(bound, ScopeChatModel)
    out = bound.invoke(MATH_Q)
    assert out.tool_calls[0]["args"] == {"value": 156} and _chosen(out) == "mid"
    assert models["mid"].seen[-1]["tools"][0]["function"]["name"] == "Answer"
    assert models["mid"].seen[-1]["tool_choice"] == "any"
    assert models["cheap"].seen == [] and models["strong"].seen == []


async def test_with_structured_output() -> None:
    structured = _chat(models=_tool_fakes(42), value_per_correct=V_MIXED).with_structured_output(Answer)
    assert structured.invoke(MATH_Q) == Answer(value=42)
    assert await structured.ainvoke(TRIVIA_Q) == Answer(value=42)
    raw = _chat(models=_tool_fakes(7), value_per_correct=V_MIXED).with_structured_output(Answer, include_raw=True)
    result = raw.invoke(TRIVIA_Q)
    assert isinstance(result, dict)
    assert result["parsed"] == Answer(value=7) and result["raw"].response_metadata["scope"]["model"] == "cheap"


def test_tools_need_every_wrapped_model_to_support_them() -> None:
    models: dict[str, Any] = {**_tool_fakes(1), "mid": fake("mid")}  # GenericFakeChatModel has no tool calling
    chat = _chat(models=models)
    with pytest.raises(ConfigError, match="'mid'.*does not support tool calling"):
        chat.bind_tools([Answer])
    with pytest.raises(ConfigError, match="'mid'"):
        chat.with_structured_output(Answer)


def test_usage_reaches_the_outer_run() -> None:
    out = _chat(models={"cheap": fake("cheap", reply("cheap", input_tokens=3, output_tokens=4))}).invoke(MATH_Q)
    assert out.usage_metadata == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}


# -- models that do not stream natively --------------------------------------------------------------------


def _not_streaming(kind: str) -> BaseChatModel:
    if kind == "disable_streaming":
        return GenericFakeChatModel(messages=Script(reply("cheap")), disable_streaming=True)
    return FakeMessagesListChatModel(responses=[reply("cheap")])  # has no _stream at all


@pytest.mark.parametrize("kind", ["disable_streaming", "no_stream_method"])
@pytest.mark.parametrize("router_class", [ScopeChatModel, ScopeRouter])
async def test_streaming_over_a_model_that_does_not_stream(kind: str, router_class: type[Any]) -> None:
    """``stream`` of such a model yields one whole AIMessage: it becomes one chunk, and nothing falls back."""
    engine = make_engine(budget=Budget(limit=1.0))
    router = router_class(engine=engine, models={"cheap": _not_streaming(kind)}, retry_wait=0.0)
    chunks = list(router.stream(MATH_Q))
    chunks += [c async for c in router.astream(MATH_Q)]
    text = [str(c.content) for c in chunks if c.content]
    assert text == ["cheap answers", "cheap answers"]
    first = chunks[0].response_metadata["scope"]
    assert first["model"] == "cheap" and first["failed"] == []
    ledger = engine.ledger
    assert ledger is not None and ledger.held == 0.0
    assert ledger.settled_total == pytest.approx(2 * (12 * 0.1 + 30 * 0.2) / 1e6)  # real usage, twice


# -- LangChain's conventions ------------------------------------------------------------------------------


def test_model_name_is_the_chosen_model_once_per_stream() -> None:
    snapshot = reply("mid").model_copy(update={"response_metadata": {"model_name": "mid-2024-01-01"}})
    models = {"cheap": fake("cheap"), "mid": fake("mid", snapshot), "strong": fake("strong")}
    chat = _chat(models=models, value_per_correct=V_MIXED)
    assert chat.invoke(MATH_Q).response_metadata["model_name"] == "mid"
    full: Any = None
    for chunk in chat.stream(MATH_Q):
        full = chunk if full is None else full + chunk
    assert full.response_metadata["model_name"] == "mid"  # not concatenated with the provider's own


def test_per_call_model_forces_one_of_the_models_and_is_not_passed_on() -> None:
    models = {name: recording(name) for name in ("cheap", "mid", "strong")}
    chat = _chat(models=models, value_per_correct=V_MIXED)
    out = chat.invoke(MATH_Q, model="strong")
    assert _chosen(out) == "strong" and out.response_metadata["model_name"] == "strong"
    assert "model" not in models["strong"].seen[-1]
    assert _chosen(chat.bind(model="cheap").invoke(MATH_Q)) == "cheap"
    streamed = list(chat.stream(MATH_Q, model="strong"))
    assert streamed[0].response_metadata["scope"]["model"] == "strong"
    with pytest.raises(UnknownModelError, match="model='gpt-4o' is not one of this router's models"):
        chat.invoke(MATH_Q, model="gpt-4o")
    with pytest.raises(ConfigError, match="disagree"):
        chat.invoke(MATH_Q, {"configurable": {"force_model": "mid"}}, model="strong")
    assert models["strong"].seen[-1].get("model") is None


def test_router_per_call_model_forces_one_of_the_models() -> None:
    models = {name: recording(name) for name in ("cheap", "mid", "strong")}
    router = ScopeRouter(engine=make_engine(), models=models, value_per_correct=V_MIXED)
    assert _chosen(router.invoke(MATH_Q, model="cheap")) == "cheap"
    assert "model" not in models["cheap"].seen[-1]
    assert [_chosen(m) for m in router.batch([MATH_Q, TRIVIA_Q], model="strong")] == ["strong", "strong"]
    with pytest.raises(UnknownModelError, match="model='gpt-4o'"):
        router.invoke(MATH_Q, model="gpt-4o")


def test_standard_parameters_reach_the_chosen_model() -> None:
    models = {name: recording(name) for name in ("cheap", "mid", "strong")}
    chat = _chat(models=models, value_per_correct=V_MIXED, temperature=0.2, max_tokens=50, stop=["\n\n"])
    chat.invoke(MATH_Q)
    assert models["mid"].seen[-1] == {"stop": ["\n\n"], "temperature": 0.2, "max_tokens": 50}
    list(chat.stream(MATH_Q, stop=["END"], temperature=0.9))  # the call's own win
    assert models["mid"].seen[-1] == {"stop": ["END"], "temperature": 0.9, "max_tokens": 50}
    params = chat._get_ls_params()
    assert (params["ls_temperature"], params["ls_max_tokens"], params["ls_stop"]) == (0.2, 50, ["\n\n"])
    assert _chat(max_retries=5).retries == 5
    assert _chat(streaming=True).streaming is True


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": 30}, "does not take timeout=.*ChatOpenAI"),
        ({"api_key": "sk-test"}, "does not take api_key=.*holds no credentials"),
        ({"value_per_corect": 0.1}, "unknown argument 'value_per_corect'"),
        ({"temperature": -1}, "temperature must be a number >= 0"),
        ({"max_tokens": 0}, "max_tokens must be an int >= 1"),
        ({"max_retries": 1, "retries": 2}, "disagree"),
    ],
)
def test_arguments_it_cannot_honour_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _chat(**kwargs)


def test_router_refuses_unknown_arguments() -> None:
    with pytest.raises(ConfigError, match="ScopeRouter does not take temperature=.*per call"):
        ScopeRouter(engine=make_engine(), models=fakes(), temperature=0)


def test_langsmith_params_name_the_router_or_the_forced_model() -> None:
    params = _chat()._get_ls_params()
    assert (params["ls_provider"], params["ls_model_name"], params["ls_model_type"]) == (
        "scope-router",
        "scope-router",
        "chat",
    )
    assert _chat(force_model="mid")._get_ls_params()["ls_model_name"] == "mid"
    assert _chat()._get_ls_params(model="strong")["ls_model_name"] == "strong"


class _Starts(BaseCallbackHandler):
    def __init__(self) -> None:
        self.params: list[dict[str, Any]] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.params.append(kwargs.get("invocation_params") or {})


def test_per_call_settings_stay_out_of_invocation_params() -> None:
    starts = _Starts()
    chat = _chat(value_per_correct=V_MIXED)
    out = chat.invoke(TRIVIA_Q, {"configurable": {"value_per_correct": None}, "callbacks": [starts]})
    assert _chosen(out) == "strong"  # the setting still applied
    (params,) = starts.params  # the ScopeChatModel run; the chosen model's run is not this handler's
    assert params["_type"] == "scope-router" and not any("scope" in key for key in params)
    llm_string = chat._get_llm_string(stop=None)
    assert "configurable" not in llm_string


def test_token_counts_are_the_routers_own() -> None:
    messages = [SystemMessage("Answer briefly."), HumanMessage(MATH_Q)]
    chat = _chat()
    expected = math.ceil(chat.engine.estimate_tokens("Answer briefly.\n" + MATH_Q))
    assert chat.get_num_tokens_from_messages(messages) == expected > 0
    assert chat.get_num_tokens(MATH_Q) == math.ceil(chat.engine.estimate_tokens(MATH_Q))
    assert _chat(token_counter=lambda ms: 7 * len(ms)).get_num_tokens_from_messages(messages) == 14
