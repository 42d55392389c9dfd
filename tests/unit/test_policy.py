from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from scope_shared import Budget, BudgetExceededError, BudgetLedger, ConfigError, Estimate, choose, utility
from scope_shared.budget import Settlement


def est(name: str, p: float, cost: float) -> Estimate:
    return Estimate(model=name, p_correct=p, output_tokens=10, input_tokens=10, cost=cost, estimator="t")


CANDS = {"big": est("big", 0.9, 0.01), "small": est("small", 0.6, 0.001)}


def test_utility_meaning() -> None:
    assert utility(0.9, 0.01, None) == 0.9
    assert utility(0.9, 0.01, 1.0) == pytest.approx(0.89)
    assert utility(0.9, 0.01, 0.0) == pytest.approx(-0.01)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "big"), (1.0, "big"), (0.031, "big"), (0.029, "small"), (0.0, "small")],
)
def test_choice_flips_where_accuracy_gain_pays_for_cost(value: float | None, expected: str) -> None:
    # gain 0.3 in p, extra cost 0.009 -> break-even at value 0.03 USD per correct answer
    assert choose(CANDS, value_per_correct=value).model == expected


def test_limits_exclude_and_explain() -> None:
    c = choose(CANDS, value_per_correct=None, max_cost_per_call=0.005)
    assert c.model == "small" and "max_cost_per_call" in c.excluded["big"]
    c = choose(CANDS, value_per_correct=None, remaining_budget=0.002)
    assert c.model == "small" and "remaining budget" in c.excluded["big"]
    with pytest.raises(BudgetExceededError, match="no candidate fits"):
        choose(CANDS, value_per_correct=None, remaining_budget=0.0001)
    c = choose(CANDS, value_per_correct=None, remaining_budget=0.0001, on_no_fit="cheapest")
    assert c.model == "small" and not c.fits and "fell back to the cheapest" in c.reason


def test_ledger_reserve_settle_release() -> None:
    led = BudgetLedger(Budget(limit=1.0))
    r = led.reserve(0.6)
    assert led.try_reserve(0.5) is None
    assert led.settle(r.id, 0.4)
    assert not led.settle(r.id, 0.4)  # idempotent
    assert led.spent == pytest.approx(0.4) and led.remaining == pytest.approx(0.6)
    r2 = led.reserve(0.6)
    assert led.release(r2.id) and led.remaining == pytest.approx(0.6)
    with pytest.raises(BudgetExceededError, match="would exceed the budget"):
        led.reserve(0.7)
    with pytest.raises(ConfigError):
        led.reserve(float("nan"))


def test_rolling_window_releases() -> None:
    now = [0.0]
    led = BudgetLedger(Budget(limit=1.0, window_seconds=60), clock=lambda: now[0])
    led.settle(led.reserve(0.8).id, 0.8)
    assert led.try_reserve(0.5) is None
    now[0] = 30.0
    led.settle(led.reserve(0.2).id, 0.2)
    now[0] = 60.5  # the first spend left the window, the second did not
    assert led.spent == pytest.approx(0.2)
    assert led.try_reserve(0.8) is not None
    assert led.settled_total == pytest.approx(1.0)


def test_budget_validation() -> None:
    with pytest.raises(ConfigError):
        Budget(limit=-1)
    with pytest.raises(ConfigError):
        Budget(limit=1, window_seconds=0)


def test_concurrent_callers_never_overspend() -> None:
    """32 threads x 50 calls against a budget for about half of them."""
    cost = 0.001
    led = BudgetLedger(Budget(limit=32 * 50 * cost / 2))
    settled: list[float] = []
    lock = threading.Lock()
    peak = [0.0]
    start = threading.Barrier(32)

    def worker(i: int) -> None:
        start.wait()
        for j in range(50):
            res = led.try_reserve(cost)
            with lock:
                peak[0] = max(peak[0], led.spent + led.held)
            if res is None:
                continue
            real = cost * (0.5 + ((i * 50 + j) % 5) / 10)  # real cost at or below the reservation
            led.settle(res.id, real)
            with lock:
                settled.append(real)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= led.budget.limit + 1e-9
    assert led.spent <= led.budget.limit + 1e-9
    assert sum(settled) == pytest.approx(led.spent)
    assert led.held == 0
    assert 800 <= len(settled) <= 1600  # at least the half the budget was sized for


