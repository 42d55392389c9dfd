"""ScopeEventHandler: outcomes recorded from ScopeLLM calls and ScopeSelector selections, on the root dispatcher."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core.base.llms.types import LLMMetadata
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]

from scope_llamaindex import (
    ReplayLLM,
    ScopeCallEvent,
    ScopeEventHandler,
    ScopeLLM,
    replay_grader,
)
from scope_llamaindex._tickets import SelectionCloser
from scope_shared import ConfigError, ScopeEngine, UnknownModelError
from scope_shared.replay import answer_text
from scope_shared.store import anchor_id
from tests.unit.llamaindex_fixtures import (
    HELD_OUT,
    Q_CAPITAL,
    Q_CODE,
    li_settings,  # noqa: F401 - autouse: every test here runs with it
    make_engine,
    recorded,
    replay_llms,
    router_query_engine,
)

GRADER = replay_grader(HELD_OUT)


def _root_handlers() -> list[Any]:
    """The root dispatcher's event handlers, less the selection closer ScopeSelector registers once."""
    return [h for h in get_dispatcher().event_handlers if not isinstance(h, SelectionCloser)]


@pytest.fixture
def clean_root() -> Iterator[None]:
    before = _root_handlers()
    yield
    after = _root_handlers()
    leaked = [h for h in after if isinstance(h, ScopeEventHandler)]
    for h in leaked:
        h.unregister()
    assert not leaked, "a test left a ScopeEventHandler registered"
    assert len(after) == len(before)


def _stored(engine: ScopeEngine, query: str, model: str) -> tuple[float, float | None] | None:
    got = engine.store.get([anchor_id(query)])
    rec = got.get(anchor_id(query))
    if rec is None or model not in rec.outcomes:
        return None
    out = rec.outcomes[model]
    return out.correct, out.output_tokens


@pytest.mark.usefixtures("clean_root")
def test_scope_llm_outcome_is_graded_and_recorded() -> None:
    engine = make_engine()
    llm = ScopeLLM(engine=engine, llms=replay_llms())
    assert _stored(engine, Q_CODE, "big") is None
    with ScopeEventHandler(engine=engine, grader=GRADER) as handler:
        llm.complete(Q_CODE)
    assert handler.recorded == 1 and handler.pending == 0
    out = recorded(Q_CODE, "big")
    assert _stored(engine, Q_CODE, "big") == (out.correct, out.output_tokens)


@pytest.mark.usefixtures("clean_root")
def test_outcomes_can_go_to_a_separate_store() -> None:
    routing, sink = make_engine(), make_engine()
    before = routing.store.count()
    with ScopeEventHandler(engine=sink, grader=GRADER):
        ScopeLLM(engine=routing, llms=replay_llms()).complete(Q_CODE)
    assert routing.store.count() == before
    assert _stored(sink, Q_CODE, "big") is not None and _stored(routing, Q_CODE, "big") is None


@pytest.mark.usefixtures("clean_root")
def test_feedback_records_later_and_only_once() -> None:
    engine = make_engine()
    llm = ScopeLLM(engine=engine, llms=replay_llms())
    with ScopeEventHandler(engine=engine) as handler:
        response = llm.complete(Q_CAPITAL)
        assert handler.pending == 1 and _stored(engine, Q_CAPITAL, "small") is None
        assert handler.feedback(response, correct=0.0) == 1
        assert handler.feedback(response, correct=1.0) == 0
        assert handler.feedback("no-such-call", correct=1.0) == 0
    assert _stored(engine, Q_CAPITAL, "small") == (0.0, recorded(Q_CAPITAL, "small").output_tokens)
    with pytest.raises(ConfigError, match=r"correct must be a number in \[0, 1\]"):
        handler.feedback(response, correct=1.5)
    with pytest.raises(ConfigError, match="no scope call id"):
        handler.feedback(object(), correct=1.0)


