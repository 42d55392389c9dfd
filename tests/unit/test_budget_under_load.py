"""200 concurrent async callers through ScopeRouter against a budget for about half of them."""

from __future__ import annotations

import asyncio

import pytest

from scope_langchain import ScopeRouter
from scope_shared import Budget, BudgetExceededError
from tests.unit.langchain_fakes import CARDS, MATH_Q, calls, fake, make_engine, reply


async def test_200_concurrent_callers_never_overspend() -> None:
    probe = make_engine().route(MATH_Q, options={"reserve": False})
    strong = probe.estimates["strong"].cost
    real = CARDS[2].cost(12, 120)  # what a strong answer below really costs
    assert real < strong
    limit = 100 * strong
    engine = make_engine(budget=Budget(limit=limit))
    models = {c.name: fake(c.name, reply(c.name, input_tokens=12, output_tokens=120)) for c in CARDS}
    router = ScopeRouter(engine=engine, models=models)
    peak = 0.0
    done = False

    async def watch() -> None:
        nonlocal peak
        assert engine.ledger is not None
        while not done:
            peak = max(peak, engine.ledger.spent + engine.ledger.held)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(router.ainvoke(MATH_Q) for _ in range(200)), return_exceptions=True)
    done = True
    await watcher
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, BudgetExceededError) for r in refused), refused[:1]
    assert engine.ledger is not None
    spent = engine.ledger.spent
    assert peak <= limit + 1e-12 and spent <= limit + 1e-12
    assert engine.ledger.held == pytest.approx(0.0, abs=1e-15)
    assert sum(r.response_metadata["scope"]["actual_cost"] for r in answered) == pytest.approx(spent)
    assert sum(calls(m) for m in models.values()) == len(answered)  # a refused caller called no model
    assert 100 <= len(answered) < 200 and refused
    by_model = {m: sum(1 for r in answered if r.response_metadata["scope"]["model"] == m) for m in models}
    assert by_model["strong"] >= 100  # strong first, cheaper models once it no longer fits
