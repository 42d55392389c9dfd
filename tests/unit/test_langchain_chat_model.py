"""ScopeChatModel: the router as a BaseChatModel (invoke, async, stream, config, tools, structured output)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from scope_langchain import ScopeChatModel
from scope_shared import Budget, ConfigError, UnknownModelError
from tests.unit.langchain_fakes import MATH_Q, TRIVIA_Q, V_MIXED, Script, calls, fake, fakes, make_engine, reply


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


def test_wrapped_model_runs_nest_under_the_chat_model_run() -> None:
    class Runs(BaseCallbackHandler):
        def __init__(self) -> None:
            self.starts: list[tuple[Any, Any, dict[str, Any]]] = []

        def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any, **kw: Any) -> None:
            self.starts.append((run_id, kw.get("parent_run_id"), kw.get("metadata") or {}))

    runs = Runs()
    _chat(value_per_correct=V_MIXED).invoke(MATH_Q, {"callbacks": [runs]})
    (outer, outer_parent, _), (inner, inner_parent, meta) = runs.starts
    assert outer_parent is None and inner_parent == outer and inner != outer
    assert meta["scope_model"] == "mid"


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
