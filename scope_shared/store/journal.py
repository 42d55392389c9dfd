"""The batch journal of the running totals (:mod:`scope_shared.store.totals`): a batch whose writer stopped
between writing its anchors and writing its totals is still counted, exactly once.

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
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scope_shared.store.records import CHARS, CORRECT, IN_TOKENS
from scope_shared.store.state import SideRecords
from scope_shared.store.sums import STATS_PREFIX, Totals, counted

__all__ = [
    "AT",
    "HOST",
    "JOURNAL_STALE",
    "PENDING",
    "PID",
    "Journal",
    "ReadAnchors",
    "alive",
    "describe_journal",
    "pending_batch",
    "settle_journal",
    "writer_gone",
]

logger = logging.getLogger(__name__)

#: Metadata of a writer's record besides its sums: the journalled batch (its number; 0 for none: Chroma merges
#: metadata keys on upsert, so a key is never removed), who wrote it and when.
PENDING, PID, HOST, AT = "pending", "pid", "host", "at"
#: Seconds after which a journal whose writer cannot be seen to be gone is settled by others anyway. A batch
#: is two Chroma writes, each bounded by the store's timeout; this leaves a wide margin for clock skew.
JOURNAL_STALE = 600.0

ReadAnchors = Callable[[Sequence[str]], Mapping[str, Mapping[str, Any]]]


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
            new = {k: v for k, v in meta.items() if counted(k)}
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


def pending_batch(meta: Mapping[str, Any]) -> int:
    """The number of the batch a writer's record journals (0: none)."""
    value = meta.get(PENDING)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # not ours to signal, or no way to tell: alive as far as we know
        return True
    return True


def writer_gone(meta: Mapping[str, Any], *, stale: float) -> bool:
    """Whether the writer of a journalled record has stopped (or is presumed to have: its journal is older than
    ``stale`` seconds)."""
    at, pid, host = meta.get(AT), meta.get(PID), meta.get(HOST)
    if not isinstance(at, int | float) or time.time() - at > stale:
        return True
    return host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() and not alive(pid)


def settle_journal(side: SideRecords, rid: str, read: ReadAnchors, *, unreadable: set[str]) -> Mapping[str, Any] | None:
    """Settle the journal of writer record ``rid`` (its writer gone): count what landed of its batch into the
    record and clear the mark. Returns the record as it now is (None if it is missing, or its journal cannot be
    read: said once per record, which is added to ``unreadable``)."""
    got = side.read(rid)
    if got is None:
        return None
    meta, text = got
    if not pending_batch(meta):
        return meta  # settled meanwhile
    journal = Journal.from_text(text)
    if journal is None or journal.seq != pending_batch(meta):
        if rid not in unreadable:
            unreadable.add(rid)
            logger.warning(
                "the batch journal of %s cannot be read; its totals may be short: run scope-router store check",
                rid,
            )
        return None
    delta = journal.landed(read(list(journal.anchors)))
    totals = Totals.from_meta(meta)
    totals.merge(delta)
    new: dict[str, Any] = totals.to_meta() | {k: meta[k] for k in (PID, HOST, AT) if k in meta} | {PENDING: 0}
    side.put(rid, new)
    logger.warning(
        "anchor store totals: writer %s (pid %s on %s) stopped between writing a batch and its totals; "
        "counted the %d outcomes of that batch that were written",
        rid.removeprefix(STATS_PREFIX),
        meta.get(PID),
        meta.get(HOST),
        delta.outcomes,
    )
    return new


def describe_journal(rid: str, meta: Mapping[str, Any], *, stale: float) -> str:
    """A journalled writer record, described for :class:`~scope_shared.store.totals.StatsCheck`."""
    at = meta.get(AT)
    age = f"{time.time() - at:.0f} s ago" if isinstance(at, int | float) else "at an unknown time"
    state = "gone: settled at the next open" if writer_gone(meta, stale=stale) else "in flight, or gone elsewhere"
    return f"{rid.removeprefix(STATS_PREFIX)} (pid {meta.get(PID)} on {meta.get(HOST)}, {age}): {state}"
