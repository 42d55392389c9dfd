"""The LangChain adapter asks the engine: it never reaches engine.store or engine.ledger (one-way data flow)."""

from __future__ import annotations

from langchain_core.messages import HumanMessage, SystemMessage

from scope_langchain import ScopeChatModel, ScopeOutcomeHandler, ScopeRouter
from scope_shared import Budget
from tests.unit.adapter_boundary import reaches, seal
from tests.unit.langchain_fakes import MATH_Q, TRIVIA_Q, V_MIXED, fake, fakes, make_engine, reply

# the one transport library the adapter imports: is_transient recognises httpx's errors without a request
ALLOWED = frozenset({"httpx"})


def test_the_sources_never_reach_past_the_engine() -> None:
    assert reaches("scope_langchain", allow_modules=ALLOWED) == []


def test_the_scan_sees_a_reach_past_the_engine() -> None:
    # the scan can fail: the core's engine owns the store and the ledger and reaches them
    found = reaches("scope_shared")
    assert any("engine.py" in r and "._store" in r for r in found)
    assert any("engine.py" in r and "._ledger" in r for r in found)
    assert any("from scope_shared.store" in r for r in found)


async def test_main_paths_never_touch_the_store_or_the_ledger() -> None:
    engine = seal(make_engine(budget=Budget(limit=1.0)))
    handler = ScopeOutcomeHandler(engine=engine, grader=lambda q, a: None)
    models = {**fakes(), "mid": fake("mid", RuntimeError("mid is down"), reply("mid"))}  # fails once: a fallback
    router = ScopeRouter(engine=engine, models=models, value_per_correct=V_MIXED, retries=0)
    config = {"callbacks": [handler]}

    first = router.invoke(MATH_Q, config)
    assert first.response_metadata["scope"]["failed"][0]["model"] == "mid"
    router.batch([MATH_Q, TRIVIA_Q], config)
    await router.ainvoke([SystemMessage("be brief"), HumanMessage(TRIVIA_Q)], config)
    await router.abatch([TRIVIA_Q], config)
    assert "".join(str(c.content) for c in router.stream(MATH_Q, config))
    assert [c async for c in router.astream(TRIVIA_Q, config)]
    held = router.route(MATH_Q, reserve=True).decision
    engine.release(held)

    chat = ScopeChatModel(engine=engine, models=fakes(), value_per_correct=V_MIXED)
    chat.invoke(MATH_Q, config)
    list(chat.stream(TRIVIA_Q, config))
    assert handler.record_feedback(first, 1.0) == 1

    assert engine.reached == []
    assert handler.failures == 0 and handler.pending > 0
