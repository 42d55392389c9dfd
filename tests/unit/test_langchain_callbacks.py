"""ScopeOutcomeHandler: records real outcomes through engine.record, settles the budget, takes feedback;
idempotent per run, thread- and async-safe, and never breaks the chain."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.prompts import ChatPromptTemplate

from scope_langchain import ReplayChatModel, ScopeChatModel, ScopeOutcomeHandler, ScopeRouter
from scope_shared import Budget, ConfigError, Outcome, ScopeEngine
from scope_shared.store import anchor_id
from tests.unit.langchain_fakes import MATH_Q, TRIVIA_Q, V_MIXED, fake, fakes, make_engine

NEW_QUESTIONS = [f"what is {i} times {i + 2} in arithmetic" for i in range(30, 50)]


def _setup(**handler_kwargs: Any) -> tuple[ScopeEngine, ScopeRouter, ScopeOutcomeHandler]:
    engine = make_engine(budget=Budget(limit=1.0))
    handler = ScopeOutcomeHandler(engine=engine, **handler_kwargs)
    router = ScopeRouter(engine=engine, models=fakes(), value_per_correct=V_MIXED)
    return engine, router, handler


def _recorded(engine: ScopeEngine, question: str) -> dict[str, Any]:
    found = engine.store.get([anchor_id(question)])
    return dict(found[anchor_id(question)].outcomes) if found else {}


def test_grader_records_the_real_outcome_and_settles_the_budget() -> None:
    graded: list[tuple[str, str]] = []

    def grader(question: str, answer: str) -> float:
        graded.append((question, answer))
        return 1.0

    engine, router, handler = _setup(grader=grader)
    assert _recorded(engine, MATH_Q) == {}
    out = router.with_config(callbacks=[handler]).invoke(MATH_Q)
    assert graded == [(MATH_Q, "mid answers")]
    rec = _recorded(engine, MATH_Q)
    assert set(rec) == {"mid"} and rec["mid"].correct == 1.0 and rec["mid"].output_tokens == 30
    assert handler.recorded == 1 and handler.pending == 0 and handler.failures == 0
    assert engine.ledger is not None and engine.ledger.held == 0.0
    # settled once, with the real usage (12 in / 30 out on mid), not twice
    assert engine.ledger.settled_total == pytest.approx(out.response_metadata["scope"]["actual_cost"])
    assert engine.ledger.settled_total == pytest.approx((12 * 1.0 + 30 * 2.0) / 1e6)


def test_the_next_similar_question_learns_from_the_recorded_outcome() -> None:
    engine, router, handler = _setup(grader=lambda q, a: 0.0)
    before = router.route(MATH_Q).decision.estimates["mid"].p_correct
    router.invoke(MATH_Q, {"callbacks": [handler]})
    after = router.route(MATH_Q).decision.estimates["mid"].p_correct
    assert after < before  # mid was graded wrong on this very question


def test_feedback_later_by_message_by_run_id_and_by_parent_run() -> None:
    engine, router, handler = _setup()
    a = router.invoke(MATH_Q, {"callbacks": [handler]})
    b = router.invoke(TRIVIA_Q, {"callbacks": [handler]})
    assert handler.pending == 2 and _recorded(engine, MATH_Q) == {}
    assert handler.record_feedback(a, 0.0) == 1
    assert _recorded(engine, MATH_Q)["mid"].correct == 0.0
    assert handler.record_feedback(a, 1.0) == 0  # idempotent: already recorded
    assert _recorded(engine, MATH_Q)["mid"].correct == 0.0
    assert handler.record_feedback(str(b.id), 1.0) == 1  # the message id embeds the run id
    assert _recorded(engine, TRIVIA_Q)["cheap"].correct == 1.0

    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | router
    top = uuid.uuid4()
    question = NEW_QUESTIONS[0]
    chain.invoke({"q": question}, {"callbacks": [handler], "run_id": top})
    assert handler.record_feedback(top, 0.5) == 1
    assert next(iter(_recorded(engine, question).values())).correct == 0.5
    assert handler.pending == 0


def test_feedback_argument_errors() -> None:
    _, router, handler = _setup()
    out = router.invoke(MATH_Q, {"callbacks": [handler]})
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        handler.record_feedback(out, 1.5)
    with pytest.raises(ConfigError, match="not a run id"):
        handler.record_feedback("yesterday's call", 1.0)
    assert handler.record_feedback(uuid.uuid4(), 1.0) == 0  # unknown run: logged, nothing recorded
    assert handler.pending == 1


def test_on_llm_end_is_idempotent_per_run_id() -> None:
    engine, _, handler = _setup(grader=lambda q, a: 1.0)
    writes: list[Outcome] = []
    engine.record = lambda outcome, decision=None: writes.append(outcome)  # type: ignore[method-assign]
    run = uuid.uuid4()
    result = LLMResult(generations=[[ChatGeneration(message=AIMessage("ok"))]])
    handler.on_chat_model_start({}, [[HumanMessage(MATH_Q)]], run_id=run, metadata={"scope_model": "mid"})
    handler.on_llm_end(result, run_id=run)
    handler.on_chat_model_start({}, [[HumanMessage(MATH_Q)]], run_id=run, metadata={"scope_model": "mid"})
    handler.on_llm_end(result, run_id=run)
    handler.on_llm_end(result, run_id=run)
    assert [(w.model, w.query) for w in writes] == [("mid", MATH_Q)]


def test_a_failing_store_never_breaks_the_chain(caplog: pytest.LogCaptureFixture) -> None:
    engine, router, handler = _setup(grader=lambda q, a: 1.0)

    def broken(outcome: Outcome, decision: Any = None) -> None:
        raise RuntimeError("disk full")

    engine.record = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="scope_shared.feedback"):
        out = router.invoke(MATH_Q, {"callbacks": [handler]})
    assert out.content == "mid answers"
    assert handler.failures == 1 and handler.recorded == 0
    assert "could not record the outcome" in caplog.text and "disk full" in caplog.text


def test_a_failing_grader_leaves_the_call_waiting_for_feedback(caplog: pytest.LogCaptureFixture) -> None:
    def grader(question: str, answer: str) -> float:
        raise ValueError("grader crashed")

    engine, router, handler = _setup(grader=grader)
    with caplog.at_level(logging.WARNING, logger="scope_shared.feedback"):
        out = router.invoke(MATH_Q, {"callbacks": [handler]})
    assert "grader failed" in caplog.text and handler.pending == 1
    assert handler.record_feedback(out, 1.0) == 1 and _recorded(engine, MATH_Q)["mid"].correct == 1.0


def test_out_of_range_grade_is_not_recorded() -> None:
    engine, router, handler = _setup(grader=lambda q, a: 2.0)
    router.invoke(MATH_Q, {"callbacks": [handler]})
    assert _recorded(engine, MATH_Q) == {} and handler.failures == 1 and handler.pending == 1


def test_thread_safe_under_a_concurrent_batch() -> None:
    lock = threading.Lock()
    seen: list[str] = []

    def grader(question: str, answer: str) -> float:
        with lock:
            seen.append(question)
        return 1.0

    engine, router, handler = _setup(grader=grader)
    outs = router.batch(NEW_QUESTIONS, {"callbacks": [handler], "max_concurrency": 8})
    assert len(outs) == len(NEW_QUESTIONS)
    assert handler.recorded == len(NEW_QUESTIONS) and sorted(seen) == sorted(NEW_QUESTIONS)
    assert all(_recorded(engine, q) for q in NEW_QUESTIONS)
    assert engine.ledger is not None and engine.ledger.held == 0.0


async def test_async_chain_records() -> None:
    engine, router, handler = _setup(grader=lambda q, a: 1.0)
    await router.abatch(NEW_QUESTIONS[:5], {"callbacks": [handler]})
    await router.ainvoke(MATH_Q, {"callbacks": [handler]})
    assert handler.recorded == 6 and _recorded(engine, MATH_Q)
    _, router2, handler2 = _setup()
    out = await router2.ainvoke(TRIVIA_Q, {"callbacks": [handler2]})
    assert await handler2.arecord_feedback(out, 1.0) == 1


def test_stream_usage_is_recorded() -> None:
    engine = make_engine(budget=Budget(limit=1.0))
    rows = [
        Outcome(query=MATH_Q, model=m, correct=1.0, output_tokens=40 + i, input_tokens=9)
        for i, m in enumerate(["cheap", "mid", "strong"])
    ]
    models = ReplayChatModel.from_outcomes(rows)
    handler = ScopeOutcomeHandler(engine=engine, grader=lambda q, a: 1.0)
    router = ScopeRouter(engine=engine, models=models, value_per_correct=V_MIXED)
    text = "".join(str(c.content) for c in router.stream(MATH_Q, {"callbacks": [handler]}))
    assert "[mid] replayed answer" in text
    assert _recorded(engine, MATH_Q)["mid"].output_tokens == 41
    assert engine.ledger is not None and engine.ledger.held == 0.0
    assert engine.ledger.settled_total == pytest.approx((9 * 1.0 + 41 * 2.0) / 1e6)


def test_direct_calls_of_a_known_model_are_recorded_and_others_ignored() -> None:
    engine = make_engine()
    handler = ScopeOutcomeHandler(engine=engine, grader=lambda q, a: 1.0)
    replay = ReplayChatModel(
        model="strong", outcomes=[Outcome(query=TRIVIA_Q, model="strong", correct=1.0, output_tokens=5)]
    )
    replay.invoke(TRIVIA_Q, {"callbacks": [handler]})
    assert _recorded(engine, TRIVIA_Q)["strong"].output_tokens == 5
    fake("gpt-9").invoke(MATH_Q, {"callbacks": [handler]})  # not one of the engine's models
    assert handler.recorded == 1 and handler.pending == 0


def test_scope_chat_model_is_recorded_once() -> None:
    engine = make_engine()
    handler = ScopeOutcomeHandler(engine=engine, grader=lambda q, a: 1.0)
    chat = ScopeChatModel(engine=engine, models=fakes(), value_per_correct=V_MIXED)
    chat.invoke(MATH_Q, {"callbacks": [handler]})
    assert handler.recorded == 1 and set(_recorded(engine, MATH_Q)) == {"mid"}


def test_max_pending_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    _, router, handler = _setup(max_pending=2)
    with caplog.at_level(logging.WARNING, logger="scope_shared.feedback"):
        first = router.invoke(NEW_QUESTIONS[0], {"callbacks": [handler]})
        router.invoke(NEW_QUESTIONS[1], {"callbacks": [handler]})
        router.invoke(NEW_QUESTIONS[2], {"callbacks": [handler]})
    assert handler.pending == 2 and "dropped" in caplog.text
    assert handler.record_feedback(first, 1.0) == 0


def test_handler_validates() -> None:
    with pytest.raises(ConfigError, match="ScopeEngine"):
        ScopeOutcomeHandler(engine="engine")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_pending"):
        ScopeOutcomeHandler(engine=make_engine(), max_pending=0)


def test_a_grader_that_cannot_tell_leaves_the_call_waiting_and_bools_are_grades() -> None:
    engine, router, handler = _setup(grader=lambda q, a: None)
    out = router.invoke(MATH_Q, {"callbacks": [handler]})
    assert handler.pending == 1 and handler.failures == 0 and _recorded(engine, MATH_Q) == {}
    assert handler.record_feedback(out, True) == 1 and _recorded(engine, MATH_Q)["mid"].correct == 1.0
    engine, router, handler = _setup(grader=lambda q, a: a != "cheap answers")
    router.invoke(TRIVIA_Q, {"callbacks": [handler]})
    assert _recorded(engine, TRIVIA_Q)["cheap"].correct == 0.0 and handler.recorded == 1


def test_a_chat_model_call_naming_a_card_is_recorded_once() -> None:
    """``ls_model_name`` of a ScopeChatModel run is a card when a model is forced: the handler records the
    chosen model's run below it, not that run as well."""
    engine = make_engine()
    handler = ScopeOutcomeHandler(engine=engine, grader=lambda q, a: 1.0)
    chat = ScopeChatModel(engine=engine, models=fakes(), force_model="mid")
    chat.invoke(MATH_Q, {"callbacks": [handler]})
    list(chat.stream(TRIVIA_Q, {"callbacks": [handler]}, model="mid"))
    assert (handler.recorded, handler.pending) == (2, 0)
    assert set(_recorded(engine, MATH_Q)) == {"mid"} and set(_recorded(engine, TRIVIA_Q)) == {"mid"}
