"""CascadeDriver: the loop both adapters use, sync and async alike: failed calls go on, anything else cancels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from scope_shared.cascade import Cascade, CascadeDriver, CascadeStep, Reply
from scope_shared.cascade.plan import CascadePlan
from tests.unit.cascade_fixtures import TOKENS, calibration, decision, engine

P = {"tiny": 0.7, "mid": 0.75, "strong": 0.95}


class Abort(BaseException):
    """Not an Exception: the caller stops (KeyboardInterrupt, a cancelled task)."""


def plan(budget: float = 1.0) -> tuple[Any, CascadePlan]:
    eng = engine(budget=budget)
    cascade = Cascade(calibration=calibration(), grader="choice", max_calls=3)
    return eng, cascade.plan(eng, decision(P, value=1.0))


def driver(p: CascadePlan, started: list[str]) -> CascadeDriver[str, str, str]:
    def start(step: CascadeStep) -> str:
        started.append(step.model)
        return step.model

    return CascadeDriver(
        p,
        start=start,
        finish=lambda model, text: f"{model}: {text}",
        read=lambda kept: Reply(text=kept.split(": ", 1)[1], input_tokens=TOKENS[0], output_tokens=TOKENS[1]),
    )


def answers(**by_model: str | BaseException) -> Callable[[str], str]:
    def ask(model: str) -> str:
        got = by_model.get(model, "(B)")
        if isinstance(got, BaseException):
            raise got
        return got

    return ask


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_failed_call_is_reported_and_the_plan_goes_on(asynchronous: bool) -> None:
    eng, p = plan()
    started: list[str] = []
    d = driver(p, started)
    ask = answers(tiny=ValueError("tiny is down"))

    async def aask(model: str) -> str:
        return ask(model)

    result, kept = await d.arun(aask) if asynchronous else d.run(ask)
    assert started[0] == "tiny" and [m for m, _ in d.errors] == ["tiny"] and "tiny is down" in str(d.errors[0][1])
    assert result.model != "tiny" and kept == f"{result.model}: (B)" and set(d.replies) == set(started) - {"tiny"}
    assert [s.error for s in result.steps][0] == "ValueError: tiny is down"
    assert eng.ledger is not None and eng.ledger.held == pytest.approx(0.0)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_anything_else_cancels_the_plan_and_releases_its_reservation(asynchronous: bool) -> None:
    eng, p = plan()
    d = driver(p, [])
    ask = answers(tiny=Abort())

    async def aask(model: str) -> str:
        return ask(model)

    assert eng.ledger is not None and eng.ledger.held > 0.0  # the first step's reservation
    with pytest.raises(Abort):
        await d.arun(aask) if asynchronous else d.run(ask)
    assert eng.ledger.held == pytest.approx(0.0) and p.pending is None
    assert p.result is not None and p.result.stop_reason == "cancelled by the caller"


def test_when_every_call_fails_the_first_error_is_raised() -> None:
    eng, p = plan()
    d = driver(p, [])
    with pytest.raises(ValueError, match="tiny is down"):
        d.run(answers(tiny=ValueError("tiny is down"), mid=KeyError("mid"), strong=RuntimeError("strong")))
    assert [m for m, _ in d.errors][0] == "tiny" and eng.ledger is not None and eng.ledger.held == pytest.approx(0.0)
