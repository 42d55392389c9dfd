"""Budget control: a spending limit and the thread-safe (optionally cross-process) ledger that enforces it.

:class:`BudgetLedger` reserves a call's expected cost before it runs and settles the real cost after; with a
SQLite ``path`` every process sharing the file shares one budget, reservations included. The engine asks it
whether a candidate fits; :mod:`scope_shared.policy` chooses among those that do.

One job in one module, over the ~400-line guideline on purpose: the in-memory and the SQLite paths share the
reservation model (hold, expire, settle, settle late, release) and its invariants, which read best together.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from scope_shared.errors import BudgetExceededError, ConfigError

__all__ = ["DEFAULT_RESERVATION_TTL", "Budget", "BudgetLedger", "Reservation", "Settlement"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


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
    """An amount held against the budget until the call settles, or until ``expires`` (``clock`` seconds)."""

    id: str
    amount: float
    created: float
    settled: float | None = None
    model: str | None = None
    expires: float | None = None


class Settlement(enum.Enum):
    """What :meth:`BudgetLedger.settle` did; true when the cost was counted.

    ``SETTLED``: the real cost replaced a held reservation. ``LATE``: the reservation had expired (its hold
    was already released), and the real cost is counted all the same. ``NOT_FOUND`` (false): the id is
    unknown, or was already settled or released; nothing was counted.
    """

    SETTLED = "settled"
    LATE = "late"
    NOT_FOUND = "not_found"

    def __bool__(self) -> bool:
        return self is not Settlement.NOT_FOUND


DEFAULT_RESERVATION_TTL = 900.0
"""Seconds a reservation is held before it is released as abandoned (a call that never settled)."""

OVERRUN_WARNING_FACTOR = 2.0
OVERRUN_WARNING_USD = 0.01
"""A settled cost above ``OVERRUN_WARNING_FACTOR`` times its reservation and more than ``OVERRUN_WARNING_USD``
above it is logged at WARNING (smaller overruns at DEBUG): the estimate was badly wrong, not noisy."""

_LATE_SETTLE_SECONDS = 7 * 86_400.0  # how long after expiring a reservation can still be settled late
_MAX_EXPIRED_IN_MEMORY = 100_000
_EPS = 1e-12
_SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spend (ts REAL NOT NULL, amount REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reservation (id TEXT PRIMARY KEY, amount REAL NOT NULL, created REAL NOT NULL,"
    " expires REAL, model TEXT, expired REAL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS reservation_held ON reservation (expires, amount) WHERE expired IS NULL",
)


@dataclass(slots=True)
class _Window:
    """Settled spend counted against the limit now.

    With a window, a spend leaves it once ``clock`` says it is older than the window, and is kept aside until
    the monotonic clock says so too: a wall clock that jumped forward and is set back finds it again.
    """

    seconds: float | None
    total: float = 0.0
    live: list[tuple[float, float]] = field(default_factory=list)  # heap of (ts, amount) inside the window
    released: deque[tuple[float, float, float]] = field(default_factory=deque)  # (ts, amount, monotonic)
    last_now: float = -math.inf

    def add(self, ts: float, amount: float) -> None:
        if self.seconds is None:
            self.total += amount
        elif ts > self.last_now - self.seconds:
            self.total += amount
            heapq.heappush(self.live, (ts, amount))
        else:
            self.released.append((ts, amount, time.monotonic()))

    def advance(self, now: float) -> None:
        if self.seconds is None:
            return
        horizon = now - self.seconds
        if now < self.last_now and self.released:
            kept: deque[tuple[float, float, float]] = deque()
            for item in self.released:
                if item[0] > horizon:
                    self.total += item[1]
                    heapq.heappush(self.live, (item[0], item[1]))
                else:
                    kept.append(item)
            self.released = kept
        self.last_now = now
        live = self.live
        if live and live[0][0] <= horizon:
            mono = time.monotonic()
            while live and live[0][0] <= horizon:
                ts, amount = heapq.heappop(live)
                self.total -= amount
                self.released.append((ts, amount, mono))
            if not live:
                self.total = 0.0
        if self.released:
            cutoff = time.monotonic() - self.seconds
            while self.released and self.released[0][2] <= cutoff:
                self.released.popleft()


class BudgetLedger:
    """Reserves a call's expected cost before it runs and settles its real cost after; thread-safe.

    ``spent + held + amount <= limit`` is checked and the amount held in one step (one lock in memory, one
    SQLite write transaction with a file), so concurrent callers can never reserve more than the budget.
    A settled cost replaces its reservation; with a rolling window, spends older than the window are
    released. A real cost above its reservation is recorded as it was (the ledger never hides spend) and
    added to :attr:`overrun_total`; far above it (see ``OVERRUN_WARNING_FACTOR``) it is logged at WARNING.

    A reservation that is neither settled nor released within ``reservation_ttl`` seconds (a call that
    crashed, a process that died) is released with a WARNING naming its model and amount. If its call does
    settle later, the real cost is counted all the same and :meth:`settle` returns ``Settlement.LATE``
    (for up to 7 days after it expired).

    With ``path``, the ledger lives in a SQLite file (WAL mode): settled spend survives a restart, and every
    ledger over the file, in this process or another, sees the others' spend and reservations and can settle
    or release any of them. A reservation or settlement is one write transaction (``synchronous=NORMAL``:
    durable when a process crashes; the last transactions may be lost if the machine loses power).
    An older file holding only settled spend is upgraded in place. :attr:`overrun_total` counts this
    object's settlements only.

    Args:
        budget: the limit and optional window.
        path: a SQLite file to keep the ledger in (None: memory only, this object alone).
        clock: seconds since the epoch; injectable for tests. Ledgers sharing a file should share a clock.
        reservation_ttl: seconds before an unsettled reservation is released; None keeps it until settled.
    """

    def __init__(
        self,
        budget: Budget,
        *,
        path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        reservation_ttl: float | None = DEFAULT_RESERVATION_TTL,
    ) -> None:
        if reservation_ttl is not None and not (math.isfinite(reservation_ttl) and reservation_ttl > 0):
            msg = (
                f"reservation_ttl must be a number of seconds > 0, or None to hold reservations until they "
                f"are settled; got {reservation_ttl}"
            )
            raise ConfigError(msg)
        self.budget = budget
        self.reservation_ttl = reservation_ttl
        self.path = None if path is None else Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._window = _Window(budget.window_seconds)
        self._settled_total = 0.0
        self._overrun = 0.0
        self._held: dict[str, Reservation] = {}  # in memory only; with a file, the file holds them
        self._held_sum = 0.0
        self._check_at = math.inf  # no reservation held in memory expires before this
        self._expired: OrderedDict[str, Reservation] = OrderedDict()
        self._id_prefix = f"{uuid.uuid4().hex[:16]}-"  # random per ledger object: ids unique across processes
        self._ids = itertools.count(1)
        self._db: sqlite3.Connection | None = None
        self._seen_rowid = 0
        self._reload = False
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []
        if self.path is not None:
            self._db = _open(self.path)
            with self._lock:
                self._run(False, self._load)

    def __repr__(self) -> str:
        return f"BudgetLedger({self.budget!r}, path={self.path!r}, reservation_ttl={self.reservation_ttl!r})"

    def close(self) -> None:
        """Close the SQLite file, if any; a ledger over a file cannot be used after."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- the public operations ------------------------------------------------------------------

    @property
    def spent(self) -> float:
        """Settled spend counted against the limit now (inside the window, if any)."""
        with self._lock:
            return max(0.0, self._run(False, self._spent_at))

    @property
    def held(self) -> float:
        """Amount reserved by calls that have not settled (by every ledger sharing the file, if any)."""
        with self._lock:
            return self._run(False, self._held_at)

    @property
    def remaining(self) -> float:
        """What a new reservation may still take."""
        with self._lock:
            return max(0.0, self.budget.limit - self._run(False, self._committed_at))

    @property
    def settled_total(self) -> float:
        """Sum of every settled cost since the ledger (or its file) started, window or not."""
        with self._lock:
            self._run(False, self._refresh)
            return self._settled_total

    @property
    def overrun_total(self) -> float:
        """How much settled costs exceeded their reservations, summed (raise ``reserve_factor`` if large)."""
        with self._lock:
            return self._overrun

    def reservation(self, reservation_id: str) -> Reservation | None:
        """The reservation held under this id (by any ledger sharing the file), or None."""
        with self._lock:
            return self._run(False, self._find, reservation_id)

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
            if self.path is None:  # the routing path: no transaction, no indirection
                return self._reserve(self._clock(), amount, model, allow_over)
            return self._run(True, self._reserve, amount, model, allow_over)

    def reserve(self, amount: float, *, model: str | None = None) -> Reservation:
        """Hold ``amount``; raises :class:`BudgetExceededError` when it does not fit."""
        res = self.try_reserve(amount, model=model)
        if res is None:
            msg = f"reserving ${amount:.6g} would exceed the budget (remaining ${self.remaining:.6g})"
            raise BudgetExceededError(msg)
        return res

    def settle(self, reservation_id: str, actual: float) -> Settlement:
        """Replace a reservation with the real cost; see :class:`Settlement` for what the result says."""
        if not (math.isfinite(actual) and actual >= 0):
            msg = f"settled cost must be a finite amount >= 0, got {actual}"
            raise ConfigError(msg)
        with self._lock:
            if self.path is None:
                return self._settle(self._clock(), reservation_id, actual)
            return self._run(True, self._settle, reservation_id, actual)

    def release(self, reservation_id: str) -> bool:
        """Drop a reservation whose call never ran; ``False`` if nothing was held under that id."""
        with self._lock:
            return self._run(True, self._release, reservation_id)

    def charge(self, amount: float) -> None:
        """Record a spend that had no reservation (e.g. a forced call)."""
        if not (math.isfinite(amount) and amount >= 0):
            msg = f"charge must be a finite amount >= 0, got {amount}"
            raise ConfigError(msg)
        with self._lock:
            self._run(True, self._charge, amount)

    # -- one step, at one time, inside the lock (and a transaction, with a file) ------------------

    def _run(self, write: bool, step: Callable[Concatenate[float, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.path is None:
            return step(self._clock(), *args, **kwargs)
        db = self._connection()
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = step(self._clock(), *args, **kwargs)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._reload = True  # what the step folded in memory may not be in the file
            raise
        return result

    def _reserve(self, now: float, amount: float, model: str | None, allow_over: bool) -> Reservation | None:
        self._refresh(now)
        self._expire_held(now)
        held = self._held_sum if self._db is None else self._held_at(now)
        if not allow_over and self._window.total + held + amount > self.budget.limit + _EPS:
            return None
        ttl = self.reservation_ttl
        rid = f"{self._id_prefix}{next(self._ids):x}"
        res = Reservation(rid, amount, now, None, model, None if ttl is None else now + ttl)
        if self._db is not None:
            self._db.execute(
                "INSERT INTO reservation (id, amount, created, expires, model) VALUES (?, ?, ?, ?, ?)",
                (res.id, res.amount, res.created, res.expires, res.model),
            )
        else:
            self._held[res.id] = res
            self._held_sum += amount
            if res.expires is not None and res.expires < self._check_at:
                self._check_at = res.expires
        return res

    def _settle(self, now: float, reservation_id: str, actual: float) -> Settlement:
        self._refresh(now)
        self._expire_held(now)
        res, late = self._take(reservation_id)
        if res is None:
            return Settlement.NOT_FOUND
        if actual > res.amount + _EPS:
            over = actual - res.amount
            self._overrun += over
            large = actual > OVERRUN_WARNING_FACTOR * res.amount and over > OVERRUN_WARNING_USD
            logger.log(
                logging.WARNING if large else logging.DEBUG,
                "call of model %s cost $%.6g, above its reservation $%.6g",
                res.model,
                actual,
                res.amount,
            )
        if late:
            logger.warning(
                "call of model %s settled at $%.6g after its reservation of $%.6g expired; the cost is counted",
                res.model,
                actual,
                res.amount,
            )
        self._record(now, actual)
        return Settlement.LATE if late else Settlement.SETTLED

    def _release(self, now: float, reservation_id: str) -> bool:
        self._expire_held(now)
        res, late = self._take(reservation_id)
        return res is not None and not late

    def _charge(self, now: float, amount: float) -> None:
        self._refresh(now)
        self._record(now, amount)

    def _spent_at(self, now: float) -> float:
        self._refresh(now)
        return self._window.total

    def _committed_at(self, now: float) -> float:
        self._refresh(now)
        return self._window.total + self._held_at(now)

    def _held_at(self, now: float) -> float:
        if self._db is None:
            self._expire_held(now)
            return self._held_sum
        row = self._db.execute(
            "SELECT total(amount) FROM reservation WHERE expired IS NULL AND (expires IS NULL OR expires > ?)",
            (now,),
        ).fetchone()
        return float(row[0])

    def _find(self, now: float, reservation_id: str) -> Reservation | None:
        if self._db is None:
            self._expire_held(now)
            res = self._held.get(reservation_id)
            return None if res is None else replace(res)
        row = self._db.execute(
            "SELECT amount, created, expires, model FROM reservation"
            " WHERE id = ? AND expired IS NULL AND (expires IS NULL OR expires > ?)",
            (reservation_id, now),
        ).fetchone()
        return None if row is None else Reservation(reservation_id, row[0], row[1], model=row[3], expires=row[2])

    # -- storage: in memory, or in the file --------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self.path is None:
            msg = f"the budget ledger over {self.path} was closed; open a new BudgetLedger to use the file"
            raise ConfigError(msg)
        if self._pid != os.getpid():  # a forked child: a SQLite connection must not cross a fork
            self._inherited.append(self._db)  # neither used nor closed here, where closing could disturb the file
            self._db = _open(self.path)
            self._pid = os.getpid()
            self._id_prefix = f"{uuid.uuid4().hex[:16]}-"
            self._reload = True
        return self._db

    def _load(self, now: float) -> None:
        """Read the file's settled spend afresh (caller holds the lock and a transaction)."""
        db = self._connection()
        self._window = _Window(self.budget.window_seconds)
        self._window.advance(now)
        total, last = db.execute("SELECT total(amount), coalesce(max(rowid), 0) FROM spend").fetchone()
        self._settled_total = float(total)
        self._seen_rowid = int(last)
        if self.budget.window_seconds is None:
            self._window.total = float(total)
        else:
            rows = db.execute(
                "SELECT ts, amount FROM spend WHERE rowid <= ? AND ts > ?",
                (last, now - self.budget.window_seconds),
            )
            for ts, amount in rows:
                self._window.add(float(ts), float(amount))
        self._reload = False

    def _refresh(self, now: float) -> None:
        """Fold in spend other ledgers wrote to the file, and move the window to ``now``."""
        if self._db is None:
            self._window.advance(now)
        else:
            if self._reload:
                self._load(now)
            rows = self._db.execute(
                "SELECT rowid, ts, amount FROM spend WHERE rowid > ? ORDER BY rowid", (self._seen_rowid,)
            ).fetchall()
            self._window.advance(now)
            for rowid, ts, amount in rows:
                self._seen_rowid = int(rowid)
                self._settled_total += amount
                self._window.add(float(ts), float(amount))

    def _record(self, now: float, amount: float) -> None:
        if self._db is not None:
            cur = self._db.execute("INSERT INTO spend (ts, amount) VALUES (?, ?)", (now, amount))
            self._seen_rowid = int(cur.lastrowid or 0)  # the step read every earlier row in this transaction
        self._window.add(now, amount)
        self._settled_total += amount

    def _take(self, reservation_id: str) -> tuple[Reservation | None, bool]:
        """Remove a reservation; returns it and whether it had expired."""
        if self._db is None:
            res = self._held.pop(reservation_id, None)
            if res is None:
                late = self._expired.pop(reservation_id, None)
                return late, late is not None
            self._held_sum = self._held_sum - res.amount if self._held else 0.0
            return res, False
        row = self._db.execute(
            "SELECT amount, created, expires, model, expired FROM reservation WHERE id = ?", (reservation_id,)
        ).fetchone()
        if row is None:
            return None, False
        self._db.execute("DELETE FROM reservation WHERE id = ?", (reservation_id,))
        res = Reservation(reservation_id, row[0], row[1], model=row[3], expires=row[2])
        return res, row[4] is not None

    def _expire_held(self, now: float) -> None:
        """Release reservations past their expiry, each with a WARNING."""
        if self._db is None and now < self._check_at:
            return
        expired: list[Reservation] = []
        if self._db is not None:
            rows = self._db.execute(
                "SELECT id, amount, created, expires, model FROM reservation WHERE expired IS NULL AND expires <= ?",
                (now,),
            ).fetchall()
            if not rows:
                return
            self._db.execute("UPDATE reservation SET expired = ? WHERE expired IS NULL AND expires <= ?", (now, now))
            self._db.execute(
                "DELETE FROM reservation WHERE expired IS NOT NULL AND expired <= ?", (now - _LATE_SETTLE_SECONDS,)
            )
            expired = [Reservation(r[0], r[1], r[2], model=r[4], expires=r[3]) for r in rows]
        else:
            self._check_at = math.inf
            for res in list(self._held.values()):
                if res.expires is None:
                    continue
                if res.expires <= now:
                    del self._held[res.id]
                    self._held_sum -= res.amount
                    self._expired[res.id] = res
                    expired.append(res)
                else:
                    self._check_at = min(self._check_at, res.expires)
            if not self._held:
                self._held_sum = 0.0
            stale = now - _LATE_SETTLE_SECONDS
            while self._expired:
                oldest = next(iter(self._expired.values()))
                if len(self._expired) <= _MAX_EXPIRED_IN_MEMORY and (oldest.expires or now) > stale:
                    break
                self._expired.popitem(last=False)
        for res in expired:
            logger.warning(
                "budget reservation of $%.6g for model %s was not settled within %.0f s and is released "
                "(a late settle still counts its cost)",
                res.amount,
                res.model,
                (res.expires or res.created) - res.created,
            )


def _open(path: Path) -> sqlite3.Connection:
    """Open a ledger file, creating or upgrading its schema."""
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    except sqlite3.Error as e:
        msg = f"cannot open the budget ledger file {path}: {e}"
        raise ConfigError(msg) from e
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > _SCHEMA_VERSION:
            msg = (
                f"{path} is a budget ledger of schema version {version}, newer than this scope-router reads "
                f"({_SCHEMA_VERSION}); upgrade scope-router or use another file"
            )
            raise ConfigError(msg)
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()
        raise
    return db