def test_persisted_ledger_survives_restart_and_is_shared(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = [1000.0]
    path = tmp_path / "ledger.sqlite"
    day = Budget(limit=1.0, window_seconds=86_400)
    first = BudgetLedger(day, path=path, clock=lambda: now[0])
    first.settle(first.reserve(0.7).id, 0.7)
    other = BudgetLedger(day, path=path, clock=lambda: now[0])  # another process, or after a restart
    assert other.spent == pytest.approx(0.7)
    assert other.try_reserve(0.5) is None
    other.settle(other.reserve(0.2).id, 0.2)
    assert first.spent == pytest.approx(0.9)  # sees the other's settled spend
    first.close()
    now[0] += 86_401
    restarted = BudgetLedger(day, path=path, clock=lambda: now[0])
    assert restarted.spent == 0.0 and restarted.try_reserve(1.0) is not None
    lifetime = BudgetLedger(Budget(limit=1.0), path=path, clock=lambda: now[0])
    assert lifetime.spent == pytest.approx(0.9)


def test_overrun_is_counted_not_hidden() -> None:
    led = BudgetLedger(Budget(limit=1.0))
    led.settle(led.reserve(0.1).id, 0.15)
    assert led.spent == pytest.approx(0.15) and led.overrun_total == pytest.approx(0.05)


def test_reservation_ttl_releases_unsettled_and_late_settle_counts(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    led = BudgetLedger(Budget(limit=1.0), clock=lambda: now[0], reservation_ttl=60)
    lost = led.reserve(0.8, model="big")
    now[0] = 59.9
    assert led.try_reserve(0.5) is None and led.held == pytest.approx(0.8)
    now[0] = 60.0
    with caplog.at_level(logging.WARNING, logger="scope_shared.budget"):
        assert led.held == 0.0
    assert any("big" in r.getMessage() and "0.8" in r.getMessage() for r in caplog.records), caplog.text
    assert led.remaining == pytest.approx(1.0)
    late = led.settle(lost.id, 0.7)  # the call did run: its cost is counted, and the caller can tell it was late
    assert late and late is Settlement.LATE
    assert led.spent == pytest.approx(0.7) and led.settled_total == pytest.approx(0.7)
    assert led.settle(lost.id, 0.7) is Settlement.NOT_FOUND and led.spent == pytest.approx(0.7)
    r = led.reserve(0.2)
    assert led.settle(r.id, 0.2) is Settlement.SETTLED


def test_reservation_ttl_default_and_forever() -> None:
    assert BudgetLedger(Budget(limit=1.0)).reservation_ttl == 900.0
    now = [0.0]
    led = BudgetLedger(Budget(limit=1.0), clock=lambda: now[0], reservation_ttl=None)
    r = led.reserve(0.8)
    now[0] = 1e9
    assert led.held == pytest.approx(0.8) and led.settle(r.id, 0.8) is Settlement.SETTLED
    with pytest.raises(ConfigError, match="reservation_ttl"):
        BudgetLedger(Budget(limit=1.0), reservation_ttl=0)


@pytest.mark.parametrize("persisted", [False, True])
def test_window_survives_clock_jumping_forward_then_back(tmp_path: Path, persisted: bool) -> None:
    now = [1000.0]
    path = tmp_path / "ledger.sqlite" if persisted else None
    led = BudgetLedger(Budget(limit=1.0, window_seconds=60), path=path, clock=lambda: now[0])
    led.settle(led.reserve(0.8).id, 0.8)
    now[0] = 5000.0  # the wall clock jumps forward: by this clock the spend left the window
    assert led.spent == 0.0
    now[0] = 1010.0  # and is set back: the spend is 10 s old again and counts
    assert led.spent == pytest.approx(0.8)
    assert led.try_reserve(0.5) is None
    now[0] = 1060.5
    assert led.spent == 0.0 and led.try_reserve(0.9) is not None


def test_large_overrun_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    led = BudgetLedger(Budget(limit=10.0))
    with caplog.at_level(logging.DEBUG, logger="scope_shared.budget"):
        led.settle(led.reserve(0.01, model="small").id, 0.015)  # 1.5x: expected noise
        led.settle(led.reserve(0.001, model="tiny").id, 0.005)  # 5x but half a cent over
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        led.settle(led.reserve(0.01, model="big").id, 0.05)  # 5x and 4 cents over
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "big" in warned[0].getMessage()
    assert led.overrun_total == pytest.approx(0.005 + 0.004 + 0.04)
