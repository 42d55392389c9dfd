"""End to end on real data: LlamaIndex replays reach the same accuracy and cost as ``evaluate``.

Every routerbench-zs held-out question is sent through the adapter (ScopeLLM ``complete``/``acomplete``,
or a RouterQueryEngine with ScopeSelector) to replay LLMs that answer with each model's recorded outcome.
Routing uses the very store ``evaluate`` loaded (same anchors, same embedder, same k), the same pool and the
recorded prompt-token counts (what a cl100k tokenizer gives; ``count_tokens``), so each decision should be
the one ``evaluate`` replayed. Outcomes recorded during the replay go to a *separate* store through a
ScopeEventHandler, so the routing store does not change between questions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.tools import QueryEngineTool, ToolMetadata

from scope_llamaindex import ReplayLLM, ScopeEventHandler, ScopeLLM, ScopeSelection, ScopeSelector, replay_grader
from scope_shared import AnchorStore, HashingEmbedder, ModelCard, Outcome, ScopeEngine, load_outcomes, load_prices
from scope_shared.evaluation import evaluate

VALUES: list[float | None] = [None, 0.01, 0.003]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Setup:
    store: AnchorStore
    cards: list[ModelCard]
    test: list[Outcome]
    report: dict[str, Any]

    def point(self, value: float | None) -> dict[str, Any]:
        return next(p for p in self.report["routing"]["curve"] if p["value_per_correct"] == value)

    @property
    def pool(self) -> list[str]:
        return list(self.report["routing"]["pool"])

    @property
    def questions(self) -> list[str]:
        return list(dict.fromkeys(o.query for o in self.test))

    def count_tokens(self) -> Any:
        tokens = {o.query: o.input_tokens for o in self.test if o.input_tokens is not None}
        return lambda text: tokens[text]

    def engine(self, value: float | None) -> ScopeEngine:
        return ScopeEngine(store=self.store, models=self.cards, k=self.report["k"], value_per_correct=value)

    def grade(self, query: str, model: str) -> float:
        return next(o.correct for o in self.test if o.query == query and o.model == model)


@pytest.fixture(scope="module")
def setup(data_dir: Path) -> Setup:
    data = data_dir / "routerbench-zs"
    anchors = load_outcomes(data / "anchors.csv.gz")
    test = load_outcomes(data / "test.csv.gz")
    cards = load_prices(data / "prices.csv")
    store = AnchorStore(embedder=HashingEmbedder())
    report = evaluate(anchors, test, cards, store=store, values=VALUES)
    known = {o.model for o in anchors}
    return Setup(store=store, cards=[c for c in cards if c.name in known], test=test, report=report)


@pytest.fixture(autouse=True)
def li_settings() -> Iterator[None]:
    prev_llm, prev_embed = Settings._llm, Settings._embed_model
    Settings.embed_model = MockEmbedding(embed_dim=8)
    yield
    Settings._llm, Settings._embed_model = prev_llm, prev_embed


def _sink(setup: Setup) -> ScopeEngine:
    return ScopeEngine(store=AnchorStore(embedder=HashingEmbedder()), models=setup.cards)


def _check(setup: Setup, value: float | None, picks: list[tuple[str, str, float]], sink: ScopeEngine) -> None:
    expected = setup.point(value)
    accuracy = sum(setup.grade(q, m) for q, m, _ in picks) / len(picks)
    cost = sum(c for _, _, c in picks) / len(picks)
    print(
        f"V={value}: adapter accuracy {accuracy:.4f} cost ${cost:.6g} | "
        f"evaluate accuracy {expected['accuracy']:.4f} cost ${expected['cost']:.6g}"
    )
    assert len(picks) == setup.report["routing"]["queries"] == len(setup.questions)
    assert accuracy == pytest.approx(expected["accuracy"], abs=1e-12)
    assert cost == pytest.approx(expected["cost"], rel=1e-9)
    share = {m: sum(1 for _, p, _ in picks if p == m) / len(picks) for m in {p for _, p, _ in picks}}
    assert share == pytest.approx(expected["model_share"])
    # The routing store never changed; every graded outcome went to the sink (written behind: flush first).
    sink.flush()
    assert setup.store.count() == setup.report["anchors"]
    assert sink.store.count() == len(picks)


def test_scope_llm_complete_matches_evaluate(setup: Setup) -> None:
    value = 0.01
    llm = ScopeLLM(
        engine=setup.engine(value),
        llms={m: ReplayLLM(model=m, outcomes=setup.test) for m in setup.pool},
        count_tokens=setup.count_tokens(),
    )
    sink = _sink(setup)
    picks = []
    with ScopeEventHandler(engine=sink, grader=replay_grader(setup.test)) as handler:
        for q in setup.questions:
            scope = llm.complete(q).additional_kwargs["scope"]
            picks.append((q, scope["model"], scope["cost"]))
    assert handler.recorded == len(picks) and handler.pending == 0
    _check(setup, value, picks, sink)


def test_scope_llm_async_matches_evaluate_at_accuracy_only(setup: Setup) -> None:
    llm = ScopeLLM(
        engine=setup.engine(None),
        llms={m: ReplayLLM(model=m, outcomes=setup.test) for m in setup.pool},
        count_tokens=setup.count_tokens(),
    )
    sink = _sink(setup)

    async def run() -> list[tuple[str, str, float]]:
        out = []
        for q in setup.questions:
            scope = (await llm.acomplete(q)).additional_kwargs["scope"]
            out.append((q, scope["model"], scope["cost"]))
        return out

    with ScopeEventHandler(engine=sink, grader=replay_grader(setup.test)):
        picks = asyncio.run(run())
    _check(setup, None, picks, sink)


def test_router_query_engine_with_scope_selector_matches_evaluate(setup: Setup) -> None:
    value = 0.003
    llms = {m: ReplayLLM(model=m, outcomes=setup.test) for m in setup.pool}
    Settings.llm = llms[setup.pool[0]]
    index = VectorStoreIndex.from_documents([Document(text="Answer the question as asked.")])
    tools = [
        QueryEngineTool(query_engine=index.as_query_engine(llm=llm), metadata=ToolMetadata(name=m, description=m))
        for m, llm in llms.items()
    ]
    selector = ScopeSelector(engine=setup.engine(value), count_tokens=setup.count_tokens())
    router = RouterQueryEngine(selector=selector, query_engine_tools=tools)
    sink = _sink(setup)
    picks = []
    with ScopeEventHandler(engine=sink, grader=replay_grader(setup.test)):
        for q in setup.questions:
            sel = router.query(q).metadata["selector_result"].selections[0]
            assert isinstance(sel, ScopeSelection) and sel.calls == 1
            picks.append((q, sel.model, sel.cost))
    _check(setup, value, picks, sink)
