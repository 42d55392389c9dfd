"""Reading the anchors collection in bulk: by id in chunks, or page by page (exports, samples, full scans)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from scope_shared.embeddings import Matrix
from scope_shared.store.chroma import ChromaConnection
from scope_shared.store.records import export_rows
from scope_shared.types import AnchorRecord

__all__ = ["export_all", "export_sample", "metadata_by_id", "scan_metadata"]

_PAGE = 2000
_ID_CHUNK = 1000


def metadata_by_id(conn: ChromaConnection, ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """The metadata of the anchors ``ids`` (those that exist), read in chunks."""
    col = conn.anchors()
    out: dict[str, Mapping[str, Any]] = {}

    def page(chunk: list[str]) -> Any:
        return conn.guard(lambda: col.get(ids=chunk, include=["metadatas"]), "read anchors")

    for i in range(0, len(ids), _ID_CHUNK):
        got = page(list(ids[i : i + _ID_CHUNK]))
        out.update((rid, meta or {}) for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=True))
    return out


def export_all(conn: ChromaConnection) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
    """Every anchor, its embedding and recorded input tokens (see ``AnchorStore.export``), page by page."""
    col = conn.anchors()
    pages = []
    for offset in itertools.count(0, _PAGE):

        def page_at(off: int = offset) -> Any:
            return col.get(include=["metadatas", "embeddings"], limit=_PAGE, offset=off)

        page = conn.guard(page_at, "export anchors")
        pages.append(page)
        if len(page["ids"] or []) < _PAGE:
            break
    return export_rows(pages)


def export_sample(
    conn: ChromaConnection, n: int, *, seed: int = 0
) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
    """Like :func:`export_all`, for ``n`` anchors drawn at random (all of them when there are fewer)."""
    col = conn.anchors()
    ids: list[str] = list(conn.guard(lambda: col.get(include=[]), "list anchors")["ids"])
    if len(ids) > n:
        rng = np.random.default_rng(seed)
        ids = [ids[i] for i in np.sort(rng.choice(len(ids), size=n, replace=False))]

    def page(chunk: list[str]) -> Any:
        return conn.guard(lambda: col.get(ids=chunk, include=["metadatas", "embeddings"]), "read anchors")

    return export_rows(page(ids[i : i + _ID_CHUNK]) for i in range(0, len(ids), _ID_CHUNK))


def scan_metadata(conn: ChromaConnection) -> Iterable[Mapping[str, Any]]:
    """Every anchor's metadata, page by page (lazily: nothing is read before the first item is asked for)."""
    col = conn.anchors()
    for offset in itertools.count(0, _PAGE):

        def page_at(off: int = offset) -> Any:
            return col.get(include=["metadatas"], limit=_PAGE, offset=off)

        page = conn.guard(page_at, "scan anchors")
        metas = page["metadatas"] or []
        yield from metas
        if len(metas) < _PAGE:
            return
