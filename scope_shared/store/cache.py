"""The in-process cache of anchor records that ``AnchorStore.query`` reads through."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from scope_shared.types import AnchorOutcome

__all__ = ["Cached", "RecordCache"]

#: An anchor's question and its outcomes by model.
Cached = tuple[str, dict[str, AnchorOutcome]]


class RecordCache:
    """Anchors' records, each kept ``ttl`` seconds, the least recently used dropped past ``size`` (0: none kept)."""

    def __init__(self, *, size: int, ttl: float) -> None:
        self._size = size
        self._ttl = ttl
        self._items: OrderedDict[str, tuple[float, Cached]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def hits(self, ids: Iterable[str], now: float) -> dict[str, Cached]:
        """The records of ``ids`` cached less than ``ttl`` seconds before ``now``."""
        found: dict[str, Cached] = {}
        with self._lock:
            for rid in ids:
                hit = self._items.get(rid)
                if hit is not None and now - hit[0] < self._ttl:
                    self._items.move_to_end(rid)
                    found[rid] = hit[1]
        return found

    def put(self, records: Mapping[str, Cached], now: float) -> None:
        """Keep ``records``, read at ``now``."""
        if not self._size:
            return
        with self._lock:
            for rid, rec in records.items():
                self._items[rid] = (now, rec)
                self._items.move_to_end(rid)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def drop(self, ids: Iterable[str]) -> None:
        """Forget ``ids`` (written: the next read goes to the store)."""
        with self._lock:
            for rid in ids:
                self._items.pop(rid, None)
