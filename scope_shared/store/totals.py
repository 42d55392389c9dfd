"""Running outcome totals: each model's overall record, read in one small round trip however big the store.

Every writer (store object) keeps the sums of what it wrote (per model: outcomes, correct, outcomes with
tokens, summed log tokens; the anchors it created; the anchors' input tokens and characters) in its own record
``stats:<writer>`` of the side collection; ``stats:base`` holds what was there before totals existed or at the
last rebuild. The statistics are the sum of all records.

Writing anchors and writing totals are two Chroma calls, so each batch is journalled
(:mod:`scope_shared.store.journal`): a writer that stops between them still has the batch counted, exactly once.
The anchor count is still compared once per store object, as a cheap check for drift the journals cannot see.

Totals can still drift if two writers record the same (anchor, model) at the same instant, or if
:meth:`RunningTotals.rebuild` runs while another process writes. :meth:`RunningTotals.check` compares them
with a full scan; :meth:`RunningTotals.rebuild` recounts them from the anchors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scope_shared.errors import StoreUnavailableError
from scope_shared.store.journal import (
    AT,
    HOST,
    JOURNAL_STALE,
    PENDING,
    PID,
    Journal,
    ReadAnchors,
    describe_journal,
    pending_batch,
    settle_journal,
    writer_gone,
)
from scope_shared.store.state import SideRecords
from scope_shared.store.sums import ANCHORS, STATS_BASE, STATS_PREFIX, Totals
from scope_shared.types import DEFAULT_TOKENS_PER_CHAR, ModelStats

__all__ = ["JOURNAL_STALE", "Journal", "RunningTotals", "StatsCheck", "Totals"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StatsCheck:
    """The running totals against a full scan of the anchors (:meth:`RunningTotals.check`).

    Attributes:
        anchors: anchors in the collection.
        anchors_in_totals: anchors the totals count (None for totals begun before they counted anchors).
        scanned: each model's record counted from every anchor.
        totals: each model's record from the running totals.
        journals: batches journalled but not settled yet, described (a writer in flight, or gone).
    """

    anchors: int
    anchors_in_totals: int | None
    scanned: dict[str, ModelStats]
    totals: dict[str, ModelStats]
    journals: tuple[str, ...] = ()

    def drifted(self) -> list[str]:
        """The models whose totals differ from the scan."""
        out = []
        for model in sorted({*self.scanned, *self.totals}):
            a, b = self.scanned.get(model), self.totals.get(model)
            if a is None or b is None or a.n != b.n or a.n_tokens != b.n_tokens:
                out.append(model)
            elif abs(a.p_correct - b.p_correct) > 1e-9:
                out.append(model)
            elif abs((a.mean_log_tokens or 0.0) - (b.mean_log_tokens or 0.0)) > 1e-9:
                out.append(model)
        return out

    @property
    def drift(self) -> bool:
        """Whether the totals differ from the scan (in any model, or in the number of anchors)."""
        return bool(self.drifted()) or (self.anchors_in_totals is not None and self.anchors_in_totals != self.anchors)


class RunningTotals:
    """This store object's view of the totals: its own sums, and the cached statistics of all writers.

    Args:
        side: the side collection's records.
        count: counts the anchors (a store built before totals existed is scanned once).
        scan: every anchor's metadata, for a full recount.
        read: anchors' metadata by id (to settle a journal).
        ttl: seconds the statistics are cached (writes through this object refresh them at once).
        stale: seconds after which another writer's unsettled journal is settled even if it may be alive.
    """

    def __init__(
        self,
        side: SideRecords,
        *,
        count: Callable[[], int],
        scan: Callable[[], Iterable[Mapping[str, Any]]],
        read: ReadAnchors,
        ttl: float,
        stale: float = JOURNAL_STALE,
    ) -> None:
        self._side = side
        self._count = count
        self._scan = scan
        self._read = read
        self._ttl = ttl
        self._stale = stale
        self._lock = threading.RLock()
        self._writer = f"{STATS_PREFIX}{uuid.uuid4().hex}"
        self._mine = Totals()  # what this object has written, kept in its own record
        self._mine_saved = True
        self._seq = 0
        self._journal: Journal | None = None  # our journalled batch whose write did not finish
        self._writing = False  # that batch's anchors are being written now (settle it only after)
        self._opened = False
        self._anchors_checked = False
        self._unreadable: set[str] = set()
        self._stats: dict[str, ModelStats] | None = None
        self._stats_at = 0.0
        self._tokens_per_char = DEFAULT_TOKENS_PER_CHAR

    @property
    def tokens_per_char(self) -> float:
        """Input tokens per character over the anchors that recorded them (refreshed with the statistics)."""
        return self._tokens_per_char

    def stats(self, *, refresh: bool = False) -> dict[str, ModelStats]:
        """Each model's overall record: the sum of every writer's totals (cached for ``ttl`` seconds)."""
        with self._lock:
            fresh = bool(self._stats) and time.monotonic() - self._stats_at < self._ttl  # empty: re-read
            if fresh and not refresh:
                assert self._stats is not None
                return self._stats
            if (self._journal is not None and not self._writing) or not self._mine_saved:
                with contextlib.suppress(StoreUnavailableError):
                    self._settle_own()
                    if not self._mine_saved:
                        self._save()
            records = self._settle_gone(self._open(self._side.metadata()))
            totals = self._sum(records)
            stats = self._set(totals)
            if not self._anchors_checked:
                with contextlib.suppress(StoreUnavailableError):
                    self._check_anchor_count(records, totals)
            return stats

    def rebuild(self) -> dict[str, ModelStats]:
        """Recount from the anchors (a full scan) and reset every writer's totals to that count."""
        with self._lock:
            totals = Totals.count(self._scan())
            records = self._side.metadata()
            stale = [rid for rid in records if rid.startswith(STATS_PREFIX) and rid != STATS_BASE]
            gone = dict.fromkeys(records.get(STATS_BASE) or {}, 0.0)  # Chroma merges keys: zero the old ones
            self._side.put(STATS_BASE, gone | totals.to_meta())
            if stale:
                self._side.delete(stale)
            self._mine = Totals()
            self._mine_saved = True
            self._journal = None
            self._opened = True
            return self._set(totals)

    def check(self) -> StatsCheck:
        """The totals as stored (and this object's own) against a full scan; writes nothing.

        Writes made by other processes while it runs show as drift: run it while nothing writes.
        """
        with self._lock:
            records = self._side.metadata()
            totals = self._sum(records)
            scanned = Totals.count(self._scan())
            journals = tuple(
                describe_journal(rid, meta, stale=self._stale)
                for rid, meta in sorted(records.items())
                if rid.startswith(STATS_PREFIX) and pending_batch(meta) and rid != self._writer
            )
            if self._journal is not None:
                journals += (f"{self._writer} (this store object): settled at its next write",)
            base = records.get(STATS_BASE)
            return StatsCheck(
                anchors=self._count(),
                anchors_in_totals=round(totals.anchors) if base is not None and ANCHORS in base else None,
                scanned=scanned.stats(),
                totals=totals.stats(),
                journals=journals,
            )

    def ensure_base(self) -> None:
        """Open the totals once: base totals for a store without them, and journals of gone writers settled."""
        with self._lock:
            if not self._opened:
                self._settle_gone(self._open(self._side.metadata()))

    def will_write(self, records: Mapping[str, Mapping[str, Any]], before: Mapping[str, Mapping[str, Any]]) -> None:
        """Journal a batch just before its anchors are written (``before``: the metadata of those that exist)."""
        with self._lock:
            self._settle_own()
            self._seq += 1
            journal = Journal.of(self._seq, records, before)
            self._save(journal)
            self._journal = journal
            self._writing = True

    def interrupted(self) -> None:
        """The journalled batch's write raised: what landed of it is counted at the next write or refresh."""
        with self._lock:
            self._writing = False

    def wrote(self, records: Mapping[str, Mapping[str, Any]], before: Mapping[str, Mapping[str, Any]]) -> None:
        """Count a batch whose anchors were just written, and clear its journal."""
        with self._lock:
            for rid, meta in records.items():
                self._mine.add_meta(meta, before.get(rid))
            self._journal = None
            self._writing = False
            self._mine_saved = False
            self._stats = None
            self._save()

    # -- internals -----------------------------------------------------------------------------

    def _open(self, records: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        """``records`` with the base totals, created once: zero for a new store, a full count for one built
        before totals existed."""
        out = dict(records)
        if not self._opened:
            if STATS_BASE not in out:
                if self._count() > 0:
                    logger.info("anchor store has no running totals yet: counting its anchors once")
                    base = Totals.count(self._scan())
                else:
                    base = Totals()
                self._side.put(STATS_BASE, base.to_meta())
                out[STATS_BASE] = base.to_meta()
            self._opened = True
        return out

    def _sum(self, records: Mapping[str, Mapping[str, Any]]) -> Totals:
        totals = Totals()
        for rid, meta in records.items():
            if rid.startswith(STATS_PREFIX) and rid != self._writer:
                totals.merge(Totals.from_meta(meta))
        totals.merge(self._mine)  # ours, including totals not yet saved after a failed write
        return totals

    def _save(self, journal: Journal | None = None) -> None:
        meta: dict[str, Any] = self._mine.to_meta() | {PID: os.getpid(), HOST: socket.gethostname(), AT: time.time()}
        meta[PENDING] = journal.seq if journal is not None else 0
        self._side.put(self._writer, meta, journal.to_text() if journal is not None else "")
        self._mine_saved = True

    def _settle_own(self) -> None:
        """Count what landed of our journalled batch whose write did not finish."""
        journal = self._journal
        if journal is None or self._writing:
            return
        got = self._side.read(self._writer)
        if got is None or pending_batch(got[0]) != journal.seq:
            # Settled by a store object that took this writer for gone, or reset by a rebuild: adopt the record.
            self._mine = Totals.from_meta(got[0]) if got is not None else Totals()
            self._mine_saved = True
        else:
            self._mine.merge(journal.landed(self._read(list(journal.anchors))))
            self._mine_saved = False
        self._journal = None
        self._stats = None

    def _settle_gone(self, records: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        """``records`` with the journals of writers that are gone settled into their records."""
        out = dict(records)
        for rid, meta in records.items():
            if (
                rid.startswith(STATS_PREFIX)
                and rid != self._writer
                and pending_batch(meta)
                and writer_gone(meta, stale=self._stale)
            ):
                settled = settle_journal(self._side, rid, self._read, unreadable=self._unreadable)
                if settled is not None:
                    out[rid] = settled
        return out

    def _check_anchor_count(self, records: Mapping[str, Mapping[str, Any]], totals: Totals) -> None:
        """Once per store object: the anchors the totals count against the collection's count (one round trip)."""
        self._anchors_checked = True
        base = records.get(STATS_BASE) or {}
        in_flight = any(pending_batch(m) for r, m in records.items() if r.startswith(STATS_PREFIX))
        if ANCHORS not in base or in_flight or self._journal is not None:
            return
        anchors = self._count()
        if round(totals.anchors) != anchors:
            logger.warning(
                "the running totals count %d anchors but the store holds %d: model statistics may have drifted; "
                "compare them with a full scan: scope-router store check",
                round(totals.anchors),
                anchors,
            )

    def _set(self, totals: Totals) -> dict[str, ModelStats]:
        self._stats = totals.stats()
        if totals.in_chars > 0 and totals.in_tokens > 0:
            self._tokens_per_char = totals.in_tokens / totals.in_chars
        self._stats_at = time.monotonic()
        return self._stats
