"""The side collection ``<collection>.state``: small records beside the anchors.

It holds the running outcome totals (:mod:`scope_shared.store.totals`, records ``stats:*``) and texts that
estimators keep with the store, such as a fitted estimator's parameters (records ``state:<key>``), so every
process that opens the store reads them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from scope_shared.store.chroma import ChromaConnection

__all__ = ["SideRecords"]

_STATE_KEY = "state:"
#: The side collection holds no searchable vectors; Chroma still wants one per record.
_VECTOR = [1.0]


class SideRecords:
    """Reads and writes the side collection's records."""

    def __init__(self, conn: ChromaConnection) -> None:
        self._conn = conn

    def put(self, rid: str, meta: Mapping[str, Any], document: str = "") -> None:
        side = self._conn.side()
        self._conn.guard(
            lambda: side.upsert(
                ids=[rid], embeddings=[_VECTOR], metadatas=[dict(meta) or {"empty": True}], documents=[document]
            ),
            "write anchor state",
        )

    def metadata(self, ids: Sequence[str] | None = None) -> dict[str, Mapping[str, Any]]:
        """Records' metadata by id (every record when ``ids`` is None)."""
        side = self._conn.side()
        kwargs: dict[str, Any] = {"include": ["metadatas"]}
        if ids is not None:
            kwargs["ids"] = list(ids)
        got = self._conn.guard(lambda: side.get(**kwargs), "read anchor totals")
        return {rid: meta or {} for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=True)}

    def read(self, rid: str) -> tuple[Mapping[str, Any], str] | None:
        """One record's metadata and document (None if there is no such record)."""
        side = self._conn.side()
        got = self._conn.guard(lambda: side.get(ids=[rid], include=["metadatas", "documents"]), "read anchor totals")
        if not got["ids"]:
            return None
        return (got["metadatas"] or [{}])[0] or {}, (got["documents"] or [""])[0] or ""

    def delete(self, ids: Sequence[str]) -> None:
        side = self._conn.side()
        self._conn.guard(lambda: side.delete(ids=list(ids)), "reset anchor totals")

    def save_text(self, key: str, value: str) -> None:
        """Keep a text under ``key`` (e.g. an estimator's fitted parameters as JSON), for every process."""
        self.put(_STATE_KEY + key, {"saved_at": time.time()}, value)

    def load_text(self, key: str) -> str | None:
        """The text last saved under ``key`` (None if none)."""
        side = self._conn.side()
        got = self._conn.guard(lambda: side.get(ids=[_STATE_KEY + key], include=["documents"]), "read anchor state")
        docs = got["documents"] or []
        return docs[0] if got["ids"] and docs else None
