"""Running outcome totals: each model's overall record, read in one small round trip however big the store.

Every writer (store object) keeps the sums of what it wrote (per model: outcomes, correct, outcomes with
tokens, summed log tokens; the anchors it created; the anchors' input tokens and characters) in its own record
``stats:<writer>`` of the side collection; ``stats:base`` holds what was there before totals existed or at the
last rebuild. The statistics are the sum of all records.

Writing anchors and writing totals are two Chroma calls, so a writer can stop between them (kill -9, a lost
connection, a request that timed out after the server applied it). Each batch is therefore journalled: just
before its anchors are written, the writer's record is saved marked ``pending`` with the batch as its document
(for each anchor, the outcome keys it writes and the values they replace); just after, the record is saved with
the batch counted and no mark. A journal left behind is settled exactly once, by counting the journalled keys
that now hold the batch's values (one read of those anchors), and folded into that writer's record:

- by the writer itself, at its next write or statistics refresh (a write that failed or timed out);
- by any store object that opens the store or refreshes its statistics, once the writer is gone: on the same
  host and its process no longer exists, or the journal is older than :data:`JOURNAL_STALE` seconds.

A settled record is written whole (the writer's sums plus what landed), so two store objects settling the same
journal write the same record. Re-running an interrupted ingest on the same host therefore repairs its totals
at once; elsewhere, within :data:`JOURNAL_STALE`. This costs one more small write per batch; deriving totals by
scanning on every open (seconds per 100k anchors, in every process) or comparing anchor counts alone (blind to
batches that only add outcomes to stored anchors) would not. The anchor count is still compared once per store
object, as a cheap check for drift the journals cannot see.

Totals can still drift if two writers record the same (anchor, model) at the same instant, or if
:meth:`RunningTotals.rebuild` runs while another process writes. :meth:`RunningTotals.check` compares them
with a full scan; :meth:`RunningTotals.rebuild` recounts them from the anchors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scope_shared.errors import StoreUnavailableError
from scope_shared.store.records import CHARS, CORRECT, IN_TOKENS, TOKENS, log_tokens
from scope_shared.store.state import SideRecords
from scope_shared.types import DEFAULT_TOKENS_PER_CHAR, ModelStats

__all__ = ["JOURNAL_STALE", "Journal", "RunningTotals", "StatsCheck", "Totals"]

logger = logging.getLogger(__name__)

STATS_PREFIX = "stats:"
STATS_BASE = STATS_PREFIX + "base"
_FIELDS = ("n", "c", "nt", "lt")
ANCHORS = "anchors"
#: Metadata of a writer's record besides its sums: the journalled batch (its number; 0 for none: Chroma merges
#: metadata keys on upsert, so a key is never removed), who wrote it and when.
PENDING, PID, HOST, AT = "pending", "pid", "host", "at"
#: Seconds after which a journal whose writer cannot be seen to be gone is settled by others anyway. A batch
#: is two Chroma writes, each bounded by the store's timeout; this leaves a wide margin for clock skew.
JOURNAL_STALE = 600.0

ReadAnchors = Callable[[Sequence[str]], Mapping[str, Mapping[str, Any]]]


def _counted(key: str) -> bool:
    """Whether an anchor metadata key enters the totals."""
    return key.startswith((CORRECT, TOKENS)) or key in (CHARS, IN_TOKENS)


@dataclass(slots=True)
class Totals:
    """Sums behind each model's statistics: per model (n, correct, n with tokens, summed log tokens)."""

    models: dict[str, list[float]] = field(default_factory=dict)
    anchors: float = 0.0
    in_tokens: float = 0.0
    in_chars: float = 0.0

    def add_meta(self, meta: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
        """Count an anchor's metadata ``meta`` merged over ``old`` (its metadata before the write; None: new)."""
        if old is None:
            self.anchors += 1
            old = {}
        for key, value in meta.items():
            if key.startswith(CORRECT):
                acc = self.models.setdefault(key[len(CORRECT) :], [0.0, 0.0, 0.0, 0.0])
                prev = old.get(key)
                acc[0] += 0 if prev is not None else 1
                acc[1] += float(value) - (float(prev) if prev is not None else 0.0)
            elif key.startswith(TOKENS):
                acc = self.models.setdefault(key[len(TOKENS) :], [0.0, 0.0, 0.0, 0.0])
                prev = old.get(key)
                acc[2] += 0 if prev is not None else 1
                acc[3] += log_tokens(value) - (log_tokens(prev) if prev is not None else 0.0)
        in_tok, chars = meta.get(IN_TOKENS), meta.get(CHARS, old.get(CHARS))
        if isinstance(in_tok, int | float) and isinstance(chars, int | float) and chars > 0:
            prev = old.get(IN_TOKENS)
            if isinstance(prev, int | float):
                self.in_tokens += float(in_tok) - float(prev)
            else:
                self.in_tokens += float(in_tok)
                self.in_chars += float(chars)

    def merge(self, other: Totals) -> None:
        for model, vals in other.models.items():
            acc = self.models.setdefault(model, [0.0, 0.0, 0.0, 0.0])
            for i, v in enumerate(vals):
                acc[i] += v
        self.anchors += other.anchors
        self.in_tokens += other.in_tokens
        self.in_chars += other.in_chars

    @property
    def outcomes(self) -> int:
        return round(sum(vals[0] for vals in self.models.values()))

    def to_meta(self) -> dict[str, float]:
        meta: dict[str, float] = {ANCHORS: self.anchors, "in_tokens": self.in_tokens, "in_chars": self.in_chars}
        for model, vals in self.models.items():
            meta |= {f"{name}::{model}": v for name, v in zip(_FIELDS, vals, strict=True)}
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Totals:
        out = cls(
            anchors=float(meta.get(ANCHORS, 0.0)),
            in_tokens=float(meta.get("in_tokens", 0.0)),
            in_chars=float(meta.get("in_chars", 0.0)),
        )
        for key, value in meta.items():
            field_name, sep, model = key.partition("::")
            if sep and field_name in _FIELDS:
                acc = out.models.setdefault(model, [0.0, 0.0, 0.0, 0.0])
                acc[_FIELDS.index(field_name)] = float(value)
        return out

    @classmethod
    def count(cls, metas: Iterable[Mapping[str, Any]]) -> Totals:
        """Totals counted from anchors' metadata (a full scan)."""
        out = cls()
        for meta in metas:
            out.add_meta(meta)
        return out

    def stats(self) -> dict[str, ModelStats]:
        return {
            model: ModelStats(
                n=round(n),
                p_correct=min(1.0, max(0.0, s / n)),
                mean_log_tokens=lt / nt if nt >= 0.5 else None,
                n_tokens=round(nt),
            )
            for model, (n, s, nt, lt) in sorted(self.models.items())
            if n >= 0.5
        }


@dataclass(frozen=True, slots=True)
class Journal:
    """A batch about to be written: per anchor id, the counted keys it writes and the values they had before
    (None for an anchor the batch creates)."""

    seq: int
    anchors: dict[str, tuple[dict[str, Any], dict[str, Any] | None]]

    @classmethod
    def of(cls, seq: int, records: Mapping[str, Mapping[str, Any]], before: Mapping[str, Mapping[str, Any]]) -> Journal:
        anchors: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        for rid, meta in records.items():
            new = {k: v for k, v in meta.items() if _counted(k)}
            old = before.get(rid)
            kept = None if old is None else {k: old[k] for k in {*new, CHARS, IN_TOKENS} if k in old}
            anchors[rid] = (new, kept)
        return cls(seq, anchors)

    def to_text(self) -> str:
        body = {rid: [new, old] for rid, (new, old) in self.anchors.items()}
        return json.dumps({"seq": self.seq, "anchors": body}, separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str) -> Journal | None:
        """The journal saved as ``text``; None if it cannot be read."""
        try:
            raw = json.loads(text)
            anchors = {
                str(rid): (dict(new), None if old is None else dict(old)) for rid, (new, old) in raw["anchors"].items()
            }
            return cls(int(raw["seq"]), anchors)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def landed(self, current: Mapping[str, Mapping[str, Any]]) -> Totals:
        """What the batch added to the totals, given the journalled anchors' metadata now: the keys that hold
        the batch's values count (a record's keys are written together, so an anchor landed whole or not)."""
        delta = Totals()
        for rid, (new, old) in self.anchors.items():
            cur = current.get(rid) or {}
            got = {k: v for k, v in new.items() if k in cur and cur[k] == v}
            if any(k.startswith(CORRECT) for k in got):
                delta.add_meta(got, old)
        return delta


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


def _pending(meta: Mapping[str, Any]) -> int:
    """The number of the batch a writer's record journals (0: none)."""
    value = meta.get(PENDING)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # not ours to signal, or no way to tell: alive as far as we know
        return True
    return True


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
                self._describe(rid, meta)
                for rid, meta in sorted(records.items())
                if rid.startswith(STATS_PREFIX) and _pending(meta) and rid != self._writer
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
        if got is None or _pending(got[0]) != journal.seq:
            # Settled by a store object that took this writer for gone, or reset by a rebuild: adopt the record.
            self._mine = Totals.from_meta(got[0]) if got is not None else Totals()
            self._mine_saved = True
        else:
            self._mine.merge(journal.landed(self._read(list(journal.anchors))))
            self._mine_saved = False
        self._journal = None
        self._stats = None

    def _gone(self, meta: Mapping[str, Any]) -> bool:
        """Whether the writer of a journalled record has stopped (or is presumed to have, its journal stale)."""
        at, pid, host = meta.get(AT), meta.get(PID), meta.get(HOST)
        if not isinstance(at, int | float) or time.time() - at > self._stale:
            return True
        return host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() and not _alive(pid)

    def _settle_gone(self, records: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        """``records`` with the journals of writers that are gone settled into their records."""
        out = dict(records)
        for rid, meta in records.items():
            if rid.startswith(STATS_PREFIX) and rid != self._writer and _pending(meta) and self._gone(meta):
                settled = self._settle(rid)
                if settled is not None:
                    out[rid] = settled
        return out

    def _settle(self, rid: str) -> Mapping[str, Any] | None:
        got = self._side.read(rid)
        if got is None:
            return None
        meta, text = got
        if not _pending(meta):
            return meta  # settled meanwhile
        journal = Journal.from_text(text)
        if journal is None or journal.seq != _pending(meta):
            if rid not in self._unreadable:
                self._unreadable.add(rid)
                logger.warning(
                    "the batch journal of %s cannot be read; its totals may be short: run scope-router store check",
                    rid,
                )
            return None
        delta = journal.landed(self._read(list(journal.anchors)))
        totals = Totals.from_meta(meta)
        totals.merge(delta)
        new: dict[str, Any] = totals.to_meta() | {k: meta[k] for k in (PID, HOST, AT) if k in meta} | {PENDING: 0}
        self._side.put(rid, new)
        logger.warning(
            "anchor store totals: writer %s (pid %s on %s) stopped between writing a batch and its totals; "
            "counted the %d outcomes of that batch that were written",
            rid.removeprefix(STATS_PREFIX),
            meta.get(PID),
            meta.get(HOST),
            delta.outcomes,
        )
        return new

    def _describe(self, rid: str, meta: Mapping[str, Any]) -> str:
        at = meta.get(AT)
        age = f"{time.time() - at:.0f} s ago" if isinstance(at, int | float) else "at an unknown time"
        state = "gone: settled at the next open" if self._gone(meta) else "in flight, or gone elsewhere"
        return f"{rid.removeprefix(STATS_PREFIX)} (pid {meta.get(PID)} on {meta.get(HOST)}, {age}): {state}"

    def _check_anchor_count(self, records: Mapping[str, Mapping[str, Any]], totals: Totals) -> None:
        """Once per store object: the anchors the totals count against the collection's count (one round trip)."""
        self._anchors_checked = True
        base = records.get(STATS_BASE) or {}
        in_flight = any(_pending(m) for r, m in records.items() if r.startswith(STATS_PREFIX))
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
