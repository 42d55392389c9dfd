"""The LlamaIndex adapter asks the engine: it never reaches engine.store or engine.ledger (one-way data flow)."""

from __future__ import annotations

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.tools import ToolMetadata

from scope_llamaindex import ScopeEventHandler, ScopeLLM, ScopeSelector
from tests.unit.adapter_boundary import reaches, seal
from tests.unit.llamaindex_fixtures import (
    Q_CAPITAL,
    Q_CODE,
    li_settings,  # noqa: F401 - autouse: every test here runs with it
    make_engine,
    replay_llms,
    router_query_engine,
)


def test_the_sources_never_reach_past_the_engine() -> None:
    assert reaches("scope_llamaindex") == []


async def test_main_paths_never_touch_the_store_or_the_ledger() -> None:
    engine = seal(make_engine(budget=1.0))
    with ScopeEventHandler(engine=engine) as handler:
        llm = ScopeLLM(engine=engine, llms=replay_llms())
        done = llm.complete(Q_CODE)
        llm.chat([ChatMessage(role="user", content=Q_CAPITAL)])
        assert list(llm.stream_complete(Q_CAPITAL))
        await llm.acomplete(Q_CODE)
        assert [c async for c in await llm.astream_chat([ChatMessage(role="user", content=Q_CODE)])]

        single = router_query_engine(engine).query(Q_CODE)
        multi = await router_query_engine(engine, max_outputs=2).aquery(Q_CAPITAL)
        assert len(multi.metadata["selector_result"].selections) == 2

        selector = ScopeSelector(engine=engine, max_outputs=2)
        unused = selector.select([ToolMetadata(name=n, description=n) for n in ("small", "mid", "big")], Q_CODE)
        assert selector.release(unused) == 2

        assert handler.feedback(done, correct=1.0) == 1
        assert handler.feedback(single, correct=0.0) == 1
    assert engine.reached == []
    assert handler.failures == 0 and handler.recorded == 2