@pytest.mark.usefixtures("clean_root")
def test_grader_that_cannot_tell_or_fails_leaves_the_outcome_pending(caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine()
    llm = ScopeLLM(engine=engine, llms=replay_llms())

    def broken(question: str, answer: str) -> float | None:
        raise ValueError("grader bug")

    with ScopeEventHandler(engine=engine, grader=lambda q, a: None) as handler:
        llm.complete(Q_CODE)
    assert handler.pending == 1 and handler.recorded == 0
    with caplog.at_level(logging.WARNING, logger="scope_shared.feedback"):
        with ScopeEventHandler(engine=engine, grader=broken) as failing:
            response = llm.complete(Q_CODE)
        with ScopeEventHandler(engine=engine, grader=lambda q, a: 7.0) as wild:
            llm.complete(Q_CODE)
    assert response.text.startswith("[big] replayed")
    assert failing.pending == 1 and wild.pending == 1
    assert failing.failures == 1 and wild.failures == 1 and handler.failures == 0  # None: cannot tell, no failure
    assert "grader failed" in caplog.text and "outside [0, 1]" in caplog.text


@pytest.mark.usefixtures("clean_root")
def test_register_is_idempotent_and_unregister_is_clean() -> None:
    engine = make_engine()
    handler = ScopeEventHandler(engine=engine, grader=GRADER)
    before = len(_root_handlers())
    handler.register()
    handler.register()
    assert len(_root_handlers()) == before + 1
    ScopeLLM(engine=engine, llms=replay_llms()).complete(Q_CODE)
    assert handler.recorded == 1
    assert handler.unregister() is True and handler.unregister() is False
    assert len(_root_handlers()) == before
    ScopeLLM(engine=engine, llms=replay_llms()).complete(Q_CAPITAL)
    assert handler.recorded == 1


def test_a_repeated_event_records_once() -> None:
    engine = make_engine()
    handler = ScopeEventHandler(engine=engine, grader=GRADER)
    decision = engine.route(Q_CODE, options={"reserve": False})
    event = ScopeCallEvent(
        call_id="c1",
        query=Q_CODE,
        model="big",
        answer=answer_text(recorded(Q_CODE, "big")),
        input_tokens=3,
        output_tokens=4,
        usage_reported=True,
        cost=0.0,
        decision=decision,
    )
    handler.handle(event)
    handler.handle(event)
    handler.handle(event.model_copy(update={"id_": "another-delivery"}))
    assert handler.recorded == 1


def test_handler_never_raises_into_the_query(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine()
    handler = ScopeEventHandler(engine=engine, grader=GRADER)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("store exploded")

    monkeypatch.setattr(engine, "record", boom)
    event = ScopeCallEvent(
        call_id="c2",
        query=Q_CODE,
        model="big",
        answer=answer_text(recorded(Q_CODE, "big")),
        input_tokens=3,
        output_tokens=4,
        usage_reported=True,
        cost=0.0,
        decision=engine.route(Q_CODE, options={"reserve": False}),
    )
    with caplog.at_level(logging.WARNING, logger="scope_shared.feedback"):
        handler.handle(event)
    assert "could not record the outcome of call c2" in caplog.text and "store exploded" in caplog.text
    assert handler.failures == 1 and handler.recorded == 0
    # a failure of the handler itself is logged too, and the query goes on
    monkeypatch.setattr(handler._book, "finish", boom)
    with caplog.at_level(logging.WARNING, logger="scope_llamaindex.events"):
        handler.handle(event.model_copy(update={"id_": "another-delivery", "call_id": "c3"}))
    assert "the query is unaffected" in caplog.text and handler.failures == 2


def test_constructor_validates() -> None:
    engine = make_engine()
    with pytest.raises(ConfigError, match="ScopeEngine"):
        ScopeEventHandler(engine=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_pending"):
        ScopeEventHandler(engine=engine, max_pending=0)
    with pytest.raises(ConfigError, match="grader"):
        ScopeEventHandler(engine=engine, grader="yes")  # type: ignore[arg-type]
    with pytest.raises(UnknownModelError, match="alias 'gpt-4o' -> 'gpt-9'"):
        ScopeEventHandler(engine=engine, aliases={"gpt-4o": "gpt-9"})


@pytest.mark.usefixtures("clean_root")
def test_concurrent_calls_are_recorded_and_settled_exactly() -> None:
    engine = make_engine(budget=10.0)
    llm = ScopeLLM(engine=engine, llms=replay_llms())
    queries = sorted({o.query for o in HELD_OUT})[:40]
    costs: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(part: list[str]) -> None:
        try:
            for q in part:
                c = llm.complete(q).additional_kwargs["scope"]["cost"]
                with lock:
                    costs.append(c)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with ScopeEventHandler(engine=make_engine(), grader=GRADER) as handler:
        threads = [threading.Thread(target=work, args=(queries[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert handler.recorded == len(queries) == len(costs)
    assert engine.ledger is not None and engine.ledger.held == 0.0
    assert engine.ledger.spent == pytest.approx(sum(costs))


class _ChatReplay(ReplayLLM):
    """A replay that presents itself as a chat model: LlamaIndex then calls chat(), which calls complete()."""

    alias: str | None = None

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.alias or self.model, is_chat_model=True)


@pytest.mark.usefixtures("clean_root")
def test_selector_outcome_counts_a_nested_chat_call_once() -> None:
    engine = make_engine(budget=1.0)
    llms = {name: _ChatReplay(model=name, outcomes=HELD_OUT) for name in ("small", "mid", "big")}
    with ScopeEventHandler(engine=engine, grader=GRADER) as handler:
        response = router_query_engine(engine, llms).query(Q_CODE)
    sel = response.metadata["selector_result"].selections[0]
    out = recorded(Q_CODE, "big")
    assert sel.model == "big" and sel.calls == 1
    assert (sel.input_tokens, sel.output_tokens) == (out.input_tokens, out.output_tokens)
    assert engine.ledger is not None and engine.ledger.spent == pytest.approx(sel.cost) and engine.ledger.held == 0
    assert handler.recorded == 1 and _stored(engine, Q_CODE, "big") == (out.correct, out.output_tokens)


@pytest.mark.usefixtures("clean_root")
async def test_selector_outcome_async() -> None:
    engine = make_engine(budget=1.0)
    with ScopeEventHandler(engine=engine, grader=GRADER) as handler:
        response = await router_query_engine(engine).aquery(Q_CAPITAL)
    sel = response.metadata["selector_result"].selections[0]
    assert sel.model == "small" and sel.output_tokens == recorded(Q_CAPITAL, "small").output_tokens
    assert handler.recorded == 1
    assert engine.ledger is not None and engine.ledger.held == 0.0


@pytest.mark.usefixtures("clean_root")
def test_selector_feedback_by_router_response() -> None:
    engine = make_engine()
    with ScopeEventHandler(engine=engine) as handler:
        response = router_query_engine(engine).query(Q_CODE)
        assert handler.pending == 1
        assert handler.feedback(response, correct=1.0) == 1
    assert _stored(engine, Q_CODE, "big") == (1.0, recorded(Q_CODE, "big").output_tokens)


@pytest.mark.usefixtures("clean_root")
def test_aliases_attribute_llms_that_report_another_name(caplog: pytest.LogCaptureFixture) -> None:
    llms = {name: _ChatReplay(model=name, outcomes=HELD_OUT) for name in ("small", "mid", "big")}
    for name, llm in llms.items():
        llm.alias = f"{name}-2024"
    engine = make_engine(budget=1.0)
    with caplog.at_level(logging.WARNING, logger="scope_llamaindex.events"):
        with ScopeEventHandler(engine=engine, grader=GRADER):
            unmatched = router_query_engine(engine, llms).query(Q_CODE)
    sel = unmatched.metadata["selector_result"].selections[0]
    assert sel.calls == 0 and "no LLM call of 'big' was seen" in caplog.text
    # Not attributed: the reservation is released rather than settled.
    assert engine.ledger is not None and engine.ledger.held == 0.0 and engine.ledger.spent == 0.0

    aliases = {f"{n}-2024": n for n in ("small", "mid", "big")}
    with ScopeEventHandler(engine=engine, grader=GRADER, aliases=aliases):
        matched = router_query_engine(engine, llms).query(Q_CODE)
    sel = matched.metadata["selector_result"].selections[0]
    assert sel.calls == 1 and sel.cost > 0 and engine.ledger.spent == pytest.approx(sel.cost)


@pytest.mark.usefixtures("clean_root")
def test_multi_selection_feedback_per_model() -> None:
    engine = make_engine()
    with ScopeEventHandler(engine=engine) as handler:
        response = router_query_engine(engine, max_outputs=2).query(Q_CODE)
        models = [s.model for s in response.metadata["selector_result"].selections]
        assert handler.pending == 2
        assert handler.feedback(response, correct=1.0, model=models[1]) == 1
        assert handler.pending == 1
    assert _stored(engine, Q_CODE, models[1]) is not None and _stored(engine, Q_CODE, models[0]) is None


@pytest.mark.usefixtures("clean_root")
def test_pending_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine()
    llm = ScopeLLM(engine=engine, llms=replay_llms())
    with caplog.at_level(logging.WARNING, logger="scope_shared.feedback"):
        with ScopeEventHandler(engine=engine, max_pending=2) as handler:
            first = llm.complete(Q_CODE)
            llm.complete(Q_CAPITAL)
            llm.complete(Q_CODE)
    assert handler.pending == 2 and "dropped the outcome" in caplog.text
    assert handler.feedback(first, correct=1.0) == 0
