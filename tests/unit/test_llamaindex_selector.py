"""ScopeSelector driven through real RouterQueryEngine and RouterRetriever objects."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.base_selector import MultiSelection
from llama_index.core.query_engine import CustomQueryEngine, RetrieverQueryEngine, RouterQueryEngine
from llama_index.core.retrievers import RouterRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.tools import QueryEngineTool, RetrieverTool, ToolMetadata

from scope_llamaindex import ScopeEventHandler, ScopeSelection, ScopeSelector, replay_grader
from scope_shared import BudgetExceededError, ConfigError, ScopeEngine, UnknownModelError
from tests.unit.llamaindex_fixtures import (
    Q_CAPITAL,
    Q_CODE,
    li_settings,  # noqa: F401 - autouse: every test here runs with it
    make_engine,
    recorded,
    replay_llms,
)


def _index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(
        [Document(text="Every country has a capital city."), Document(text="Python lists sort in place.")]
    )


def _tools(names: list[str] | None = None) -> list[QueryEngineTool]:
    index = _index()
    llms = replay_llms()
    return [
        QueryEngineTool(
            query_engine=index.as_query_engine(llm=llms[name]),
            metadata=ToolMetadata(name=name, description=f"the index answered by {name}"),
        )
        for name in (names or ["small", "mid", "big"])
    ]


def _router(engine: ScopeEngine, **kw: object) -> RouterQueryEngine:
    return RouterQueryEngine(selector=ScopeSelector(engine=engine, **kw), query_engine_tools=_tools())  # type: ignore[arg-type]


def _selection(response: object) -> ScopeSelection:
    result = response.metadata["selector_result"]  # type: ignore[attr-defined]
    assert isinstance(result, MultiSelection)
    sel = result.selections[0]
    assert isinstance(sel, ScopeSelection)
    return sel


def test_router_query_engine_picks_by_utility_and_answers_with_that_model() -> None:
    router = _router(make_engine())
    cheap = router.query(Q_CAPITAL)
    hard = router.query(Q_CODE)
    assert _selection(cheap).model == "small"
    assert _selection(hard).model == "big"
    # The answer really came from the selected tool's LLM.
    assert str(cheap).startswith("[small] replayed") and str(hard).startswith("[big] replayed")
    assert _selection(cheap).index == 0 and _selection(hard).index == 2


def test_selection_reason_explains_winner_runner_up_and_anchors() -> None:
    sel = _selection(_router(make_engine()).query(Q_CODE))
    assert sel.reason.startswith("SCOPE chose big: expected accuracy")
    assert "runner-up " in sel.reason
    top = sel.decision.estimates["big"].evidence[0]
    assert f"based on similar anchors (nearest at similarity {top.similarity:.2f}" in sel.reason
    est = sel.decision.estimates["big"]
    assert f"{est.p_correct:.0%}" in sel.reason and f"${est.cost:.6f}" in sel.reason
    assert sel.decision.model == "big" and set(sel.decision.estimates) == {"small", "mid", "big"}


def test_value_per_correct_override_changes_the_choice() -> None:
    engine = make_engine(value_per_correct=0.01)
    assert _selection(_router(engine).query(Q_CODE)).model == "big"
    # A correct answer worth nothing: the cheapest model wins.
    assert _selection(_router(engine, value_per_correct=0.0).query(Q_CODE)).model == "small"


async def test_router_query_engine_async() -> None:
    router = _router(make_engine())
    response = await router.aquery(Q_CODE)
    assert _selection(response).model == "big"
    assert str(response).startswith("[big] replayed")


def test_tool_names_must_be_engine_models() -> None:
    router = RouterQueryEngine(
        selector=ScopeSelector(engine=make_engine()),
        query_engine_tools=[
            QueryEngineTool(
                query_engine=_index().as_query_engine(), metadata=ToolMetadata(name="gpt-9", description="x")
            )
        ],
    )
    with pytest.raises(UnknownModelError, match=r"'gpt-9'.*name each tool after one of \['big', 'mid', 'small'\]"):
        router.query(Q_CODE)


def test_aliases_map_tool_names_to_engine_models() -> None:
    """Issue 16 item 18: tools named for what they do (two query engines over other data, same LLMs)."""
    engine = make_engine()
    index, llms = _index(), replay_llms()
    tools = [
        QueryEngineTool(
            query_engine=index.as_query_engine(llm=llms[model]),
            metadata=ToolMetadata(name=tool, description=f"the index answered by {model}"),
        )
        for tool, model in (("fast_answers", "small"), ("careful_answers", "big"))
    ]
    with pytest.raises(UnknownModelError, match=r"'fast_answers'.*aliases=.*ScopeSelector\(aliases=\{'fast_answers'"):
        RouterQueryEngine(selector=ScopeSelector(engine=engine), query_engine_tools=tools).query(Q_CODE)
    selector = ScopeSelector(engine=engine, aliases={"fast_answers": "small", "careful_answers": "big"})
    router = RouterQueryEngine(selector=selector, query_engine_tools=tools)
    hard, easy = _selection(router.query(Q_CODE)), _selection(router.query(Q_CAPITAL))
    assert (hard.model, hard.tool, hard.index) == ("big", "careful_answers", 1)
    assert (easy.model, easy.tool, easy.index) == ("small", "fast_answers", 0)
    # Only the two aliased models were candidates.
    assert set(hard.decision.estimates) == {"small", "big"}


def test_aliases_are_validated() -> None:
    engine = make_engine()
    with pytest.raises(UnknownModelError, match=r"aliases\['fast'\] = 'gpt-9' is not a model of the engine"):
        ScopeSelector(engine=engine, aliases={"fast": "gpt-9"})
    with pytest.raises(ConfigError, match="aliases must be a mapping"):
        ScopeSelector(engine=engine, aliases=["fast"])  # type: ignore[arg-type]
    selector = ScopeSelector(engine=engine, aliases={"a": "big", "b": "big"})
    with pytest.raises(ConfigError, match=r"choices 0 \('a'\) and 1 \('b'\) both stand for 'big'"):
        selector.select([ToolMetadata(name="a", description="a"), ToolMetadata(name="b", description="b")], "q")


def test_duplicate_and_missing_tool_names_are_rejected() -> None:
    selector = ScopeSelector(engine=make_engine())
    with pytest.raises(ConfigError, match="both named 'small'"):
        selector.select([ToolMetadata(name="small", description="a"), ToolMetadata(name="small", description="b")], "q")
    with pytest.raises(ConfigError, match="has no name"):
        selector.select(["a plain description"], "q")


def test_constructor_validates() -> None:
    with pytest.raises(ConfigError, match="ScopeEngine"):
        ScopeSelector(engine="engine")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_outputs"):
        ScopeSelector(engine=make_engine(), max_outputs=0)
    with pytest.raises(ConfigError, match="value_per_correct"):
        ScopeSelector(engine=make_engine(), value_per_correct=-1.0)
    with pytest.raises(TypeError):
        ScopeSelector(make_engine())  # type: ignore[misc]


def test_prompt_mixin_has_no_prompts() -> None:
    selector = ScopeSelector(engine=make_engine())
    assert selector.get_prompts() == {}
    selector.update_prompts({})
    router = _router(make_engine())
    assert not any(k.startswith("selector:") for k in router.get_prompts())


def test_multi_selection_takes_top_n_by_utility() -> None:
    engine = make_engine()
    selector = ScopeSelector(engine=engine, max_outputs=2)
    choices = [ToolMetadata(name=n, description=n) for n in ("small", "mid", "big")]
    result = selector.select(choices, Q_CODE)
    decision = result.selections[0].decision
    assert [s.model for s in result.selections] == decision.ranking()[:2]
    assert result.inds == [("small", "mid", "big").index(m) for m in decision.ranking()[:2]]
    assert result.selections[1].reason.startswith(f"SCOPE chose {decision.ranking()[1]}")


def test_multi_selection_stays_within_the_budget() -> None:
    engine = make_engine(budget=1.0)
    selector = ScopeSelector(engine=engine, max_outputs=3)
    choices = [ToolMetadata(name=n, description=n) for n in ("small", "mid", "big")]
    first = selector.select(choices, Q_CODE)
    assert len(first.selections) == 3
    held = sum(s.decision.reserved_cost for s in first.selections)
    assert engine.ledger is not None and engine.ledger.held == pytest.approx(held)
    assert selector.release(first) == 3 and engine.ledger.held == 0.0
    # Leave room for the winner only: the extras no longer fit and are dropped.
    big = first.selections[0].decision.estimates["big"].cost
    tight = make_engine(budget=big * 1.0001)
    result = ScopeSelector(engine=tight, max_outputs=3).select(choices, Q_CODE)
    assert [s.model for s in result.selections] == ["big"]


def test_multi_selection_through_router_query_engine_combines_answers() -> None:
    router = RouterQueryEngine(
        selector=ScopeSelector(engine=make_engine(), max_outputs=2),
        query_engine_tools=_tools(),
    )
    response = router.query(Q_CODE)
    models = [s.model for s in response.metadata["selector_result"].selections]
    assert len(models) == 2 and models[0] == "big"


def test_budget_reservation_is_settled_by_the_handler_with_real_cost() -> None:
    engine = make_engine(budget=1.0)
    router = _router(engine)
    with ScopeEventHandler(engine=engine, grader=replay_grader([recorded(Q_CODE, "big")])) as handler:
        response = router.query(Q_CODE)
    sel = _selection(response)
    out = recorded(Q_CODE, "big")
    real = engine.cost_of("big", input_tokens=out.input_tokens or 0, output_tokens=out.output_tokens or 0)
    assert engine.ledger is not None
    assert engine.ledger.held == 0.0
    assert engine.ledger.spent == pytest.approx(real)
    assert sel.cost == pytest.approx(real) and sel.output_tokens == out.output_tokens and sel.calls == 1
    assert handler.recorded == 1


def test_budget_that_fits_nothing_raises() -> None:
    engine = make_engine(budget=1e-12)
    with pytest.raises(BudgetExceededError):
        _router(engine).query(Q_CODE)


def test_budget_steers_to_a_model_that_fits() -> None:
    probe = make_engine()
    estimates = (
        ScopeSelector(engine=probe)
        .select([ToolMetadata(name=n, description=n) for n in ("small", "mid", "big")], Q_CODE)
        .selections[0]
        .decision.estimates
    )
    engine = make_engine(budget=estimates["mid"].cost * 1.5)
    assert _selection(_router(engine).query(Q_CODE)).model in {"small", "mid"}


def test_reserve_false_holds_nothing() -> None:
    engine = make_engine(budget=1.0)
    sel = _selection(_router(engine, reserve=False).query(Q_CODE))
    assert sel.decision.reservation_id is None
    assert engine.ledger is not None and engine.ledger.held == 0.0 and engine.ledger.spent == 0.0


def _retriever_tools() -> list[RetrieverTool]:
    tools = []
    for name in ("small", "mid", "big"):
        index = VectorStoreIndex([TextNode(text=f"passage kept for {name}", id_=f"node-{name}")])
        tools.append(RetrieverTool(retriever=index.as_retriever(), metadata=ToolMetadata(name=name, description=name)))
    return tools


def test_router_retriever_returns_the_selected_models_nodes() -> None:
    engine = make_engine(budget=1.0)
    selector = ScopeSelector(engine=engine)
    retriever = RouterRetriever(selector=selector, retriever_tools=_retriever_tools())
    nodes = retriever.retrieve(Q_CODE)
    assert [n.node.node_id for n in nodes] == ["node-big"]
    # A retrieval makes no LLM call: its selection's reservation is released when retrieve() returns.
    assert engine.ledger is not None and engine.ledger.held == 0.0 and engine.ledger.spent == 0.0


def test_many_retrievals_under_a_tight_budget_hold_nothing() -> None:
    """Issue 16 item 7: each retrieval used to keep its reservation, so the budget filled with $0 spent and
    later selections were steered to cheaper models, then refused."""
    engine = make_engine(budget=0.01)
    retriever = RouterRetriever(selector=ScopeSelector(engine=engine), retriever_tools=_retriever_tools())
    one = (
        ScopeSelector(engine=make_engine(budget=1.0))
        .select([t.metadata for t in _retriever_tools()], Q_CODE)
        .selections[0]
    )
    assert one.decision.reserved_cost > 0.01 / 4  # a handful of leaked reservations would fill the budget
    assert engine.ledger is not None
    for _ in range(40):
        nodes = retriever.retrieve(Q_CODE)
        assert [n.node.node_id for n in nodes] == ["node-big"]
        assert engine.ledger.held == 0.0
    assert engine.ledger.spent == 0.0


async def test_async_and_concurrent_multi_retrievals_hold_nothing() -> None:
    engine = make_engine(budget=0.01)
    retriever = RouterRetriever(
        selector=ScopeSelector(engine=engine, max_outputs=2), retriever_tools=_retriever_tools()
    )
    assert engine.ledger is not None
    for _ in range(20):
        assert "node-big" in {n.node.node_id for n in await retriever.aretrieve(Q_CODE)}
        assert engine.ledger.held == 0.0
    # Concurrent retrievals hold their reservations at the same time (so some are steered); none is kept.
    results = await asyncio.gather(*(retriever.aretrieve(Q_CODE) for _ in range(20)))
    assert all(1 <= len(nodes) <= 2 for nodes in results)
    assert engine.ledger.held == 0.0 and engine.ledger.spent == 0.0


def test_retrieval_still_respects_the_budget() -> None:
    retriever = RouterRetriever(
        selector=ScopeSelector(engine=make_engine(budget=1e-12)), retriever_tools=_retriever_tools()
    )
    with pytest.raises(BudgetExceededError):
        retriever.retrieve(Q_CODE)


class _FailingRetriever(BaseRetriever):
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        raise RuntimeError("index offline")


class _FailingQueryEngine(CustomQueryEngine):
    def custom_query(self, query_str: str) -> str:
        raise RuntimeError("index offline")


def test_a_failed_retrieval_releases_its_selection() -> None:
    engine = make_engine(budget=1.0)
    tools = [RetrieverTool(retriever=_FailingRetriever(), metadata=ToolMetadata(name="big", description="big"))]
    retriever = RouterRetriever(selector=ScopeSelector(engine=engine), retriever_tools=tools)
    with pytest.raises(RuntimeError, match="index offline"):
        retriever.retrieve(Q_CODE)
    assert engine.ledger is not None and engine.ledger.held == 0.0


def test_a_failed_routed_query_releases_its_selection() -> None:
    engine = make_engine(budget=1.0)
    tools = [QueryEngineTool(query_engine=_FailingQueryEngine(), metadata=ToolMetadata(name="big", description="b"))]
    router = RouterQueryEngine(selector=ScopeSelector(engine=engine), query_engine_tools=tools)
    with pytest.raises(RuntimeError, match="index offline"):
        router.query(Q_CODE)
    assert engine.ledger is not None and engine.ledger.held == 0.0


def test_a_routed_retrieval_inside_a_routed_query_leaves_the_query_selection_active() -> None:
    """The query engine SCOPE chose retrieves through its own RouterRetriever; the LLM call that follows is
    still the query's selection's, and settles it."""
    engine = make_engine(budget=1.0)
    llms = replay_llms()
    inner = RouterRetriever(selector=ScopeSelector(engine=engine), retriever_tools=_retriever_tools())
    tools = [
        QueryEngineTool(
            query_engine=RetrieverQueryEngine.from_args(inner, llm=llms[name]),
            metadata=ToolMetadata(name=name, description=name),
        )
        for name in ("small", "mid", "big")
    ]
    router = RouterQueryEngine(selector=ScopeSelector(engine=engine), query_engine_tools=tools)
    with ScopeEventHandler(engine=engine, grader=replay_grader([recorded(Q_CODE, "big")])) as handler:
        response = router.query(Q_CODE)
    sel = _selection(response)
    assert sel.model == "big" and sel.calls == 1 and str(response).startswith("[big] replayed")
    assert engine.ledger is not None and engine.ledger.held == 0.0
    assert engine.ledger.spent == pytest.approx(sel.cost) and sel.cost > 0
    assert handler.recorded == 1


async def test_router_retriever_async_multi() -> None:
    selector = ScopeSelector(engine=make_engine(), max_outputs=2)
    retriever = RouterRetriever(selector=selector, retriever_tools=_retriever_tools())
    nodes = await retriever.aretrieve(Q_CAPITAL)
    ids = {n.node.node_id for n in nodes}
    assert len(ids) == 2 and "node-small" in ids
