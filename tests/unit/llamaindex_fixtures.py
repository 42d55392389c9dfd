"""Shared builders for the LlamaIndex adapter's unit tests: a small hermetic store and replay LLMs.

Two question families with opposite records: ``small`` answers capital-city questions correctly and code
questions wrongly; ``big`` answers both correctly but costs ~1000x more. With ``value_per_correct=0.01`` the
router should pick ``small`` for capitals and ``big`` for code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.tools import QueryEngineTool, ToolMetadata

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
