"""The cascade plan a caller drives: stopping rule, escalation, budget, failures."""

from __future__ import annotations

import threading

import pytest

from scope_shared.cascade import Cascade, CascadeResult, CascadeStep
from scope_shared.errors import BudgetExceededError, ConfigError
from tests.unit.cascade_fixtures import COST, TOKENS, calibration, decision, engine

P = {"tiny": 0.7, "mid": 0.75, "strong": 0.95}


def drive(plan, answers):  # type: ignore[no-untyped-def]
    step = plan.first
    called = []
    while isinstance(step, CascadeStep):
        called.append(step.model)
        step = plan.observe(step.model, answers[step.model], input_tokens=TOKENS[0], output_tokens=TOKENS[1])
    return called, step


def test_a_low_value_stops_after_the_first_answer() -> None:
    cascade = Cascade(calibration=calibration(), grader="choice")
    plan = cascade.plan(engine(), decision(P, value=COST["tiny"] * 2))
    called, result = drive(plan, {"tiny": "(B)", "mid": "(B)", "strong": "(B)"})
    assert called == ["tiny"]
    assert isinstance(result, CascadeResult)
    assert result.model == "tiny" and result.answer == "B"
    assert "stopping is worth" in result.stop_reason
    assert result.cost == pytest.approx(COST["tiny"])


def test_agreement_stops_and_disagreement_escalates() -> None:
    cascade = Cascade(calibration=calibration(collision=0.3), grader="choice")
    value = 0.01  # the strong call costs $0.002: worth it only when the cheap answers disagree
    called, agreed = drive(
        cascade.plan(engine(), decision(P, value=value)), {"tiny": "(B)", "mid": "(B)", "strong": "(B)"}
    )
    assert called == ["tiny", "mid"]
    assert agreed.answer == "B" and agreed.p_correct > 0.9
    called, split = drive(
        cascade.plan(engine(), decision(P, value=value)), {"tiny": "(B)", "mid": "(C)", "strong": "(C)"}
    )
    assert called == ["tiny", "mid", "strong"]
    assert split.model == "strong" and split.answer == "C"
    assert [s.model for s in split.steps] == called
    assert split.steps[1].p_answer < 0.6  # the disagreement left the mid answer in doubt
    assert split.cost == pytest.approx(COST["tiny"] + COST["mid"] + COST["strong"])


def test_an_unreadable_answer_carries_no_agreement_weight() -> None:
    cascade = Cascade(calibration=calibration(), grader="choice")
    plan = cascade.plan(engine(), decision(P, value=0.01))
    step = plan.observe("tiny", "I am not sure about this one.", input_tokens=100, output_tokens=100)
    assert isinstance(step, CascadeStep)
    record = plan.steps[0]
    assert not record.usable and record.answer is None and record.p_answer == 0.0 and record.p_best == 0.0
    assert any("grader can read" in s.note for s in record.signals)


def test_max_calls_and_accuracy_only() -> None:
    cascade = Cascade(calibration=calibration(), grader="choice", max_calls=2)
    called, result = drive(
        cascade.plan(engine(), decision(P, value=None)), {"tiny": "(A)", "mid": "(B)", "strong": "(B)"}
    )
    assert len(called) == 2
    assert "max_calls (2)" in result.stop_reason


def test_observe_checks_the_pending_model() -> None:
    plan = Cascade(calibration=calibration(), grader="choice").plan(engine(), decision(P, value=0.01))
    with pytest.raises(ConfigError, match="pending call is to"):
        plan.observe("strong" if plan.first.model != "strong" else "tiny", "(B)")


def test_a_failed_call_is_released_and_replaced() -> None:
    eng = engine(budget=1.0)
    plan = Cascade(calibration=calibration(), grader="choice").plan(eng, decision(P, value=0.01))
    assert eng.ledger is not None and eng.ledger.held > 0
    first = plan.first.model
    nxt = plan.fail(first, TimeoutError("slow"))
    assert plan.steps[0].error == "TimeoutError: slow"
    assert isinstance(nxt, CascadeStep) and nxt.model != first
    assert first in nxt.excluded and "failed" in nxt.excluded[first]
    plan.cancel()
    assert eng.ledger.held == pytest.approx(0.0)
    assert isinstance(plan.result, CascadeResult) and plan.result.stop_reason == "cancelled by the caller"


