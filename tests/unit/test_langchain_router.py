"""ScopeRouter: construction, input forms, invoke/ainvoke/batch/abatch/stream/astream, per-call config,
route()/selector(), budget settling. Driven with LangChain's own fake chat models."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField, RouterRunnable, RunnablePassthrough

from scope_langchain import ScopeRoute, ScopeRouter, last_question
from scope_shared import Budget, BudgetExceededError, ConfigError, UnknownModelError
from tests.unit.langchain_fakes import (
    MATH_Q,
    TRIVIA_Q,
    V_MIXED,
    CountingEstimator,
    calls,
    fake,
    fakes,
    make_engine,
    reply,
)


def _router(**kwargs: Any) -> ScopeRouter:
    engine_kwargs = kwargs.pop("engine_kwargs", {})
    return ScopeRouter(engine=make_engine(**engine_kwargs), models=kwargs.pop("models", fakes()), **kwargs)


def _chosen(message: Any) -> str:
    return str(message.response_metadata["scope"]["model"])


# -- construction --------------------------------------------------------------------------------


def test_model_without_card_is_a_clear_error() -> None:
    models = {**fakes(), "gpt-9": fake("gpt-9")}
    with pytest.raises(UnknownModelError, match="gpt-9.*known cards"):
        ScopeRouter(engine=make_engine(), models=models)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"models": {}}, "non-empty mapping"),
        ({"models": {"cheap": "not a model"}}, "not a LangChain Runnable"),
        ({"value_per_correct": -1.0}, "value_per_correct must be"),
        ({"max_cost_per_call": float("nan")}, "max_cost_per_call must be"),
        ({"retries": -1}, "retries must be"),
        ({"retry_wait": -0.1}, "retry_wait must be"),
        ({"fallback_on": (ValueError, "x")}, "fallback_on must be"),
        ({"force_model": "nope"}, "not one of this router's models"),
    ],
)
def test_constructor_validates_early(kwargs: dict[str, Any], match: str) -> None:
    models = kwargs.pop("models", fakes())
    with pytest.raises(ConfigError if "force_model" not in kwargs else UnknownModelError, match=match):
        ScopeRouter(engine=make_engine(), models=models, **kwargs)


def test_engine_must_be_an_engine() -> None:
    with pytest.raises(ConfigError, match="ScopeEngine"):
        ScopeRouter(engine=object(), models=fakes())  # type: ignore[arg-type]


def test_defaults_come_from_the_engine_and_router_may_use_a_subset() -> None:
    engine = make_engine(value_per_correct=V_MIXED, max_cost_per_call=0.01)
    router = ScopeRouter(engine=engine, models={"cheap": fake("cheap"), "mid": fake("mid")})
    assert (router.value_per_correct, router.max_cost_per_call) == (V_MIXED, 0.01)
    # with only cheap and mid as candidates, accuracy-only routing cannot pick strong
    out = router.with_config(configurable={"value_per_correct": None}).invoke(MATH_Q)
    assert _chosen(out) == "mid"
    assert set(out.response_metadata["scope"]["candidates"]) == {"cheap", "mid"}


# -- invoke and its metadata ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "question", "expected"),
    [
        (None, MATH_Q, "strong"),
        (None, TRIVIA_Q, "strong"),
        (V_MIXED, MATH_Q, "mid"),
        (V_MIXED, TRIVIA_Q, "cheap"),
        (0.0, MATH_Q, "cheap"),
    ],
)
def test_invoke_calls_the_chosen_model(value: float | None, question: str, expected: str) -> None:
    models = fakes()
    router = _router(models=models, value_per_correct=value)
    out = router.invoke(question)
    assert out.content == f"{expected} answers"
    assert _chosen(out) == expected
    assert {n: calls(m) for n, m in models.items()} == {n: int(n == expected) for n in models}


def test_metadata_carries_every_candidate_and_is_json_ready() -> None:
    out = _router(value_per_correct=V_MIXED).invoke(MATH_Q)
    scope = out.response_metadata["scope"]
    assert scope["model"] == "mid" and scope["value_per_correct"] == V_MIXED
    assert set(scope["candidates"]) == {"cheap", "mid", "strong"}
    for c in scope["candidates"].values():
        assert 0.0 <= c["p_correct"] <= 1.0 and c["output_tokens"] > 0 and c["cost"] > 0
        assert c["utility"] == pytest.approx(c["p_correct"] * V_MIXED - c["cost"])
    best = max(scope["candidates"], key=lambda n: scope["candidates"][n]["utility"])
    assert best == "mid" and scope["utility"] == scope["candidates"]["mid"]["utility"]
    assert scope["degraded"] is False and "mid" in scope["reason"]
    assert scope["failed"] == []
    # the fake reports 12 input / 30 output tokens: mid costs (12 * 1 + 30 * 2) / 1e6
    assert scope["actual_cost"] == pytest.approx(72e-6)
    uuid_str = scope["run_id"]
    assert len(uuid_str) == 36
    json.dumps(scope, allow_nan=False)


def test_forced_decision_metadata_has_no_nan() -> None:
    out = _router().with_config(configurable={"force_model": "cheap"}).invoke(MATH_Q)
    scope = out.response_metadata["scope"]
    assert scope["model"] == "cheap" and scope["utility"] is None and "forced" in scope["reason"]
    json.dumps(scope, allow_nan=False)


@pytest.mark.parametrize(
    "value",
    [
        MATH_Q,
        [HumanMessage(MATH_Q)],
        [("system", "You are terse."), ("human", MATH_Q)],
        ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")]).invoke({"q": MATH_Q}),
    ],
    ids=["str", "messages", "tuples", "ChatPromptValue"],
)
def test_accepts_what_a_chat_model_accepts(value: Any) -> None:
    out = _router(value_per_correct=V_MIXED).invoke(value)
    assert _chosen(out) == "mid"


def test_lcel_chain_prompt_router_parser() -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{question}")])
    chain = prompt | _router(value_per_correct=V_MIXED) | StrOutputParser()
    assert chain.invoke({"question": TRIVIA_Q}) == "cheap answers"
    assert chain.invoke({"question": MATH_Q}) == "mid answers"


def test_routes_on_the_last_human_message_but_pays_for_the_whole_conversation() -> None:
    convo = [
        SystemMessage("You are a helpful assistant. " * 40),
        HumanMessage(MATH_Q),
        AIMessage("156"),
        HumanMessage(TRIVIA_Q),
    ]
    assert last_question(convo) == TRIVIA_Q
    router = _router(value_per_correct=V_MIXED)
    decision = router.route(convo).decision
    alone = router.route(TRIVIA_Q).decision
    assert decision.query == TRIVIA_Q
    # the long system prompt counts toward expected input tokens, so every candidate costs more
    assert decision.estimates["cheap"].input_tokens > 10 * alone.estimates["cheap"].input_tokens


def test_custom_question_and_token_counter() -> None:
    router = _router(question=lambda msgs: MATH_Q, token_counter=lambda msgs: 1234, value_per_correct=V_MIXED)
    decision = router.route("anything at all").decision
    assert decision.query == MATH_Q and decision.estimates["mid"].input_tokens == 1234


def test_no_text_to_route_on() -> None:
    with pytest.raises(ConfigError, match="no text to route on"):
        _router().invoke([HumanMessage(content=[])])


async def test_ainvoke() -> None:
    out = await _router(value_per_correct=V_MIXED).ainvoke(TRIVIA_Q)
    assert out.content == "cheap answers" and _chosen(out) == "cheap"


# -- batch ---------------------------------------------------------------------------------------


def _counting_router(**kwargs: Any) -> tuple[ScopeRouter, CountingEstimator]:
    est = CountingEstimator(k=5)
    return _router(engine_kwargs={"estimator": est, **kwargs.pop("engine_kwargs", {})}, **kwargs), est


def test_batch_routes_in_one_estimator_call() -> None:
    router, est = _counting_router(value_per_correct=V_MIXED)
    outs = router.batch([MATH_Q, TRIVIA_Q, MATH_Q, TRIVIA_Q])
    assert [_chosen(o) for o in outs] == ["mid", "cheap", "mid", "cheap"]
    assert est.calls == [4]


async def test_abatch_routes_in_one_estimator_call() -> None:
    router, est = _counting_router(value_per_correct=V_MIXED)
    outs = await router.abatch([MATH_Q, TRIVIA_Q, TRIVIA_Q])
    assert [o.content for o in outs] == ["mid answers", "cheap answers", "cheap answers"]
    assert est.calls == [3]


def test_batch_groups_by_per_item_config() -> None:
    router, est = _counting_router()
    configs: list[Any] = [
        {"configurable": {"value_per_correct": 0.0}},
        {"configurable": {"value_per_correct": None}},
        {"configurable": {"value_per_correct": 0.0}},
    ]
    outs = router.batch([MATH_Q, MATH_Q, TRIVIA_Q], configs)
    assert [_chosen(o) for o in outs] == ["cheap", "strong", "cheap"]
    assert sorted(est.calls) == [1, 2]


def test_batch_budget_runs_out_item_by_item() -> None:
    # strong is expected to cost ~$0.0054 on arithmetic: a $0.008 budget pays for one strong call, then
    # the next items fall to cheaper models, which still fit.
    router, _ = _counting_router(engine_kwargs={"budget": Budget(limit=0.008)})
    outs = router.batch([MATH_Q, MATH_Q, MATH_Q])
    assert [_chosen(o) for o in outs] == ["strong", "mid", "mid"]
    ledger = router.engine.ledger
    assert ledger is not None and ledger.held == 0.0
    # settled with the fakes' real usage: 12 in / 30 out tokens
    assert ledger.settled_total == pytest.approx((12 * 10 + 30 * 30 + 2 * (12 * 1 + 30 * 2)) / 1e6)


def test_batch_items_that_do_not_fit_fail_alone() -> None:
    router, _ = _counting_router(engine_kwargs={"budget": Budget(limit=0.0002)})
    outs = router.batch([MATH_Q] * 4, {"configurable": {"value_per_correct": None}}, return_exceptions=True)
    # accuracy-only, reserved in input order: mid (~$0.000098) fits twice; then not even cheap fits
    assert [type(o).__name__ for o in outs] == ["AIMessage", "AIMessage"] + ["BudgetExceededError"] * 2
    assert [_chosen(o) for o in outs[:2]] == ["mid", "mid"]
    fresh, _ = _counting_router(engine_kwargs={"budget": Budget(limit=0.0002)})
    with pytest.raises(BudgetExceededError):
        fresh.batch([MATH_Q] * 4, {"configurable": {"value_per_correct": None}})
    ledger = fresh.engine.ledger
    assert ledger is not None and ledger.held == 0.0 and ledger.settled_total > 0  # the two that ran settled


# -- stream --------------------------------------------------------------------------------------


def test_stream_yields_the_chosen_models_chunks_with_the_decision_first() -> None:
    chunks = list(_router(value_per_correct=V_MIXED).stream(TRIVIA_Q))
    assert "".join(str(c.content) for c in chunks) == "cheap answers"
    assert chunks[0].response_metadata["scope"]["model"] == "cheap"
    assert all("scope" not in c.response_metadata for c in chunks[1:])


async def test_astream() -> None:
    chunks = [c async for c in _router(value_per_correct=V_MIXED).astream(MATH_Q)]
    assert "".join(str(c.content) for c in chunks) == "mid answers"
    assert chunks[0].response_metadata["scope"]["model"] == "mid"


def test_stream_inside_a_chain() -> None:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    chain = prompt | _router(value_per_correct=0.0) | StrOutputParser()
    assert "".join(chain.stream({"question": MATH_Q})) == "cheap answers"


def test_stream_without_usage_settles_the_expected_cost(caplog: pytest.LogCaptureFixture) -> None:
    router = _router(value_per_correct=V_MIXED, engine_kwargs={"budget": Budget(limit=1.0)})
    with caplog.at_level(logging.WARNING, logger="scope_langchain"):
        chunks = list(router.stream(MATH_Q))
    ledger = router.engine.ledger
    assert ledger is not None and ledger.held == 0.0
    expected = chunks[0].response_metadata["scope"]["candidates"]["mid"]["cost"]
    assert ledger.settled_total == pytest.approx(expected)
    assert "no usage_metadata" in caplog.text


# -- per-call configuration ----------------------------------------------------------------------


def test_with_config_configurable_keys() -> None:
    router = _router(value_per_correct=V_MIXED)
    assert _chosen(router.with_config(configurable={"value_per_correct": None}).invoke(TRIVIA_Q)) == "strong"
    assert _chosen(router.with_config(configurable={"force_model": "strong"}).invoke(TRIVIA_Q)) == "strong"
    assert _chosen(router.with_config(configurable={"candidates": ["mid", "strong"]}).invoke(TRIVIA_Q)) == "mid"
    # strong's expected cost (~$0.0027 here) is over the cap, so accuracy-only falls to mid
    capped = router.with_config(configurable={"value_per_correct": None, "max_cost_per_call": 0.001})
    out = capped.invoke(TRIVIA_Q)
    assert (
        _chosen(out) == "mid"
        and "max_cost_per_call" in out.response_metadata["scope"]["candidates"]["strong"]["excluded"]
    )
    # the router itself is unchanged
    assert _chosen(router.invoke(TRIVIA_Q)) == "cheap"


@pytest.mark.parametrize(
    ("configurable", "error"),
    [
        ({"value_per_correct": "high"}, ConfigError),
        ({"max_cost_per_call": -1}, ConfigError),
        ({"force_model": "gpt-9"}, UnknownModelError),
        ({"candidates": "mid"}, ConfigError),
        ({"candidates": ["mid", "gpt-9"]}, UnknownModelError),
    ],
)
def test_bad_configurable_values_are_clear_errors(configurable: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        _router().invoke(MATH_Q, {"configurable": configurable})


def test_configurable_fields_the_langchain_way() -> None:
    router = _router(value_per_correct=V_MIXED).configurable_fields(
        value_per_correct=ConfigurableField(id="quality_value", name="USD per correct answer"),
        force_model=ConfigurableField(id="pin_model"),
    )
    ids = {spec.id for spec in router.config_specs}
    assert {"quality_value", "pin_model"} <= ids
    assert _chosen(router.invoke(MATH_Q)) == "mid"
    assert _chosen(router.with_config(configurable={"quality_value": 0.0}).invoke(MATH_Q)) == "cheap"
    assert _chosen(router.with_config(configurable={"pin_model": "strong"}).invoke(MATH_Q)) == "strong"


# -- route() and selector() ----------------------------------------------------------------------


def test_route_only_decides() -> None:
    models = fakes()
    router = _router(models=models, value_per_correct=V_MIXED, engine_kwargs={"budget": Budget(limit=1.0)})
    route = router.route(MATH_Q)
    assert isinstance(route, ScopeRoute) and route.model == "mid" == route.decision.model
    assert route.decision.reservation_id is None
    assert all(calls(m) == 0 for m in models.values())
    held = router.route(MATH_Q, reserve=True)
    ledger = router.engine.ledger
    assert ledger is not None and held.decision.reservation_id and ledger.held > 0
    router.engine.release(held.decision)
    assert ledger.held == 0


async def test_aroute_and_selector_with_router_runnable() -> None:
    router = _router(value_per_correct=V_MIXED)
    assert (await router.aroute(TRIVIA_Q)).model == "cheap"
    selector = router.selector()
    assert selector.invoke(MATH_Q) == "mid"
    assert await selector.ainvoke(TRIVIA_Q) == "cheap"
    assert selector.invoke(MATH_Q, {"configurable": {"value_per_correct": None}}) == "strong"
    dispatch = {"key": selector, "input": RunnablePassthrough()} | RouterRunnable(runnables=fakes())
    assert dispatch.invoke(MATH_Q).content == "mid answers"


# -- budget --------------------------------------------------------------------------------------


def test_invoke_settles_the_real_cost_and_holds_nothing() -> None:
    models = {"cheap": fake("cheap", reply("cheap", input_tokens=1000, output_tokens=5000)), "mid": fake("mid")}
    engine = make_engine(budget=Budget(limit=1.0))
    router = ScopeRouter(engine=engine, models=models, value_per_correct=0.0)
    out = router.invoke(MATH_Q)
    assert engine.ledger is not None and engine.ledger.held == 0.0
    assert engine.ledger.settled_total == pytest.approx((1000 * 0.1 + 5000 * 0.2) / 1e6)
    assert out.response_metadata["scope"]["actual_cost"] == pytest.approx(engine.ledger.settled_total)


def test_no_candidate_fits_raises_before_any_call() -> None:
    models = fakes()
    router = _router(models=models, engine_kwargs={"budget": Budget(limit=1e-9)})
    with pytest.raises(BudgetExceededError, match="no candidate fits"):
        router.invoke(MATH_Q)
    assert all(calls(m) == 0 for m in models.values())


def test_defaults_are_the_engines_options_read_at_construction() -> None:
    engine = make_engine(value_per_correct=V_MIXED, max_cost_per_call=1.0)
    router = ScopeRouter(engine=engine, models=fakes())
    assert (router.value_per_correct, router.max_cost_per_call) == (V_MIXED, 1.0)
    assert (engine.options.value_per_correct, engine.options.max_cost_per_call) == (V_MIXED, 1.0)
    assert router.route(MATH_Q).model == "mid"
    # a router's own argument wins over the engine's option, here accuracy only
    assert ScopeRouter(engine=engine, models=fakes(), value_per_correct=None).route(MATH_Q).model == "strong"
