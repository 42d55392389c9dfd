"""Shared builders for the LlamaIndex adapter's unit tests: a small hermetic store and replay LLMs.

Two question families with opposite records: ``small`` answers capital-city questions correctly and code
questions wrongly; ``big`` answers both correctly but costs ~1000x more. With ``value_per_correct=0.01`` the
router should pick ``small`` for capitals and ``big`` for code.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.tools import BaseTool, QueryEngineTool, ToolMetadata

from scope_llamaindex import ReplayLLM, ScopeSelector, _tickets
from scope_shared import AnchorStore, Budget, HashingEmbedder, ModelCard, Outcome, ScopeEngine

CARDS = [
    ModelCard(name="small", input_per_mtok=0.1, output_per_mtok=0.2),
    ModelCard(name="mid", input_per_mtok=1.0, output_per_mtok=2.0),
    ModelCard(name="big", input_per_mtok=10.0, output_per_mtok=30.0),
]
CAPITAL = "What is the capital city of country number {i}?"
CODE = "Write python code that sorts list number {i} in place."
RECORD = {  # model -> (correct on capitals, correct on code, output tokens)
    "small": (1.0, 0.0, 10),
    "mid": (1.0, 0.0, 40),
    "big": (1.0, 1.0, 100),
}
Q_CAPITAL = CAPITAL.format(i=900)
Q_CODE = CODE.format(i=901)


def outcomes(indices: range) -> list[Outcome]:
    rows = []
    for i in indices:
        for model, (cap, code, tokens) in RECORD.items():
            rows.append(
                Outcome(query=CAPITAL.format(i=i), model=model, correct=cap, output_tokens=tokens, input_tokens=12)
            )
            rows.append(
                Outcome(query=CODE.format(i=i), model=model, correct=code, output_tokens=tokens, input_tokens=14)
            )
    return rows


ANCHORS = outcomes(range(12))
# Held-out questions: never in the anchor store; the replay LLMs answer them with these records.
HELD_OUT = outcomes(range(900, 960))


def make_store() -> AnchorStore:
    store = AnchorStore(embedder=HashingEmbedder())
    store.add(ANCHORS, progress=False)
    return store


def make_engine(*, budget: float | None = None, value_per_correct: float | None = 0.01, **kw: object) -> ScopeEngine:
    engine = ScopeEngine(
        store=make_store(),
        models=CARDS,
        value_per_correct=value_per_correct,
        budget=Budget(limit=budget) if budget is not None else None,
        **{"write_behind": 0, **kw},  # type: ignore[arg-type]  # outcomes written at once: tests read them back
    )
    engine.wait_ready(timeout=30)
    return engine


def replay_llms() -> dict[str, ReplayLLM]:
    return ReplayLLM.from_outcomes(HELD_OUT)


def router_query_engine(
    engine: ScopeEngine, llms: dict[str, ReplayLLM] | None = None, **selector_kwargs: Any
) -> RouterQueryEngine:
    """A RouterQueryEngine over one small index, one tool per replay LLM, selected by a ScopeSelector."""
    llms = llms or replay_llms()
    index = VectorStoreIndex.from_documents([Document(text="Python lists sort in place.")])
    tools = [
        QueryEngineTool(query_engine=index.as_query_engine(llm=llm), metadata=ToolMetadata(name=name, description=name))
        for name, llm in llms.items()
    ]
    return RouterQueryEngine(selector=ScopeSelector(engine=engine, **selector_kwargs), query_engine_tools=tools)


def recorded(query: str, model: str) -> Outcome:
    return next(o for o in HELD_OUT if o.query == query and o.model == model)


class ToolCallingFake(FunctionCallingLLM):
    """A function-calling LLM named ``model``: given tools and no tool result yet, it calls the first tool
    with the last user message as ``query``; otherwise it answers ``[model] <last tool result>``. It reports
    usage (OpenAI's keys) and keeps the keyword arguments each call received in ``seen``."""

    model: str
    _seen: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model, is_chat_model=True, is_function_calling_model=True)

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self._seen

    def _reply(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        self._seen.append(dict(kwargs))
        tools: list[BaseTool] = list(kwargs.get("tools") or [])
        results = [m for m in messages if m.role == MessageRole.TOOL]
        if tools and not results:
            question = next(str(m.content) for m in reversed(messages) if m.role == MessageRole.USER)
            call = ToolCallBlock(
                tool_call_id=f"{self.model}-call",
                tool_name=str(tools[0].metadata.name),
                tool_kwargs={"query": question},
            )
            message = ChatMessage(role=MessageRole.ASSISTANT, blocks=[call])
        else:
            message = ChatMessage(
                role=MessageRole.ASSISTANT, content=f"[{self.model}] {results[-1].content if results else 'no tool'}"
            )
        usage = {"prompt_tokens": 20 * len(messages), "completion_tokens": 7}
        return ChatResponse(message=message, delta=message.content or "", additional_kwargs=usage, raw={"usage": usage})

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._reply(messages, kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._reply(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        response = self._reply(messages, kwargs)

        def gen() -> ChatResponseGen:
            yield response

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        response = self._reply(messages, kwargs)

        async def gen() -> AsyncGenerator[ChatResponse, None]:
            yield response

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self.chat([ChatMessage(role="user", content=prompt)]).message.content or "")

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self.complete(prompt)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        response = self.complete(prompt)

        def gen() -> CompletionResponseGen:
            yield response

        return gen()

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        response = self.complete(prompt)

        async def gen() -> AsyncGenerator[CompletionResponse, None]:
            yield response

        return gen()

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role="user", content=user_msg) if isinstance(user_msg, str) else user_msg)
        extra = {"allow_parallel_tool_calls": allow_parallel_tool_calls, "tool_required": tool_required}
        return {"messages": messages, "tools": list(tools), **extra, **kwargs}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            msg = f"expected a tool call from {self.model}"
            raise ValueError(msg)
        return [
            ToolSelection(tool_id=c.tool_call_id or "", tool_name=c.tool_name, tool_kwargs=dict(c.tool_kwargs))  # type: ignore[arg-type]
            for c in calls
        ]


@pytest.fixture(autouse=True)
def li_settings() -> Iterator[None]:
    """Set LlamaIndex's global LLM and embedder explicitly (the defaults need the network); restore after.

    Autouse: a test module that imports it runs every test with it.
    """
    prev_llm = Settings._llm
    prev_embed = Settings._embed_model
    Settings.llm = replay_llms()["small"]
    Settings.embed_model = MockEmbedding(embed_dim=8)
    token = _tickets._ACTIVE.set(())
    try:
        yield
    finally:
        _tickets._ACTIVE.reset(token)
        Settings._llm = prev_llm
        Settings._embed_model = prev_embed
