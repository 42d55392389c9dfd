"""Utility and budget control: pure functions, plus a thread-safe ledger.

The trade-off knob is ``value_per_correct``: **how many US dollars a correct answer is worth to you**.
Each candidate's utility is its expected value minus its expected cost::

    utility = p_correct * value_per_correct - cost

so the router pays for a more accurate model exactly when the gain in expected accuracy is worth more than
the extra cost. ``value_per_correct=None`` (or infinity) means accuracy only (ties broken by cost);
``0`` means cheapest. Summed over many calls, maximising this utility traces the best accuracy-for-cost
curve the estimates allow (it is the Lagrangian of "maximise accuracy subject to a spend").

Hard constraints come on top: ``max_cost_per_call`` excludes candidates whose expected cost exceeds it, and
a :class:`BudgetLedger` excludes candidates that do not fit the remaining budget.
"""

from __future__ import annotations

import heapq
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt

from scope_shared.errors import BudgetExceededError, ConfigError
from scope_shared.types import Estimate

__all__ = [
    "Budget",
    "BudgetLedger",
    "Choice",
    "OnNoFit",
    "Reservation",
    "choose",
    "utility",
]

logger = logging.getLogger(__name__)

OnNoFit = Literal["raise", "cheapest"]
F = TypeVar("F", float, npt.NDArray[np.float64])


def utility(p_correct: F, cost: F, value_per_correct: float | None) -> F:
    """Expected value of a call in USD (``p * value - cost``); accuracy alone when the value is None/inf.

    Works elementwise on numpy arrays too (replay evaluation scores every query and model at once).
    """
    if value_per_correct is None or math.isinf(value_per_correct):
        return p_correct
    out: F = p_correct * value_per_correct - cost
    return out


@dataclass(frozen=True, slots=True)
class Choice:
    """The policy's pick among candidates."""

    model: str
    utilities: dict[str, float]
    excluded: dict[str, str]
    fits: bool
    reason: str


def choose(
    estimates: Mapping[str, Estimate],
    *,
    value_per_correct: float | None,
    max_cost_per_call: float | None = None,
    remaining_budget: float | None = None,
    on_no_fit: OnNoFit = "raise",
) -> Choice:
    """Pick the candidate with the highest utility among those within the cost limits.

    Raises:
        BudgetExceededError: no candidate fits and ``on_no_fit="raise"``.
    """
    if not estimates:
        msg = "no candidate models to choose from"
        raise ConfigError(msg)
    excluded: dict[str, str] = {}
    for name, est in estimates.items():
        if max_cost_per_call is not None and est.cost > max_cost_per_call:
            excluded[name] = f"expected cost ${est.cost:.6g} > max_cost_per_call ${max_cost_per_call:.6g}"
        elif remaining_budget is not None and est.cost > remaining_budget:
            excluded[name] = f"expected cost ${est.cost:.6g} > remaining budget ${remaining_budget:.6g}"
    utilities = {
        name: utility(est.p_correct, est.cost, value_per_correct)
        for name, est in estimates.items()
        if name not in excluded
    }
    if utilities:
        best = max(utilities, key=lambda n: (utilities[n], -estimates[n].cost, n))
        return Choice(best, utilities, excluded, True, _explain(best, estimates, utilities))
    cheapest = min(estimates, key=lambda n: (estimates[n].cost, n))
    limits = "; ".join(f"{n}: {why}" for n, why in excluded.items())
    if on_no_fit == "raise":
        msg = f"no candidate fits the cost limits ({limits}); raise the budget or allow a cheaper model"
        raise BudgetExceededError(msg)
    reason = f"no candidate fits the cost limits; fell back to the cheapest, {cheapest!r} ({limits})"
    return Choice(cheapest, {}, excluded, False, reason)


