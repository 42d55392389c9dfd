"""ScopeLLM: routing, dispatch, budget settlement and the decision on the response, in every call form."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from scope_llamaindex import ReplayLLM, ScopeLLM
from scope_shared import BudgetExceededError, ConfigError, ScopeEngine, UnknownModelError
from tests.unit.llamaindex_fixtures import (
    Q_CAPITAL,
    Q_CODE,
    li_settings,  # noqa: F401 - autouse: every test here runs with it
    make_engine,
    recorded,
    replay_llms,
)


def _llm(engine: ScopeEngine | None = None, **kw: Any) -> ScopeLLM:
    return ScopeLLM(engine=engine or make_engine(), llms=replay_llms(), **kw)


def _user(text: str) -> list[ChatMessage]:
    return [
        ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
        ChatMessage(role="user", content=text),
    ]


def _real_cost(engine: ScopeEngine, query: str, model: str) -> float:
    out = recorded(query, model)
    return engine.cost_of(model, input_tokens=out.input_tokens or 0, output_tokens=out.output_tokens or 0)


def test_complete_routes_dispatches_and_stamps_the_decision() -> None:
    llm = _llm()
    hard, easy = llm.complete(Q_CODE), llm.complete(Q_CAPITAL)
    assert hard.text.startswith("[big] replayed") and easy.text.startswith("[small] replayed")
    scope = hard.additional_kwargs["scope"]
    assert scope["model"] == "big"
    assert scope["decision"]["model"] == "big" and set(scope["decision"]["candidates"]) == {
        "small",
        "mid",
        "big",
    }
    out = recorded(Q_CODE, "big")
    assert (scope["input_tokens"], scope["output_tokens"], scope["usage_reported"]) == (
        out.input_tokens,
        out.output_tokens,
        True,
    )
    # The inner LLM's raw response is kept.
    assert hard.raw["model"] == "big"


def test_chat_routes_on_the_last_user_message() -> None:
    response = _llm().chat(_user(Q_CODE))
    assert response.additional_kwargs["scope"]["model"] == "big"
    assert response.message.content.startswith("[big] replayed")


def test_query_from_and_count_tokens_are_used() -> None:
    seen: list[str] = []

    def pick(messages: Sequence[ChatMessage]) -> str:
        seen.append("called")
        return Q_CAPITAL  # route as the capital question whatever the user asked

    engine = make_engine()
    llm = ScopeLLM(engine=engine, llms=replay_llms(), query_from=pick, count_tokens=lambda text: 5000)
    response = llm.chat([ChatMessage(role="user", content=Q_CAPITAL)])
    assert seen == ["called"]
    decision = response.additional_kwargs["scope"]["decision"]
    small = decision["candidates"]["small"]
    # 5000 prompt tokens priced at small's input price dominate its expected cost.
    assert small["cost"] == pytest.approx(5000 * 0.1 / 1e6 + small["output_tokens"] * 0.2 / 1e6)


def test_value_per_correct_override() -> None:
    assert _llm(value_per_correct=0.0).complete(Q_CODE).additional_kwargs["scope"]["model"] == "small"
    assert _llm(value_per_correct=None).complete(Q_CODE).additional_kwargs["scope"]["model"] == "big"


def test_stream_complete_and_stream_chat() -> None:
    llm = _llm()
    chunks = list(llm.stream_complete(Q_CODE))
    assert len(chunks) > 1 and all(c.additional_kwargs["scope"]["model"] == "big" for c in chunks)
    assert chunks[-1].text.startswith("[big] replayed")
    assert chunks[-1].additional_kwargs["scope"]["output_tokens"] == recorded(Q_CODE, "big").output_tokens
    chat_chunks = list(llm.stream_chat(_user(Q_CAPITAL)))
    assert chat_chunks[-1].message.content.startswith("[small] replayed")
    assert chat_chunks[-1].additional_kwargs["scope"]["cost"] == pytest.approx(
        _real_cost(llm.engine, Q_CAPITAL, "small")
    )


async def test_async_forms() -> None:
    llm = _llm()
    c = await llm.acomplete(Q_CODE)
    assert c.additional_kwargs["scope"]["model"] == "big"
    r = await llm.achat(_user(Q_CAPITAL))
    assert r.additional_kwargs["scope"]["model"] == "small"
    gen = await llm.astream_complete(Q_CODE)
    chunks = [chunk async for chunk in gen]
    assert chunks[-1].text.startswith("[big] replayed") and "cost" in chunks[-1].additional_kwargs["scope"]
    agen = await llm.astream_chat(_user(Q_CODE))
    achunks = [chunk async for chunk in agen]
    assert achunks[-1].message.content.startswith("[big] replayed")


def test_budget_is_settled_with_real_usage_in_every_form() -> None:
    engine = make_engine(budget=1.0)
    llm = _llm(engine)
    llm.complete(Q_CODE)
    list(llm.stream_complete(Q_CAPITAL))
    llm.chat(_user(Q_CODE))
    assert engine.ledger is not None
    assert engine.ledger.held == 0.0
    expected = 2 * _real_cost(engine, Q_CODE, "big") + _real_cost(engine, Q_CAPITAL, "small")
    assert engine.ledger.spent == pytest.approx(expected)


async def test_async_budget_settled() -> None:
    engine = make_engine(budget=1.0)
    llm = _llm(engine)
    await llm.achat(_user(Q_CODE))
    gen = await llm.astream_chat(_user(Q_CAPITAL))
    [c async for c in gen]
    assert engine.ledger is not None and engine.ledger.held == 0.0
    expected = _real_cost(engine, Q_CODE, "big") + _real_cost(engine, Q_CAPITAL, "small")
    assert engine.ledger.spent == pytest.approx(expected)


class _Broken(CustomLLM):
    model_name: str = "big"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model_name)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise RuntimeError("provider down")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise RuntimeError("provider down")


class _NoUsage(CustomLLM):
    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="big")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="x" * 400)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        def gen() -> CompletionResponseGen:
            for i in range(1, 5):
                yield CompletionResponse(text="y" * (100 * i), delta="y" * 100)

        return gen()


def test_failed_call_releases_its_reservation() -> None:
    engine = make_engine(budget=1.0)
    llm = ScopeLLM(engine=engine, llms={"big": _Broken()})
    with pytest.raises(RuntimeError, match="provider down"):
        llm.complete(Q_CODE)
    with pytest.raises(RuntimeError, match="provider down"):
        list(llm.stream_complete(Q_CODE))
    assert engine.ledger is not None and engine.ledger.held == 0.0 and engine.ledger.spent == 0.0


def test_missing_usage_is_estimated_and_flagged(caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(budget=1.0)
    llm = ScopeLLM(engine=engine, llms={"big": _NoUsage()})
    with caplog.at_level(logging.WARNING, logger="scope_llamaindex.llm"):
        scope = llm.complete(Q_CODE).additional_kwargs["scope"]
    assert scope["usage_reported"] is False
    assert scope["output_tokens"] == round(400 * engine.store.tokens_per_char)
    assert "reported no token usage" in caplog.text
    assert engine.ledger is not None and engine.ledger.spent == pytest.approx(scope["cost"]) and scope["cost"] > 0


def test_abandoned_stream_settles_what_ran() -> None:
    engine = make_engine(budget=1.0)
    llm = ScopeLLM(engine=engine, llms={"big": _NoUsage()})
    gen = llm.stream_complete(Q_CODE)
    first = next(gen)
    gen.close()
    assert engine.ledger is not None and engine.ledger.held == 0.0
    assert first.additional_kwargs["scope"]["output_tokens"] == round(100 * engine.store.tokens_per_char)
    assert engine.ledger.spent == pytest.approx(first.additional_kwargs["scope"]["cost"])


def test_budget_exhausted_raises_before_calling() -> None:
    engine = make_engine(budget=1e-12)
    with pytest.raises(BudgetExceededError):
        _llm(engine).complete(Q_CODE)


def test_constructor_validates() -> None:
    engine = make_engine()
    with pytest.raises(
        UnknownModelError, match=r"'gpt-9' is not a model of the engine; known: \['big', 'mid', 'small'\]"
    ):
        ScopeLLM(engine=engine, llms={"gpt-9": replay_llms()["big"]})
    with pytest.raises(ConfigError, match="non-empty"):
        ScopeLLM(engine=engine, llms={})
    with pytest.raises(ConfigError, match="must be a LlamaIndex LLM"):
        ScopeLLM(engine=engine, llms={"big": "gpt"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="ScopeEngine"):
        ScopeLLM(engine=None, llms=replay_llms())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="value_per_correct"):
        ScopeLLM(engine=engine, llms=replay_llms(), value_per_correct=-2)


def test_only_wrapped_llms_are_candidates() -> None:
    llms = replay_llms()
    llm = ScopeLLM(engine=make_engine(), llms={"small": llms["small"], "mid": llms["mid"]})
    scope = llm.complete(Q_CODE).additional_kwargs["scope"]
    assert scope["model"] in {"small", "mid"} and set(scope["decision"]["candidates"]) == {"small", "mid"}


def test_metadata_summarises_the_wrapped_llms() -> None:
    llms = replay_llms()
    llms["big"] = ReplayLLM(model="big", outcomes=[recorded(Q_CODE, "big")], context_window=4096)
    meta = ScopeLLM(engine=make_engine(), llms=llms).metadata
    assert meta.model_name == "scope-router" and meta.context_window == 4096 and meta.is_chat_model is False


def test_as_settings_llm_in_a_query_engine() -> None:
    engine = make_engine(budget=1.0)
    Settings.llm = _llm(engine)
    index = VectorStoreIndex.from_documents([Document(text="Python lists sort in place with list.sort().")])
    response = index.as_query_engine().query(Q_CODE)
    # The RAG prompt quotes the question: the replay of the chosen model answered it.
    assert str(response).startswith("[") and "replay" in str(response)
    assert engine.ledger is not None and engine.ledger.held == 0.0 and engine.ledger.spent > 0
