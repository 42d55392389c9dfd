"""``AnchorStore``: anchor questions, their embeddings and every model's recorded outcomes, on Chroma.

The same class runs embedded (a directory), in memory, or against a Chroma server (``chroma run``). The
record format is :mod:`scope_shared.store.records`; the running totals behind :meth:`AnchorStore.model_stats`
are :mod:`scope_shared.store.totals`; the client and index settings are :mod:`scope_shared.store.chroma`;
the record cache is :mod:`scope_shared.store.cache`; bulk reads are :mod:`scope_shared.store.pages`.

One job, hence the length: ``AnchorStore`` is the store's one public face (its backends and settings
documented and checked at construction, the batched write, the nearest-first query); what it delegates
lives in the modules named above.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scope_shared.data import RowCheck, as_outcome
from scope_shared.embeddings import CachedEmbedder, Embedder, Matrix, as_embedder
from scope_shared.errors import ConfigError, DataError, EmptyStoreError
from scope_shared.store.cache import Cached, RecordCache
from scope_shared.store.chroma import ChromaConnection, check_hnsw, check_verify
from scope_shared.store.pages import export_all, export_sample, metadata_by_id, scan_metadata
from scope_shared.store.records import (
    QUESTION,
    add_to_meta,
    anchor_id,
    new_meta,
    outcomes_of,
    question_of,
    without_question,
)
from scope_shared.store.state import SideRecords
from scope_shared.store.totals import RunningTotals, StatsCheck
from scope_shared.types import AnchorRecord, ModelStats, Outcome, estimate_tokens

__all__ = ["DEFAULT_COLLECTION", "AddReport", "AnchorStore"]

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "scope-anchors"

@dataclass(frozen=True, slots=True)
class AddReport:
    """What :meth:`AnchorStore.add` wrote."""

    outcomes: int
    anchors_new: int
    anchors_updated: int
    batches: int


class AnchorStore:
    """Anchor questions with each model's outcomes, stored in a Chroma collection.

    Choose the backend with the keyword arguments (at most one of ``path``, ``host``, ``client``):

    - ``AnchorStore()`` - in memory, private to this object;
    - ``AnchorStore(path="anchors/")`` - embedded and persistent;
    - ``AnchorStore(host="chroma.internal", port=443, ssl=True, token=..., verify="ca.pem")`` - a Chroma
      server, here behind an authenticating TLS proxy (``chroma run`` itself checks no token: see
      docs/chroma-server.md);
    - ``AnchorStore(client=chromadb_client)`` - a client you built (used as it is: no timeout is added).

    Args:
        embedder: an :class:`~scope_shared.embeddings.Embedder` or anything :func:`as_embedder` accepts;
            defaults to all-MiniLM-L6-v2, loaded on first use.
        collection: the Chroma collection name.
        headers: extra HTTP headers for a server (e.g. auth); never logged.
        token: a token sent as ``Authorization: Bearer <token>`` (for the proxy in front of the server;
            ``chroma run`` checks none); never logged. Sending it (or a credential header) without ``ssl``
            to a host other than this one logs a WARNING.
        verify: TLS verification with ``ssl=True``: True (the system's CAs), the path of a CA bundle (PEM)
            for a private CA, or False (no verification; warned about).
        timeout: seconds a server has to answer each request (None: wait forever, chromadb's default). A
            server that does not answer in time counts as down: routing degrades instead of hanging. Raise
            it if a very large collection takes longer to load after the server starts.
        connect_timeout: seconds to establish a connection to a server.
        batch_size: outcomes written per atomic batch in :meth:`add`.
        stats_ttl: seconds the per-model statistics are cached before being recomputed (writes made
            through this object refresh them at once; this bounds staleness from other processes).
        record_cache: anchors (question and outcomes) kept in memory for :meth:`query`; 0 turns it off.
        embed_tail_chars: embed only the last this-many characters of a text (None: all of it). Prompts
            put the question last, often after shared instructions or few-shot examples, and small
            sentence encoders read only their first ~256 word pieces; embedding the tail keeps the part
            that tells questions apart. Stored with the collection: anchors and queries use the same.
        embed_cache: recent texts whose vectors are kept in memory (0 turns it off). Recording the
            outcome of a routed call reuses the vector its routing computed instead of embedding the
            prompt again, and repeated prompts are embedded once.
        hnsw: Chroma's HNSW index settings: ``ef_search`` (candidates kept while searching; Chroma's default
            100; higher finds more of the true nearest anchors, at some latency), ``ef_construction``,
            ``max_neighbors``, ``sync_threshold``, ``resize_factor``. A new collection is created with them.
            On an existing one, ``ef_search``, ``sync_threshold`` and ``resize_factor`` are changed to the
            values given, for every process that loads the index afterwards (Chroma keeps the settings of an
            index a process has already loaded); ``ef_construction`` and ``max_neighbors`` are fixed when the
            index is built and must match.
    """

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        host: str | None = None,
        port: int = 8000,
        ssl: bool = False,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        verify: bool | str | Path = True,
        timeout: float | None = 10.0,
        connect_timeout: float = 5.0,
        client: Any = None,
        embedder: Any = None,
        collection: str | None = None,
        batch_size: int = 512,
        stats_ttl: float = 60.0,
        record_cache: int = 20_000,
        embed_tail_chars: int | None = 1000,
        embed_cache: int = 1024,
        hnsw: Mapping[str, float] | None = None,
    ) -> None:
        chosen = [name for name, v in (("path", path), ("host", host), ("client", client)) if v]
        if len(chosen) > 1:
            msg = f"choose one backend; got {chosen} (path=embedded, host=server, client=your own)"
            raise ConfigError(msg)
        for name, value in (("record_cache", record_cache), ("embed_cache", embed_cache)):
            if value < 0:
                msg = f"{name} must be >= 0, got {value}"
                raise ConfigError(msg)
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ConfigError(msg)
        if embed_tail_chars is not None and embed_tail_chars < 16:
            msg = f"embed_tail_chars must be >= 16 or None, got {embed_tail_chars}"
            raise ConfigError(msg)
        if not 0 < port < 65536:
            msg = f"port must be in 1..65535, got {port}"
            raise ConfigError(msg)
        for name, secs in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if secs is None and name == "timeout":
                continue
            if isinstance(secs, bool) or not isinstance(secs, int | float) or not 0 < secs < float("inf"):
                msg = f"{name} must be a positive number of seconds, got {secs!r}"
                raise ConfigError(msg)
        verify = check_verify(verify, ssl=ssl, host=host)
        self._embedder = as_embedder(embedder)
        self._embed: Embedder = CachedEmbedder(self._embedder, maxsize=embed_cache) if embed_cache else self._embedder
        self._tail = embed_tail_chars
        if collection is None:
            in_memory = not (path or host or client)
            collection = f"scope-mem-{uuid.uuid4().hex[:12]}" if in_memory else DEFAULT_COLLECTION
        self._conn = ChromaConnection(
            path=path,
            host=host,
            port=port,
            ssl=ssl,
            headers=headers,
            token=token,
            verify=verify,
            timeout=timeout,
            connect_timeout=connect_timeout,
            client=client,
            collection=collection,
            embedder_id=self._embedder_id,
            hnsw=check_hnsw(hnsw or {}),
        )
        self._side = SideRecords(self._conn)
        self._totals = RunningTotals(
            self._side, count=self.count, scan=self.iter_metadata, read=self._metadata_by_id, ttl=stats_ttl
        )
        self._batch_size = batch_size
        self._cache = RecordCache(size=record_cache, ttl=stats_ttl)
        self._lock = threading.RLock()
        self._writes = 0

    # -- identity ------------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """``memory``, ``persistent``, ``http`` or ``client``."""
        return self._conn.backend

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def collection_name(self) -> str:
        return self._conn.name

    @property
    def identity(self) -> str | None:
        """Names this store across processes (backend, location, collection); None for a private in-memory one."""
        if self.backend in ("memory", "client"):
            return None
        where = str(self._conn.path.resolve()) if self._conn.path is not None else self._conn.where()
        return f"{self.backend}:{where}:{self._conn.name}"

    @property
    def _embedder_id(self) -> str:
        return self._embedder.name + (f"|tail{self._tail}" if self._tail else "")

    def __repr__(self) -> str:
        return f"AnchorStore(backend={self.backend!r}, at={self._conn.where()!r}, collection={self._conn.name!r})"

    def _col(self) -> Any:
        return self._conn.anchors()

    # -- writing -------------------------------------------------------------------------------

    def add(
        self,
        outcomes: Iterable[Outcome | Mapping[str, Any]],
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> AddReport:
        """Write outcomes, merging them into existing anchors, batch by batch.

        Each batch is validated whole before anything is written: a malformed row rejects its batch with
        a :class:`DataError` naming the row (earlier batches stay written, and the error says how many).
        New anchors are embedded and written with their vectors; anchors already stored get a
        metadata-only update (their vectors are neither read nor rewritten). A batch holding both is two
        Chroma writes, so a store failure between them leaves part of it written; adding it again is
        idempotent.

        Args:
            outcomes: :class:`Outcome` objects or raw rows in the canonical column format.
            batch_size: outcomes per batch (default: the store's).
            progress: show a progress bar; ``None`` shows one for long loads on a terminal.
        """
        size = batch_size or self._batch_size
        items = outcomes if isinstance(outcomes, Sequence) else list(outcomes)
        total = len(items)
        bar = None
        if progress or (progress is None and total > 5 * size):
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="outcome", desc="anchors", disable=None if progress is None else False)
        new = updated = batches = done = 0
        try:
            for start in range(0, total, size):
                chunk = items[start : start + size]
                try:
                    n_new, n_upd = self._add_batch(chunk, offset=start)
                except DataError as exc:
                    msg = f"{exc} (batch rejected; {done} outcomes from earlier batches were written)"
                    raise DataError(msg) from None
                new, updated, batches, done = new + n_new, updated + n_upd, batches + 1, done + len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return AddReport(outcomes=done, anchors_new=new, anchors_updated=updated, batches=batches)

    def _batch_records(self, chunk: Sequence[Outcome | Mapping[str, Any]], offset: int) -> dict[str, dict[str, Any]]:
        """The anchors' metadata a batch writes, by anchor id; :class:`DataError` for a bad or conflicting row."""
        records: dict[str, dict[str, Any]] = {}
        check = RowCheck()
        id_of: dict[str, str] = {}  # query text -> anchor id, hashed once per batch
        for i, item in enumerate(chunk):
            where = f"row {offset + i}"
            out = as_outcome(item, where=where)
            check(out, where)
            aid = id_of.get(out.query) or id_of.setdefault(out.query, anchor_id(out.query))
            add_to_meta(records.setdefault(aid, new_meta(out.query)), out)
        return records

    def _add_batch(self, chunk: Sequence[Outcome | Mapping[str, Any]], *, offset: int) -> tuple[int, int]:
        records = self._batch_records(chunk, offset)
        if not records:
            return 0, 0
        ids = list(records)
        with self._lock:
            col = self._col()
            self._totals.ensure_base()
            got = self._conn.guard(lambda: col.get(ids=ids, include=["metadatas"]), "read anchors")
            before = dict(zip(got["ids"], got["metadatas"] or [], strict=True))
            fresh = [rid for rid in ids if rid not in before]
            stored = [rid for rid in ids if rid in before]
            vectors = self.embed([records[rid][QUESTION] for rid in fresh]) if fresh else None
            self._totals.will_write(records, before)  # a journal: totals stay right if we stop mid-batch
            try:
                if fresh:
                    self._conn.guard(
                        lambda: col.upsert(
                            ids=fresh,
                            embeddings=np.asarray(vectors, dtype=np.float32),
                            metadatas=[records[rid] for rid in fresh],
                        ),
                        "write anchors",
                    )
                if stored:
                    # Metadata only: Chroma merges the keys into the record and leaves its vector in the index.
                    self._conn.guard(
                        lambda: col.update(ids=stored, metadatas=[without_question(records[rid]) for rid in stored]),
                        "update anchors",
                    )
            except BaseException:
                self._totals.interrupted()
                raise
            finally:  # even a half-written batch: the next read of these anchors goes to the store (and its
                # journal is settled at the next write or statistics refresh)
                self._cache.drop(ids)
            self._writes += 1
            self._totals.wrote(records, before)
        return len(fresh), len(ids) - len(fresh)

    # -- reading -------------------------------------------------------------------------------

    def count(self) -> int:
        """Number of anchor questions."""
        col = self._col()
        return int(self._conn.guard(col.count, "count anchors"))

    def require_anchors(self) -> int:
        """The number of anchors; :class:`EmptyStoreError` when the store holds none."""
        count = self.count()
        if count == 0:
            msg = (
                f"anchor store {self._conn.name!r} at {self._conn.where()} is empty; "
                "load outcomes first (scope-router ingest or AnchorStore.add)"
            )
            raise EmptyStoreError(msg)
        return count

    @property
    def version(self) -> str:
        """Changes whenever this object writes, and (within ``stats_ttl``) when any process records outcomes.

        Built from the cached running totals: reading it costs no round trip on the routing path.
        """
        outcomes = sum(st.n for st in self.model_stats().values())
        return f"{self._conn.name}:{outcomes}:{self._writes}"

    def embed(self, texts: Sequence[str]) -> Matrix:
        """Embed texts as the store does (its embedder, over each text's last ``embed_tail_chars``)."""
        if self._tail:
            texts = [t[-self._tail :] for t in texts]
        return self._embed.embed(texts)

    def query(
        self,
        embeddings: Matrix,
        *,
        k: int,
        fill: int | None = None,
        models: Collection[str] | None = None,
    ) -> list[tuple[AnchorRecord, ...]]:
        """The ``k`` most similar anchors of each embedding, most similar first.

        The vector search returns ids and distances only; each anchor's question and outcomes come from an
        in-process cache (``record_cache`` anchors, each kept ``stats_ttl`` seconds, dropped at once when
        this object writes it), and what is missing from one ``get`` by id. Reading records is most of a
        Chroma query's cost on a large collection (about 1 ms a record at 100k anchors, against ~3 ms for
        the whole search), so neighbourhoods that recur cost one search.

        With ``fill`` and ``models``, records are read nearest first: the nearest ``fill`` of each query,
        then the rest of its ``k`` only where one of ``models`` has fewer than ``fill`` outcomes among them.
        Estimators that use each model's ``fill`` nearest outcomes see the same evidence either way; when
        every model has an outcome on every anchor, a third of the records are read.
        """
        if k < 1:
            msg = f"k must be >= 1, got {k}"
            raise ConfigError(msg)
        if len(embeddings) == 0:
            return []
        col = self._col()
        res = self._conn.guard(
            lambda: col.query(
                query_embeddings=np.asarray(embeddings, dtype=np.float32), n_results=k, include=["distances"]
            ),
            "query anchors",
        )
        hits: list[list[tuple[str, float]]] = [
            list(zip(ids, dists, strict=True)) for ids, dists in zip(res["ids"], res["distances"], strict=True)
        ]
        first = len(max(hits, key=len, default=[])) if fill is None or models is None else max(1, fill)
        found = self._records_by_id({rid for row in hits for rid, _ in row[:first]})
        wanted = list(models or ())

        def complete(row: list[tuple[str, float]]) -> bool:
            outcomes = [found[rid][1] for rid, _ in row[:first] if rid in found]
            return all(sum(1 for o in outcomes if m in o) >= first for m in wanted)

        cut = [row[:first] if len(row) > first and complete(row) else row for row in hits]
        rest = {rid for row in cut if len(row) > first for rid, _ in row[first:]} - found.keys()
        if rest:
            found |= self._records_by_id(rest)
        return [
            tuple(
                AnchorRecord(
                    anchor_id=rid,
                    question=found[rid][0],
                    similarity=max(-1.0, min(1.0, 1.0 - float(dist))),
                    outcomes=found[rid][1],
                )
                for rid, dist in row
                if rid in found  # deleted between the search and the read
            )
            for row in cut
        ]

    def _records_by_id(self, ids: set[str]) -> dict[str, Cached]:
        now = time.monotonic()
        found = self._cache.hits(ids, now)
        missing = [rid for rid in ids if rid not in found]
        if missing:
            col = self._col()
            got = self._conn.guard(lambda: col.get(ids=missing, include=["metadatas"]), "read anchors")
            fresh = {
                rid: (question_of(meta), outcomes_of(meta or {}))
                for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=True)
            }
            found |= fresh
            self._cache.put(fresh, now)
        return found

    def _metadata_by_id(self, ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        return metadata_by_id(self._conn, ids)

    def get(self, ids: Sequence[str]) -> dict[str, AnchorRecord]:
        """Anchors by id (similarity set to 1.0)."""
        col = self._col()
        res = self._conn.guard(lambda: col.get(ids=list(ids), include=["metadatas"]), "read anchors")
        return {
            rid: AnchorRecord(
                anchor_id=rid, question=question_of(meta), similarity=1.0, outcomes=outcomes_of(meta or {})
            )
            for rid, meta in zip(res["ids"], res["metadatas"], strict=True)
        }

    def export(self) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
        """Every anchor with its embedding and recorded input tokens, for estimators that fit on the store.

        Returns the anchors (similarity set to 1.0), their embeddings as one row-aligned matrix, and each
        anchor's recorded input tokens (None where none was recorded). Reads page by page.
        """
        return export_all(self._conn)

    def sample(self, n: int, *, seed: int = 0) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
        """Like :meth:`export`, for ``n`` anchors drawn at random (all of them when the store holds fewer)."""
        return export_sample(self._conn, n, seed=seed)

    def iter_metadata(self) -> Iterable[Mapping[str, Any]]:
        """Every anchor's metadata, page by page."""
        return scan_metadata(self._conn)

    # -- statistics and state ------------------------------------------------------------------

    def model_stats(self, *, refresh: bool = False) -> dict[str, ModelStats]:
        """Each model's overall record over all anchors (cached for ``stats_ttl`` seconds).

        Read from running totals in the side collection ``<collection>.state`` (one small record per writer,
        kept by :meth:`add`), so it costs one small read however many anchors there are. A writer that stops
        between writing anchors and its totals leaves a journal, settled by itself or, once it is gone, by the
        next store object that opens the store (see :mod:`scope_shared.store.totals`). Totals can still drift
        if two writers record the same (anchor, model) at the same instant: :meth:`check_stats` compares them
        with a full scan, :meth:`rebuild_stats` recounts them.
        """
        return self._totals.stats(refresh=refresh)

    def check_stats(self) -> StatsCheck:
        """The running totals against a full scan of the anchors (``scope-router store check``); writes nothing.

        Outcomes written by other processes while it scans show as drift: run it while nothing writes.
        """
        return self._totals.check()

    def rebuild_stats(self) -> dict[str, ModelStats]:
        """Recount every model's record from the anchors themselves (a full scan) and reset the totals.

        For a store whose totals drifted (see :meth:`model_stats`); run it while nothing else writes.
        """
        with self._lock:
            return self._totals.rebuild()

    @property
    def tokens_per_char(self) -> float:
        """Input tokens per character, from the anchors' recorded counts (refreshed with the statistics)."""
        return self._totals.tokens_per_char

    def estimate_input_tokens(self, text: str) -> float:
        """Input tokens of ``text``, from the anchors' recorded tokens-per-character ratio."""
        return estimate_tokens(text, self._totals.tokens_per_char)

    def save_state(self, key: str, value: str) -> None:
        """Keep a text (e.g. an estimator's fitted parameters as JSON) with the store, for every process."""
        self._side.save_text(key, value)

    def load_state(self, key: str) -> str | None:
        """The text last saved under ``key`` (None if none)."""
        return self._side.load_text(key)