def _explain(best: str, estimates: Mapping[str, Estimate], utilities: Mapping[str, float]) -> str:
    est = estimates[best]
    text = f"{best}: p_correct={est.p_correct:.2f}, ~{est.output_tokens:.0f} output tokens, ${est.cost:.6f}"
    others = sorted((n for n in utilities if n != best), key=lambda n: -utilities[n])
    if others:
        ru = estimates[others[0]]
        text += (
            f"; runner-up {others[0]}: p_correct={ru.p_correct:.2f}, ${ru.cost:.6f}"
            f" (utility {utilities[best]:.6g} vs {utilities[others[0]]:.6g})"
        )
    return text


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending limit in USD, over all time or over a rolling window of ``window_seconds``."""

    limit: float
    window_seconds: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.limit) and self.limit >= 0):
            msg = f"budget limit must be a finite USD amount >= 0, got {self.limit}"
            raise ConfigError(msg)
        if self.window_seconds is not None and not self.window_seconds > 0:
            msg = f"window_seconds must be > 0 or None, got {self.window_seconds}"
            raise ConfigError(msg)


@dataclass(slots=True)
class Reservation:
    """An amount held against the budget until the call settles."""

    id: str
    amount: float
    created: float
    settled: float | None = None
    model: str | None = None


@dataclass(slots=True)
class _Window:
    spends: list[tuple[float, float]] = field(default_factory=list)  # heap of (time, amount)
    total: float = 0.0


class BudgetLedger:
    """Reserves a call's expected cost before it runs and settles its real cost after; thread-safe.

    ``spent + held + amount <= limit`` is checked and the amount held under one lock, so concurrent
    callers can never reserve more than the budget. A settled cost replaces its reservation; with a rolling
    window, spends older than the window are released. A real cost above its reservation is recorded as it
    was (the ledger never hides spend) and added to :attr:`overrun_total`.

    With ``path``, every settled spend is also written to a SQLite file, so a restart does not reset a daily
    budget, and ledgers in several processes sharing the file see each other's settled spend (read before
    every reservation). Reservations in flight are per process and are not persisted.

    Args:
        budget: the limit and optional window.
        path: a SQLite file to persist settled spend in (None: memory only).
        clock: seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        budget: Budget,
        *,
        path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.budget = budget
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, Reservation] = {}
        self._window = _Window()
        self._settled_total = 0.0
        self._overrun = 0.0
        self._db: sqlite3.Connection | None = None
        self._seen_rowid = 0
        if path is not None:
            self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS spend (ts REAL NOT NULL, amount REAL NOT NULL)")
            self._db.commit()
            with self._lock:
                self._sync()

    def _sync(self) -> None:
        """Fold in spend other ledgers wrote to the shared file (caller holds the lock)."""
        if self._db is None:
            return
        rows = self._db.execute(
            "SELECT rowid, ts, amount FROM spend WHERE rowid > ? ORDER BY rowid", (self._seen_rowid,)
        ).fetchall()
        horizon = None if self.budget.window_seconds is None else self._clock() - self.budget.window_seconds
        for rowid, ts, amount in rows:
            self._seen_rowid = max(self._seen_rowid, int(rowid))
            self._settled_total += amount
            if horizon is None:
                self._window.total += amount
            elif ts > horizon:
                self._window.total += amount
                heapq.heappush(self._window.spends, (float(ts), float(amount)))

    def close(self) -> None:
        """Close the SQLite file, if any."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _expire(self, now: float) -> None:
        self._sync()
        if self.budget.window_seconds is None:
            return
        horizon = now - self.budget.window_seconds
        spends = self._window.spends
        while spends and spends[0][0] <= horizon:
            _, amount = heapq.heappop(spends)
            self._window.total -= amount
        if not spends:
            self._window.total = 0.0

    def _held_total(self) -> float:
        return sum(r.amount for r in self._held.values())

    @property
    def spent(self) -> float:
        """Settled spend counted against the limit now (inside the window, if any)."""
        with self._lock:
            self._expire(self._clock())
            return max(0.0, self._window.total)

    @property
    def held(self) -> float:
        """Amount reserved by calls that have not settled."""
        with self._lock:
            return self._held_total()

    @property
    def remaining(self) -> float:
        """What a new reservation may still take."""
        with self._lock:
            self._expire(self._clock())
            return max(0.0, self.budget.limit - self._window.total - self._held_total())

    @property
    def settled_total(self) -> float:
        """Sum of every settled cost since the ledger started (window or not)."""
        with self._lock:
            return self._settled_total

    @property
    def overrun_total(self) -> float:
        """How much settled costs exceeded their reservations, summed (raise ``reserve_factor`` if large)."""
        with self._lock:
            return self._overrun

    def try_reserve(
        self, amount: float, *, model: str | None = None, allow_over: bool = False
    ) -> Reservation | None:
        """Hold ``amount`` if it fits; ``None`` when it does not.

        ``allow_over=True`` holds it even past the limit: only for a caller that chose to overspend
        (``on_no_fit="cheapest"``), so the real cost is still settled and counted.
        """
        if not (math.isfinite(amount) and amount >= 0):
            msg = f"reservation must be a finite amount >= 0, got {amount}"
            raise ConfigError(msg)
        with self._lock:
            now = self._clock()
            self._expire(now)
            over = self._window.total + self._held_total() + amount > self.budget.limit + 1e-12
            if over and not allow_over:
                return None
            res = Reservation(id=uuid.uuid4().hex, amount=amount, created=now, model=model)
            self._held[res.id] = res
            return res

    def reserve(self, amount: float, *, model: str | None = None) -> Reservation:
        """Hold ``amount``; raises :class:`BudgetExceededError` when it does not fit."""
        res = self.try_reserve(amount, model=model)
        if res is None:
            msg = f"reserving ${amount:.6g} would exceed the budget (remaining ${self.remaining:.6g})"
            raise BudgetExceededError(msg)
        return res

    def settle(self, reservation_id: str, actual: float) -> bool:
        """Replace a reservation with the real cost; ``False`` if it was already settled or unknown."""
        if not (math.isfinite(actual) and actual >= 0):
            msg = f"settled cost must be a finite amount >= 0, got {actual}"
            raise ConfigError(msg)
        with self._lock:
            res = self._held.pop(reservation_id, None)
            if res is None:
                return False
            now = self._clock()
            self._expire(now)
            if actual > res.amount + 1e-12:
                self._overrun += actual - res.amount
                logger.debug(
                    "call cost $%.6g, above its reservation $%.6g (model %s)", actual, res.amount, res.model
                )
            self._record(now, actual)
            return True

    def charge(self, amount: float) -> None:
        """Record a spend that had no reservation (e.g. a forced call)."""
        if not (math.isfinite(amount) and amount >= 0):
            msg = f"charge must be a finite amount >= 0, got {amount}"
            raise ConfigError(msg)
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._record(now, amount)

    def _record(self, now: float, amount: float) -> None:
        if self._db is not None:
            cur = self._db.execute("INSERT INTO spend (ts, amount) VALUES (?, ?)", (now, amount))
            self._db.commit()
            if cur.lastrowid == self._seen_rowid + 1:  # nobody else wrote in between: no need to re-read it
                self._seen_rowid = int(cur.lastrowid)
            else:
                self._sync()
                return
        self._window.total += amount
        self._settled_total += amount
        if self.budget.window_seconds is not None:
            heapq.heappush(self._window.spends, (now, amount))

    def release(self, reservation_id: str) -> bool:
        """Drop a reservation whose call never ran; ``False`` if unknown."""
        with self._lock:
            return self._held.pop(reservation_id, None) is not None
