"""ScopeRouter / ScopeChatModel with ``cascade=``: the core's plan drives the calls, every step is reported and
recorded, the budget is settled per step, streaming yields the returned answer once the cascade has ended."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage

from scope_langchain import ScopeChatModel, ScopeOutcomeHandler, ScopeRouter
from scope_shared import Budget, ConfigError
from scope_shared.cascade import Cascade
from scope_shared.store import anchor_id
from tests.unit.cascade_fixtures import calibration
from tests.unit.langchain_fakes import CARDS, TRIVIA_Q, calls, fake, make_engine

NAMES = [c.name for c in CARDS]


def answer(letter: str, tokens: int = 30) -> AIMessage:
    return AIMessage(
        content=f"I pick ({letter}).",
        usage_metadata={"input_tokens": 12, "output_tokens": tokens, "total_tokens": 12 + tokens},
        response_metadata={"logprobs": {"content": [{"token": "B", "logprob": -0.1}]}},
    )


def models(**letters: str | BaseException) -> dict[str, Any]:
    out = {}
    for name in NAMES:
        step = letters.get(name, "B")
        out[name] = fake(name, step if isinstance(step, BaseException) else answer(step))
    return out


def cascade(**kwargs: Any) -> Cascade:
    return Cascade(calibration=calibration(loading=0.5, models=NAMES), grader="choice", **kwargs)


def test_every_step_is_listed_and_paid_for() -> None:
    engine = make_engine(budget=Budget(limit=1.0))
    fakes = models(cheap="A", mid="B", strong="B")
    router = ScopeRouter(engine=engine, models=fakes, value_per_correct=None, cascade=cascade(max_calls=3))
    message = router.invoke(TRIVIA_Q)
    scope = message.response_metadata["scope"]
    steps = scope["cascade"]["steps"]
    assert len(steps) >= 2 and len({s["model"] for s in steps}) == len(steps)
    assert [calls(fakes[s["model"]]) for s in steps] == [1] * len(steps)
    assert sum(calls(m) for m in fakes.values()) == len(steps)
    for s in steps:
        assert s["run_id"] and s["answer"] in ("A", "B") and s["summary"].startswith("I pick")
        assert [e["checker"] for e in s["evidence"]] == ["parse", "logprob"]
        assert s["cost"] == pytest.approx(engine.cost_of(s["model"], input_tokens=12, output_tokens=30))
    assert scope["cascade"]["stop_reason"]
    assert scope["model"] == scope["cascade"]["model"] and message.content == f"I pick ({scope['cascade']['answer']})."
    assert scope["actual_cost"] == pytest.approx(sum(s["cost"] for s in steps))
    assert engine.ledger is not None
    assert engine.ledger.held == pytest.approx(0.0)
    assert engine.ledger.spent == pytest.approx(scope["actual_cost"])


def test_the_outcome_handler_records_every_step() -> None:
    engine = make_engine()
    handler = ScopeOutcomeHandler(engine=engine, grader=lambda q, a: "(B)" in a)
    router = ScopeRouter(engine=engine, models=models(cheap="A"), value_per_correct=None, cascade=cascade())
    question = "translate the word moon into french"
    message = router.invoke(question, config={"callbacks": [handler]})
    engine.flush()
    steps = message.response_metadata["scope"]["cascade"]["steps"]
    recorded = engine.store.get([anchor_id(question)])[anchor_id(question)].outcomes
    assert set(recorded) == {s["model"] for s in steps}
    for s in steps:
        assert recorded[s["model"]].correct == (1.0 if s["answer"] == "B" else 0.0)


def test_a_failing_model_is_released_and_reported() -> None:
    engine = make_engine(budget=Budget(limit=1.0))
    fakes = models(cheap=ValueError("cheap is down"))
    router = ScopeRouter(engine=engine, models=fakes, value_per_correct=None, cascade=cascade(max_calls=3), retries=0)
    scope = router.invoke(TRIVIA_Q).response_metadata["scope"]
    failed = [s for s in scope["cascade"]["steps"] if s["error"]]
    assert calls(fakes["cheap"]) == 1  # accuracy only, cheapest first: a cascade looks before it pays
    assert [f["model"] for f in scope["failed"]] == ["cheap"] and failed[0]["model"] == "cheap"
    assert "cheap is down" in failed[0]["error"] and scope["model"] != "cheap"
    assert engine.ledger is not None and engine.ledger.held == pytest.approx(0.0)


def test_a_failing_steps_credentials_are_masked_like_a_routed_calls() -> None:
    secret = "sk-proj-Abc123Def456Ghi789"
    fakes = models(cheap=ValueError(f"401 for key {secret}"))
    engine = make_engine()
    router = ScopeRouter(engine=engine, models=fakes, value_per_correct=None, cascade=cascade(max_calls=3), retries=0)
    scope = router.invoke(TRIVIA_Q).response_metadata["scope"]
    step = next(s for s in scope["cascade"]["steps"] if s["error"])
    assert "401 for key" in scope["failed"][0]["error"] and "401 for key" in step["error"]
    assert secret not in str(scope)


async def test_a_failing_model_is_released_and_reported_async() -> None:
    engine = make_engine(budget=Budget(limit=1.0))
    fakes = models(cheap=ValueError("cheap is down"))
    router = ScopeRouter(engine=engine, models=fakes, value_per_correct=None, cascade=cascade(max_calls=3), retries=0)
    scope = (await router.ainvoke(TRIVIA_Q)).response_metadata["scope"]
    failed = [s for s in scope["cascade"]["steps"] if s["error"]]
    assert calls(fakes["cheap"]) == 1 and [f["model"] for f in scope["failed"]] == ["cheap"]
    assert [s["model"] for s in failed] == ["cheap"] and failed[0]["run_id"] is None and scope["model"] != "cheap"
    assert engine.ledger is not None and engine.ledger.held == pytest.approx(0.0)


class Abort(BaseException):
    """Not an Exception (like KeyboardInterrupt): no failed call, the caller stops. (Async: LangChain's own
    ``agenerate`` turns such an error into a result; the core driver's async path is tested in test_cascade_driver.)"""


def test_an_interrupt_cancels_the_cascade_and_releases_its_reservation() -> None:
    engine = make_engine(budget=Budget(limit=1.0))
    fakes = models(cheap=Abort())
    router = ScopeRouter(engine=engine, models=fakes, value_per_correct=None, cascade=cascade(max_calls=3), retries=0)
    with pytest.raises(Abort):
        router.invoke(TRIVIA_Q)
    assert calls(fakes["cheap"]) == 1 and sum(calls(m) for m in fakes.values()) == 1  # not reported as a failed call
    assert engine.ledger is not None and engine.ledger.held == pytest.approx(0.0) and engine.ledger.spent == 0.0


def test_stream_yields_the_returned_answer_once_the_cascade_ends() -> None:
    router = ScopeRouter(engine=make_engine(), models=models(), value_per_correct=None, cascade=cascade(max_calls=2))
    chunks = list(router.stream(TRIVIA_Q))
    assert len(chunks) == 1
    assert chunks[0].content == "I pick (B)." and "cascade" in chunks[0].response_metadata["scope"]


async def test_async_and_the_chat_model_face() -> None:
    engine = make_engine()
    router = ScopeRouter(engine=engine, models=models(), value_per_correct=None, cascade=cascade(max_calls=2))
    message = await router.ainvoke(TRIVIA_Q)
    assert len(message.response_metadata["scope"]["cascade"]["steps"]) == 2
    chat = ScopeChatModel(engine=engine, models=models(), value_per_correct=None, cascade=cascade(max_calls=2))
    assert len(chat.invoke(TRIVIA_Q).response_metadata["scope"]["cascade"]["steps"]) == 2
    assert len((await chat.ainvoke(TRIVIA_Q)).response_metadata["scope"]["cascade"]["steps"]) == 2
    chunks = [c async for c in chat.astream(TRIVIA_Q) if c.content]  # langchain-core may end with an empty chunk
    assert len(chunks) == 1 and "cascade" in chunks[0].response_metadata["scope"]
    assert len([c for c in chat.stream(TRIVIA_Q) if c.content]) == 1


def test_batch_runs_each_cascade_and_a_forced_model_does_not_cascade() -> None:
    router = ScopeRouter(engine=make_engine(), models=models(), value_per_correct=None, cascade=cascade(max_calls=2))
    out = router.batch([TRIVIA_Q, "translate the word sun into french"])
    assert all(len(m.response_metadata["scope"]["cascade"]["steps"]) == 2 for m in out)
    forced = router.invoke(TRIVIA_Q, config={"configurable": {"force_model": "mid"}})
    assert "cascade" not in forced.response_metadata["scope"] and forced.response_metadata["scope"]["model"] == "mid"


def test_cascade_must_be_a_cascade() -> None:
    with pytest.raises(ConfigError, match="cascade must be"):
        ScopeRouter(engine=make_engine(), models=models(), cascade="yes")