def test_a_step_that_does_not_fit_is_not_taken_and_says_so() -> None:
    # room for the two cheap calls and not for the strong one
    eng = engine(budget=COST["tiny"] + COST["mid"] + COST["strong"] / 2)
    cascade = Cascade(calibration=calibration(), grader="choice")
    called, result = drive(cascade.plan(eng, decision(P, value=1.0)), {"tiny": "(A)", "mid": "(B)", "strong": "(B)"})
    assert "strong" not in called
    assert "strong" in result.stop_reason and "does not fit the remaining budget" in result.stop_reason
    assert eng.ledger is not None and eng.ledger.spent <= eng.ledger.budget.limit + 1e-12


def test_nothing_fits_raises() -> None:
    with pytest.raises(BudgetExceededError, match="no model can be called"):
        Cascade(calibration=calibration(), grader="choice").plan(
            engine(budget=COST["tiny"] / 2), decision(P, value=0.01)
        )


def test_plan_refuses_a_reserved_decision_and_unknown_kinds() -> None:
    eng = engine(budget=1.0)
    reserved = eng.reserve_next(decision(P, value=0.01), "tiny")
    assert reserved is not None
    with pytest.raises(ConfigError, match="reserve=False"):
        Cascade(calibration=calibration(), grader="choice").plan(eng, reserved)
    with pytest.raises(ConfigError, match="calibrated"):
        Cascade(calibration=calibration(), grader="exact")


def test_start_routes_and_reserves_the_first_step() -> None:
    eng = engine(budget=1.0)
    plan = Cascade(calibration=calibration(), grader="choice").start(eng, "question number 2 about planets")
    assert eng.ledger is not None and eng.ledger.held == pytest.approx(plan.first.expected_cost)
    assert plan.first.decision.reservation_id is not None


async def test_astart_serves_async_code() -> None:
    eng = engine()
    plan = await Cascade(calibration=calibration(), grader="choice").astart(eng, "question number 3 about planets")
    step = plan.observe(plan.first.model, "(B)", input_tokens=100, output_tokens=100)
    assert isinstance(step, CascadeStep | CascadeResult)


def test_concurrent_cascades_never_exceed_the_budget() -> None:
    """32 threads x 50 cascades with fake instant models against a budget for a fraction of them."""
    limit = 40 * (COST["tiny"] + COST["mid"] + COST["strong"])
    eng = engine(budget=limit)
    cascade = Cascade(calibration=calibration(), grader="choice")
    assert eng.ledger is not None
    ledger = eng.ledger
    peak = 0.0
    lock = threading.Lock()
    outcomes = {"done": 0, "refused": 0, "blocked": 0}
    paid = [0.0]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        nonlocal peak
        try:
            for i in range(50):
                answers = {"tiny": "(A)", "mid": "(B)" if (seed + i) % 2 else "(A)", "strong": "(B)"}
                try:
                    plan = cascade.plan(eng, decision(P, value=1.0))
                except BudgetExceededError:
                    with lock:
                        outcomes["refused"] += 1
                    continue
                step: CascadeStep | CascadeResult = plan.first
                while isinstance(step, CascadeStep):
                    with lock:
                        peak = max(peak, ledger.spent + ledger.held)
                        paid[0] += COST[step.model]
                    step = plan.observe(
                        step.model, answers[step.model], input_tokens=TOKENS[0], output_tokens=TOKENS[1]
                    )
                with lock:
                    outcomes["done"] += 1
                    outcomes["blocked"] += "does not fit" in step.stop_reason
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert outcomes["done"] + outcomes["refused"] == 32 * 50
    assert outcomes["refused"] > 0 and outcomes["blocked"] > 0  # the budget did bind
    assert peak <= limit + 1e-12
    assert ledger.spent <= limit + 1e-12
    assert ledger.held == pytest.approx(0.0)
    assert ledger.spent == pytest.approx(paid[0])  # every call settled at its real cost, nothing else
