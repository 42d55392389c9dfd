"""A ledger file shared by several ledger objects and processes: one budget, whoever reserves or settles."""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from scope_shared import Budget, BudgetLedger, ConfigError
from scope_shared.budget import Settlement

COST = 0.01
LIMIT = 0.6  # 60 calls at the reserved cost, shared by 32 threads in 4 processes


def _calls(path: str, start: Any, results: Any) -> None:
    """One process: 8 threads loop reserve -> simulated call -> settle until the budget is used up."""
    ledger = BudgetLedger(Budget(limit=LIMIT), path=path)
    settled: list[float] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            res = ledger.try_reserve(COST, model="m")
            if res is None:
                if ledger.held == 0.0 and ledger.remaining < COST:
                    return
                time.sleep(0.002)
                continue
            time.sleep(rng.uniform(0.005, 0.03))
            real = COST * rng.uniform(0.9, 1.0)
            assert ledger.settle(res.id, real) is Settlement.SETTLED
            with lock:
                settled.append(real)

    start.wait()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    results.put(settled)


def test_four_processes_share_one_budget(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    BudgetLedger(Budget(limit=LIMIT), path=path).close()  # the schema exists before the children race
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [ctx.Process(target=_calls, args=(path, start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    settled = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    total = sum(sum(s) for s in settled)
    assert total <= LIMIT + 1e-9, f"settled ${total:.4f} against a ${LIMIT} limit"
    assert total > LIMIT - COST  # used up: not even one more call fits
    assert all(settled), [len(s) for s in settled]  # every process got a share
    check = BudgetLedger(Budget(limit=LIMIT), path=path)
    assert check.spent == pytest.approx(total) and check.held == 0.0


def _hold_and_wait(path: str, ready: Any) -> None:
    ledger = BudgetLedger(Budget(limit=1.0), path=path, reservation_ttl=60)
    ledger.reserve(0.8, model="doomed")
    ready.set()
    time.sleep(60)


def test_reservation_of_a_killed_process_expires(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_and_wait, args=(path, ready))
    child.start()
    assert ready.wait(timeout=30)
    child.kill()  # SIGKILL: it never settles nor releases
    child.join(timeout=10)
    offset = [0.0]
    ledger = BudgetLedger(Budget(limit=1.0), path=path, clock=lambda: time.time() + offset[0])
    assert ledger.held == pytest.approx(0.8)
    assert ledger.try_reserve(0.5) is None  # the dead process's hold still counts within its TTL
    offset[0] = 61.0
    assert ledger.try_reserve(0.5) is not None
    assert ledger.held == pytest.approx(0.5)


def test_any_ledger_over_the_file_settles_or_releases(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    budget = Budget(limit=1.0)
    first = BudgetLedger(budget, path=path)
    second = BudgetLedger(budget, path=path)
    r = first.reserve(0.6, model="big")
    assert second.held == pytest.approx(0.6) and second.try_reserve(0.5) is None
    assert second.settle(r.id, 0.5) is Settlement.SETTLED
    assert first.held == 0.0 and first.spent == pytest.approx(0.5) and second.spent == pytest.approx(0.5)
    assert first.settle(r.id, 0.5) is Settlement.NOT_FOUND and first.spent == pytest.approx(0.5)
    r2 = second.reserve(0.4)
    assert first.reservation(r2.id) == r2
    assert first.release(r2.id) and not second.release(r2.id)
    assert second.remaining == pytest.approx(0.5)


def test_late_settle_on_another_ledger_counts(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "ledger.sqlite"
    first = BudgetLedger(Budget(limit=1.0), path=path, clock=lambda: now[0], reservation_ttl=10)
    second = BudgetLedger(Budget(limit=1.0), path=path, clock=lambda: now[0])
    r = first.reserve(0.8, model="slow")
    now[0] = 11.0
    assert second.remaining == pytest.approx(1.0)
    assert second.settle(r.id, 0.8) is Settlement.LATE
    assert first.spent == pytest.approx(0.8) and first.settle(r.id, 0.8) is Settlement.NOT_FOUND


def test_old_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE spend (ts REAL NOT NULL, amount REAL NOT NULL)")
    db.execute("INSERT INTO spend VALUES (?, ?)", (time.time(), 0.3))
    db.commit()
    db.close()
    ledger = BudgetLedger(Budget(limit=1.0), path=path)
    assert ledger.spent == pytest.approx(0.3)
    r = ledger.reserve(0.5)
    assert BudgetLedger(Budget(limit=1.0), path=path).settle(r.id, 0.5) is Settlement.SETTLED
    assert ledger.spent == pytest.approx(0.8)


def test_newer_file_or_closed_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = BudgetLedger(Budget(limit=1.0), path=path)
    ledger.close()
    with pytest.raises(ConfigError, match="was closed"):
        ledger.try_reserve(0.1)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="schema version 99"):
        BudgetLedger(Budget(limit=1.0), path=path)


def _reserve_in_fork(ledger: BudgetLedger, out: Any) -> None:
    res = ledger.reserve(0.3, model="child")
    out.put((res.id, ledger.settle(res.id, 0.25).value))


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    ledger = BudgetLedger(Budget(limit=1.0), path=tmp_path / "ledger.sqlite")
    before = ledger.reserve(0.1)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_reserve_in_fork, args=(ledger, out))
    child.start()
    child_id, result = out.get(timeout=30)
    child.join(timeout=10)
    assert child.exitcode == 0 and result == "settled"
    after = ledger.reserve(0.1)
    assert len({before.id, child_id, after.id}) == 3  # the child did not reuse the parent's ids
    assert ledger.spent == pytest.approx(0.25) and ledger.held == pytest.approx(0.2)
