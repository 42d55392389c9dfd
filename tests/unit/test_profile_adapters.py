"""scope_langchain.profile_call and scope_llamaindex.profile_call: a framework's model profiled by profile()."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms import CustomLLM

import scope_langchain
import scope_llamaindex
from scope_shared.embeddings import HashingEmbedder
from scope_shared.errors import ConfigError
from scope_shared.profile import profile
from scope_shared.store import AnchorStore
from scope_shared.suites import AnchorSuite, seed_store
from tests.unit.test_profile import CARD, FakeModel, question, stored


@pytest.fixture
def suite() -> AnchorSuite:
    return AnchorSuite(questions=[question(i) for i in range(6)], name="unit")


@pytest.fixture
def store(suite: AnchorSuite) -> AnchorStore:
    store = AnchorStore(embedder=HashingEmbedder())
    seed_store(store, suite)
    return store


class SuiteChatModel(BaseChatModel):
    """Answers suite prompts (right on even questions), reports usage; records the messages it got."""

    answers: Any
    seen: list[list[tuple[str, str]]] = []
    report_usage: bool = True

    @property
    def _llm_type(self) -> str:
        return "suite-fake"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append([(m.type, str(m.content)) for m in messages])
        text, _ = self.answers(str(messages[-1].content))
        usage = {"input_tokens": 21, "output_tokens": 4, "total_tokens": 25} if self.report_usage else None
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text, usage_metadata=usage))])


def test_langchain_chat_model(suite: AnchorSuite, store: AnchorStore) -> None:
    knows = {"q0", "q2", "q4"}
    model = SuiteChatModel(answers=FakeModel(suite, knows=knows), seen=[])
    report = profile(store, model=CARD, call=scope_langchain.profile_call(model), suite=suite, n=None, progress=False)
    assert stored(store, suite) == {q.query_id: float(q.query_id in knows) for q in suite}
    assert {(e.input_tokens, e.output_tokens, e.usage) for e in report.entries} == {(21, 4, "reported")}
    assert sorted(m[0][1] for m in model.seen) == sorted(q.prompt for q in suite)
    assert {len(m) for m in model.seen} == {1}  # the prompt alone, as a human message


def test_langchain_system_message_and_missing_usage(suite: AnchorSuite, store: AnchorStore) -> None:
    model = SuiteChatModel(answers=FakeModel(suite), seen=[], report_usage=False)
    call = scope_langchain.profile_call(model, system="Be terse.")
    report = profile(store, model=CARD, call=call, suite=suite, n=2, progress=False)
    assert [m[0] for m in model.seen] == [("system", "Be terse.")] * 2
    assert {e.usage for e in report.entries} == {"estimated"}


class SuiteLLM(CustomLLM):
    """Answers suite prompts through ``chat``, reporting OpenAI-style usage in ``raw``."""

    answers: Any
    seen: list[list[tuple[str, str]]] = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="suite-fake")

    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        self.seen.append([(str(m.role.value), str(m.content)) for m in messages])
        text, _ = self.answers(str(messages[-1].content))
        return ChatResponse(
            message=ChatMessage(role="assistant", content=text),
            raw={"usage": {"prompt_tokens": 30, "completion_tokens": 5}},
        )

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise AssertionError("profile_call uses chat")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise AssertionError("profile_call uses chat")


def test_llamaindex_llm(suite: AnchorSuite, store: AnchorStore) -> None:
    knows = {"q1", "q2"}
    llm = SuiteLLM(answers=FakeModel(suite, knows=knows), seen=[])
    call = scope_llamaindex.profile_call(llm, system="Be terse.")
    report = profile(store, model=CARD, call=call, suite=suite, n=None, progress=False)
    assert stored(store, suite) == {q.query_id: float(q.query_id in knows) for q in suite}
    assert {(e.input_tokens, e.output_tokens, e.usage) for e in report.entries} == {(30, 5, "reported")}
    assert all(m[0] == ("system", "Be terse.") and m[1][0] == "user" for m in llm.seen)


def test_wrong_objects_are_refused() -> None:
    with pytest.raises(ConfigError, match="takes a LangChain BaseChatModel"):
        scope_langchain.profile_call("gpt-4o")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="takes a LlamaIndex LLM"):
        scope_llamaindex.profile_call(object())  # type: ignore[arg-type]
