"""Running outcome totals: each model's overall record, read in one small round trip however big the store.

Every writer keeps the sums of what it wrote (per model: outcomes, correct, outcomes with tokens, summed log
tokens; and the anchors' input tokens and characters) in its own record ``stats:<writer>`` of the side
collection; ``stats:base`` holds what was there before totals existed or at the last rebuild. The statistics
are the sum of all records. Totals drift only if a writer dies between writing anchors and its totals, or two
writers record the same (anchor, model) at the same instant; :meth:`RunningTotals.rebuild` recounts them from
the anchors.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scope_shared.errors import StoreUnavailableError
from scope_shared.store.records import CHARS, CORRECT, IN_TOKENS, TOKENS, log_tokens
from scope_shared.store.state import SideRecords
from scope_shared.types import DEFAULT_TOKENS_PER_CHAR, ModelStats

__all__ = ["RunningTotals", "Totals"]

logger = logging.getLogger(__name__)

STATS_PREFIX = "stats:"
STATS_BASE = STATS_PREFIX + "base"
_FIELDS = ("n", "c", "nt", "lt")


@dataclass(slots=True)
class Totals:
    """Sums behind each model's statistics: per model (n, correct, n with tokens, summed log tokens)."""

    models: dict[str, list[float]] = field(default_factory=dict)
    in_tokens: float = 0.0
    in_chars: float = 0.0

    def add_meta(self, meta: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
        """Count an anchor's metadata ``meta`` merged over ``old`` (its metadata before the write, if any)."""
        old = old or {}
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
        self.in_tokens += other.in_tokens
        self.in_chars += other.in_chars

    def to_meta(self) -> dict[str, float]:
        meta: dict[str, float] = {"in_tokens": self.in_tokens, "in_chars": self.in_chars}
        for model, vals in self.models.items():
            meta |= {f"{name}::{model}": v for name, v in zip(_FIELDS, vals, strict=True)}
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Totals:
        out = cls(in_tokens=float(meta.get("in_tokens", 0.0)), in_chars=float(meta.get("in_chars", 0.0)))
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


class RunningTotals:
    """This store object's view of the totals: its own sums, and the cached statistics of all writers.

    Args:
        side: the side collection's records.
        count: counts the anchors (a store built before totals existed is scanned once).
        scan: every anchor's metadata, for a full recount.
        ttl: seconds the statistics are cached (writes through this object refresh them at once).
    """

    def __init__(
        self,
        side: SideRecords,
        *,
        count: Callable[[], int],
        scan: Callable[[], Iterable[Mapping[str, Any]]],
        ttl: float,
    ) -> None:
        self._side = side
        self._count = count
        self._scan = scan
        self._ttl = ttl
        self._lock = threading.RLock()
        self._writer = f"{STATS_PREFIX}{uuid.uuid4().hex}"
        self._mine = Totals()  # what this object has written, kept in its own record
        self._mine_saved = True
        self._base_checked = False
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
            self.ensure_base()
            totals = Totals()
            for rid, meta in self._side.metadata().items():
                if rid.startswith(STATS_PREFIX) and rid != self._writer:
                    totals.merge(Totals.from_meta(meta))
            totals.merge(self._mine)  # ours, including totals not yet saved after a failed write
            stats = self._set(totals)
            if not self._mine_saved:
                with contextlib.suppress(StoreUnavailableError):
                    self._save()
            return stats

    def rebuild(self) -> dict[str, ModelStats]:
        """Recount from the anchors (a full scan) and reset every writer's totals to that count."""
        with self._lock:
            totals = Totals.count(self._scan())
            stale = [rid for rid in self._side.metadata() if rid.startswith(STATS_PREFIX) and rid != STATS_BASE]
            self._side.put(STATS_BASE, totals.to_meta())
            if stale:
                self._side.delete(stale)
            self._mine = Totals()
            self._mine_saved = True
            self._base_checked = True
            return self._set(totals)

    def ensure_base(self) -> None:
        """Give a store its base totals once: zero for a new one, a full count for one built before them."""
        with self._lock:
            if self._base_checked:
                return
            if STATS_BASE not in self._side.metadata([STATS_BASE]):
                if self._count() > 0:
                    logger.info("anchor store has no running totals yet: counting its anchors once")
                    base = Totals.count(self._scan())
                else:
                    base = Totals()
                self._side.put(STATS_BASE, base.to_meta())
            self._base_checked = True

    def wrote(self, records: Mapping[str, Mapping[str, Any]], before: Mapping[str, Mapping[str, Any]]) -> None:
        """Count anchors just written (``before``: the metadata they had, for those that existed)."""
        with self._lock:
            for rid, meta in records.items():
                self._mine.add_meta(meta, before.get(rid))
            self._mine_saved = False
            self._stats = None
            self._save()

    def _save(self) -> None:
        self._side.put(self._writer, self._mine.to_meta())
        self._mine_saved = True

    def _set(self, totals: Totals) -> dict[str, ModelStats]:
        self._stats = totals.stats()
        if totals.in_chars > 0 and totals.in_tokens > 0:
            self._tokens_per_char = totals.in_tokens / totals.in_chars
        self._stats_at = time.monotonic()
        return self._stats
