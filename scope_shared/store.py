"""The anchor store: anchor questions, their embeddings and every model's recorded outcomes, on Chroma.

One Chroma record per anchor question (its id is a hash of the text, so the same text is one anchor).
Outcomes live in the record's metadata, one key per model and field (``c::<model>`` correctness,
``t::<model>`` output tokens), so adding a new model's outcomes merges into existing records in place,
re-adding an outcome is idempotent, and writers in several processes never overwrite each other's models.
The question text is the metadata key ``question``, not the Chroma document: Chroma indexes every document
for full-text search, which halves write throughput and which routing never uses. Stores written before
keep their questions in the documents; both are read.

The same class runs embedded (a directory), in memory, or against a Chroma server (``chroma run``).
This is the only module that knows Chroma's API.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import SecretStr

from scope_shared.embeddings import CachedEmbedder, Embedder, Matrix, as_embedder
from scope_shared.errors import ConfigError, DataError, EmptyStoreError, StoreUnavailableError
from scope_shared.estimators.base import AnchorOutcome, AnchorRecord, ModelStats
from scope_shared.types import Outcome

__all__ = ["AddReport", "AnchorStore", "anchor_id"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

CORRECT = "c::"
TOKENS = "t::"
QUESTION = "question"
DEFAULT_COLLECTION = "scope-anchors"
#: Tokens per character when no anchor records its input tokens (about 4 characters a token in English).
DEFAULT_TOKENS_PER_CHAR = 0.25
_PAGE = 2000
_ID_CHUNK = 1000
#: The side collection ``<collection>.state`` holds the running outcome totals and fitted estimator state.
STATE_SUFFIX = ".state"
STATS_PREFIX = "stats:"
STATS_BASE = STATS_PREFIX + "base"
_STATE_KEY = "state:"
_STATE_VECTOR = [1.0]
#: Chroma HNSW settings an existing collection can change, and the ones fixed when it is created.
HNSW_UPDATABLE = ("ef_search", "sync_threshold", "resize_factor")
HNSW_FIXED = ("ef_construction", "max_neighbors")


@dataclass(slots=True)
class _Totals:
    """Running sums behind :meth:`AnchorStore.model_stats`: per model (n, correct, n_tokens, log tokens)."""

    models: dict[str, list[float]] = field(default_factory=dict)
    in_tokens: float = 0.0
    in_chars: float = 0.0

    def add_meta(self, meta: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
        """Count ``meta`` (merged over ``old``, the record's metadata before the write, if it existed)."""
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
                acc[3] += _log_tokens(value) - (_log_tokens(prev) if prev is not None else 0.0)
        in_tok, chars = meta.get("in_tok"), meta.get("chars", old.get("chars"))
        if isinstance(in_tok, int | float) and isinstance(chars, int | float) and chars > 0:
            prev = old.get("in_tok")
            if isinstance(prev, int | float):
                self.in_tokens += float(in_tok) - float(prev)
            else:
                self.in_tokens += float(in_tok)
                self.in_chars += float(chars)

    def merge(self, other: _Totals) -> None:
        for model, vals in other.models.items():
            acc = self.models.setdefault(model, [0.0, 0.0, 0.0, 0.0])
            for i, v in enumerate(vals):
                acc[i] += v
        self.in_tokens += other.in_tokens
        self.in_chars += other.in_chars

    def to_meta(self) -> dict[str, float]:
        meta: dict[str, float] = {"in_tokens": self.in_tokens, "in_chars": self.in_chars}
        for model, (n, c, nt, lt) in self.models.items():
            meta |= {f"n::{model}": n, f"c::{model}": c, f"nt::{model}": nt, f"lt::{model}": lt}
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> _Totals:
        out = cls(in_tokens=float(meta.get("in_tokens", 0.0)), in_chars=float(meta.get("in_chars", 0.0)))
        for key, value in meta.items():
            field_name, sep, model = key.partition("::")
            if sep and field_name in ("n", "c", "nt", "lt"):
                acc = out.models.setdefault(model, [0.0, 0.0, 0.0, 0.0])
                acc[("n", "c", "nt", "lt").index(field_name)] = float(value)
        return out


def _check_hnsw(hnsw: Mapping[str, float]) -> dict[str, float]:
    known = (*HNSW_UPDATABLE, *HNSW_FIXED)
    unknown = sorted(set(hnsw) - set(known))
    if unknown:
        msg = f"unknown hnsw settings {unknown}; known: {list(known)} (the space is always cosine)"
        raise ConfigError(msg)
    out: dict[str, float] = {}
    for key, value in hnsw.items():
        if key == "resize_factor":
            if not (isinstance(value, int | float) and value >= 1.0):
                msg = f"hnsw resize_factor must be a number >= 1, got {value!r}"
                raise ConfigError(msg)
            out[key] = float(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"hnsw {key} must be an integer >= 1, got {value!r}"
                raise ConfigError(msg)
            out[key] = value
    return out


def anchor_id(query: str) -> str:
    """The record id of an anchor question: a hash of its exact text."""
    return "a-" + hashlib.sha256(query.encode("utf-8", "surrogatepass")).hexdigest()[:32]


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
    - ``AnchorStore(host="chroma.internal", port=8000, ssl=True, token=...)`` - a Chroma server;
    - ``AnchorStore(client=chromadb_client)`` - a client you built.

    Args:
        embedder: an :class:`~scope_shared.embeddings.Embedder` or anything :func:`as_embedder` accepts;
            defaults to all-MiniLM-L6-v2, loaded on first use.
        collection: the Chroma collection name.
        headers: extra HTTP headers for a server (e.g. auth); never logged.
        token: a Chroma auth token, sent as ``Authorization: Bearer <token>``; never logged.
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
        self._hnsw = _check_hnsw(hnsw or {})
        self._path = Path(path) if path else None
        self._host = host
        self._port = port
        self._ssl = ssl
        self._headers = {k: SecretStr(v) for k, v in (headers or {}).items()}
        self._token = SecretStr(token) if token else None
        self._client = client
        self._backend = "http" if host else "persistent" if path else "client" if client else "memory"
        self._embedder = as_embedder(embedder)
        self._embed: Embedder = CachedEmbedder(self._embedder, maxsize=embed_cache) if embed_cache else self._embedder
        if collection is None:
            in_memory = not (path or host or client)
            collection = f"scope-mem-{uuid.uuid4().hex[:12]}" if in_memory else DEFAULT_COLLECTION
        self._collection_name = collection
        self._batch_size = batch_size
        self._tail = embed_tail_chars
        self._stats_ttl = stats_ttl
        self._cache_size = record_cache
        self._cache: OrderedDict[str, tuple[float, tuple[str, dict[str, AnchorOutcome]]]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._collection: Any = None
        self._lock = threading.RLock()
        self._writes = 0
        self._stats: dict[str, ModelStats] | None = None
        self._stats_at = 0.0
        self._tokens_per_char = DEFAULT_TOKENS_PER_CHAR
        self._state_collection: Any = None
        self._writer = f"{STATS_PREFIX}{uuid.uuid4().hex}"
        self._mine = _Totals()  # what this object has written, kept in its own record of the side collection
        self._mine_saved = True
        self._base_checked = False

    # -- construction helpers ------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """``memory``, ``persistent``, ``http`` or ``client``."""
        return self._backend

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def _embedder_id(self) -> str:
        return self._embedder.name + (f"|tail{self._tail}" if self._tail else "")

    def __repr__(self) -> str:
        where = {"http": f"{self._host}:{self._port}", "persistent": str(self._path)}.get(
            self.backend, self.backend
        )
        return f"AnchorStore(backend={self.backend!r}, at={where!r}, collection={self._collection_name!r})"

    def _build_client(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        if self._host:
            headers = {k: v.get_secret_value() for k, v in self._headers.items()}
            if self._token is not None:
                headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
            return chromadb.HttpClient(
                host=self._host, port=self._port, ssl=self._ssl, headers=headers, settings=settings
            )
        if self._path:
            self._path.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(self._path), settings=settings)
        return chromadb.EphemeralClient(settings=settings)

    def _col(self) -> Any:
        if self._collection is not None:
            return self._collection
        with self._lock:
            if self._collection is None:

                def connect() -> Any:
                    if self._client is None:
                        self._client = self._build_client()
                    return self._client.get_or_create_collection(
                        self._collection_name,
                        embedding_function=None,
                        configuration={"hnsw": {"space": "cosine", **self._hnsw}},
                        metadata={"embedder": self._embedder_id, "schema": 1},
                    )

                col = self._guard(connect, "open the collection")
                stored = (col.metadata or {}).get("embedder")
                if stored and stored != self._embedder_id:
                    msg = (
                        f"collection {self._collection_name!r} was built with embedder {stored!r}, "
                        f"not {self._embedder_id!r}; open it with the same embedder (and embed_tail_chars) "
                        "or use a new collection"
                    )
                    raise ConfigError(msg)
                self._apply_hnsw(col)
                self._collection = col
        return self._collection

    def _apply_hnsw(self, col: Any) -> None:
        """Bring an opened collection's index settings to the ``hnsw`` given (a created one has them)."""
        if not self._hnsw:
            return
        current = dict((getattr(col, "configuration", None) or {}).get("hnsw") or {})
        fixed = {k: current.get(k) for k, v in self._hnsw.items() if k in HNSW_FIXED and current.get(k) != v}
        if fixed:
            have = ", ".join(f"{k}={old}" for k, old in fixed.items())
            msg = (
                f"collection {self._collection_name!r} was built with {have}; {', '.join(fixed)} cannot change "
                "on a built index: drop them from hnsw or use a new collection"
            )
            raise ConfigError(msg)
        change = {k: v for k, v in self._hnsw.items() if k in HNSW_UPDATABLE and current.get(k) != v}
        if change:
            self._guard(lambda: col.modify(configuration={"hnsw": change}), "change the index settings")
            logger.info("collection %s: index settings changed to %s", self._collection_name, change)

    def _guard(self, fn: Callable[[], T], what: str) -> T:
        """Run a Chroma call, turning transport failures into :class:`StoreUnavailableError`."""
        try:
            return fn()
        except (ConfigError, DataError):
            raise
        except Exception as exc:
            if _is_transport_error(exc):
                msg = f"cannot {what}: Chroma at {self._where()} is unreachable ({type(exc).__name__})"
                raise StoreUnavailableError(msg) from exc
            raise

    def _where(self) -> str:
        return f"{self._host}:{self._port}" if self._host else (str(self._path) or "memory")

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

    def _add_batch(self, chunk: Sequence[Outcome | Mapping[str, Any]], *, offset: int) -> tuple[int, int]:
        from scope_shared.data import outcome_from_row

        records: dict[str, dict[str, Any]] = {}
        seen: dict[tuple[str, str], tuple[int, Outcome]] = {}
        names: set[str] = set()  # model names already checked in this batch
        id_of: dict[str, str] = {}  # query text -> anchor id, hashed once per batch
        for i, item in enumerate(chunk):
            where = f"row {offset + i}"
            if isinstance(item, Outcome):
                out = item
            elif isinstance(item, Mapping):
                out = outcome_from_row(item, where=where)
            else:
                msg = f"{where}: expected an Outcome or a mapping, got {type(item).__name__}"
                raise DataError(msg)
            if out.model not in names:
                _check_model_name(out.model, where)
                names.add(out.model)
            aid = id_of.get(out.query) or id_of.setdefault(out.query, anchor_id(out.query))
            prev = seen.get((aid, out.model))
            if prev is not None and _fields(prev[1]) != _fields(out):
                msg = (
                    f"{where}: conflicts with row {offset + prev[0]}: two different outcomes of model "
                    f"{out.model!r} on the same query"
                )
                raise DataError(msg)
            seen[(aid, out.model)] = (i, out)
            meta = records.setdefault(aid, {"chars": len(out.query), QUESTION: out.query})
            meta[CORRECT + out.model] = float(out.correct)
            if out.output_tokens is not None:
                meta[TOKENS + out.model] = int(out.output_tokens)
            if out.input_tokens is not None:
                meta["in_tok"] = int(out.input_tokens)
            if out.query_id is not None:
                meta["query_id"] = out.query_id
            if out.task is not None:
                meta["task"] = out.task
        if not records:
            return 0, 0
        ids = list(records)
        with self._lock:
            col = self._col()
            self._ensure_stats_base()
            got = self._guard(lambda: col.get(ids=ids, include=["metadatas"]), "read anchors")
            before = dict(zip(got["ids"], got["metadatas"] or [], strict=True))
            known = set(before)
            fresh = [rid for rid in ids if rid not in known]
            stored = [rid for rid in ids if rid in known]
            try:
                if fresh:
                    vectors = self.embed([records[rid][QUESTION] for rid in fresh])
                    self._guard(
                        lambda: col.upsert(
                            ids=fresh,
                            embeddings=np.asarray(vectors, dtype=np.float32),
                            metadatas=[records[rid] for rid in fresh],
                        ),
                        "write anchors",
                    )
                if stored:
                    # Metadata only: Chroma merges the keys into the record and leaves its vector in the index.
                    self._guard(
                        lambda: col.update(ids=stored, metadatas=[_without_question(records[rid]) for rid in stored]),
                        "update anchors",
                    )
            finally:  # even a half-written batch: the next read of these anchors goes to the store
                with self._cache_lock:
                    for rid in ids:
                        self._cache.pop(rid, None)
            for rid in ids:
                self._mine.add_meta(records[rid], before.get(rid))
            self._mine_saved = False
            self._writes += 1
            self._stats = None
            self._save_totals()
        return len(fresh), len(ids) - len(fresh)

    # -- reading -------------------------------------------------------------------------------

    def count(self) -> int:
        """Number of anchor questions."""
        col = self._col()
        return int(self._guard(col.count, "count anchors"))

    @property
    def version(self) -> str:
        """Changes whenever this object writes, and (within ``stats_ttl``) when any process records outcomes.

        Built from the cached running totals: reading it costs no round trip on the routing path.
        """
        outcomes = sum(st.n for st in self.model_stats().values())
        return f"{self._collection_name}:{outcomes}:{self._writes}"

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
        res = self._guard(
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

    def _records_by_id(self, ids: set[str]) -> dict[str, tuple[str, dict[str, AnchorOutcome]]]:
        now = time.monotonic()
        found: dict[str, tuple[str, dict[str, AnchorOutcome]]] = {}
        with self._cache_lock:
            for rid in ids:
                hit = self._cache.get(rid)
                if hit is not None and now - hit[0] < self._stats_ttl:
                    self._cache.move_to_end(rid)
                    found[rid] = hit[1]
        missing = [rid for rid in ids if rid not in found]
        if missing:
            col = self._col()
            got = self._guard(lambda: col.get(ids=missing, include=["metadatas", "documents"]), "read anchors")
            fresh = {
                rid: (_question(meta, doc), _outcomes(meta or {}))
                for rid, meta, doc in zip(got["ids"], got["metadatas"] or [], got["documents"] or [], strict=True)
            }
            found |= fresh
            if self._cache_size:
                with self._cache_lock:
                    for rid, rec in fresh.items():
                        self._cache[rid] = (now, rec)
                        self._cache.move_to_end(rid)
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        return found

    def get(self, ids: Sequence[str]) -> dict[str, AnchorRecord]:
        """Anchors by id (similarity set to 1.0)."""
        col = self._col()
        res = self._guard(lambda: col.get(ids=list(ids), include=["metadatas", "documents"]), "read anchors")
        return {
            rid: AnchorRecord(
                anchor_id=rid, question=_question(meta, doc), similarity=1.0, outcomes=_outcomes(meta or {})
            )
            for rid, meta, doc in zip(res["ids"], res["metadatas"], res["documents"], strict=True)
        }

    def export(self) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
        """Every anchor with its embedding and recorded input tokens, for estimators that fit on the store.

        Returns the anchors (similarity set to 1.0), their embeddings as one row-aligned matrix, and each
        anchor's recorded input tokens (None where none was recorded). Reads page by page.
        """
        col = self._col()
        pages = []
        for offset in itertools.count(0, _PAGE):

            def page_at(off: int = offset) -> Any:
                return col.get(include=["metadatas", "documents", "embeddings"], limit=_PAGE, offset=off)

            page = self._guard(page_at, "export anchors")
            pages.append(page)
            if len(page["ids"] or []) < _PAGE:
                break
        return _records(pages)

    def sample(self, n: int, *, seed: int = 0) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
        """Like :meth:`export`, for ``n`` anchors drawn at random (all of them when the store holds fewer)."""
        col = self._col()
        ids: list[str] = list(self._guard(lambda: col.get(include=[]), "list anchors")["ids"])
        if len(ids) > n:
            rng = np.random.default_rng(seed)
            ids = [ids[i] for i in np.sort(rng.choice(len(ids), size=n, replace=False))]

        def page(chunk: list[str]) -> Any:
            return self._guard(
                lambda: col.get(ids=chunk, include=["metadatas", "documents", "embeddings"]), "read anchors"
            )

        return _records(page(ids[i : i + _ID_CHUNK]) for i in range(0, len(ids), _ID_CHUNK))

    def iter_metadata(self) -> Iterable[Mapping[str, Any]]:
        """Every anchor's metadata, page by page."""
        col = self._col()
        for offset in itertools.count(0, _PAGE):

            def page_at(off: int = offset) -> Any:
                return col.get(include=["metadatas"], limit=_PAGE, offset=off)

            page = self._guard(page_at, "scan anchors")
            metas = page["metadatas"] or []
            yield from metas
            if len(metas) < _PAGE:
                return

    def model_stats(self, *, refresh: bool = False) -> dict[str, ModelStats]:
        """Each model's overall record over all anchors (cached for ``stats_ttl`` seconds).

        Read from running totals in the side collection ``<collection>.state`` (one small record per writer,
        kept by :meth:`add`), so it costs one small read however many anchors there are. Totals can drift
        only if a writer dies between writing anchors and its totals, or two writers record the same
        (anchor, model) at the same instant; :meth:`rebuild_stats` recounts from the anchors.
        """
        with self._lock:
            fresh = bool(self._stats) and time.monotonic() - self._stats_at < self._stats_ttl  # empty: re-read
            if fresh and not refresh:
                assert self._stats is not None
                return self._stats
            self._ensure_stats_base()
            state = self._state_col()
            got = self._guard(lambda: state.get(include=["metadatas"]), "read anchor totals")
            totals = _Totals()
            for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=True):
                if rid.startswith(STATS_PREFIX) and rid != self._writer:
                    totals.merge(_Totals.from_meta(meta or {}))
            totals.merge(self._mine)  # ours, including totals not yet saved after a failed write
            self._set_stats(totals)
            if not self._mine_saved:
                with contextlib.suppress(StoreUnavailableError):
                    self._save_totals()
            assert self._stats is not None
            return self._stats

    def rebuild_stats(self) -> dict[str, ModelStats]:
        """Recount every model's record from the anchors themselves (a full scan) and reset the totals.

        For a store whose totals drifted (see :meth:`model_stats`); run it while nothing else writes.
        """
        with self._lock:
            totals = self._scan_totals()
            state = self._state_col()
            got = self._guard(lambda: state.get(include=[]), "read anchor totals")
            stale = [rid for rid in got["ids"] if rid.startswith(STATS_PREFIX) and rid != STATS_BASE]
            self._put_state(STATS_BASE, totals.to_meta())
            if stale:
                self._guard(lambda: state.delete(ids=stale), "reset anchor totals")
            self._mine = _Totals()
            self._mine_saved = True
            self._base_checked = True
            self._set_stats(totals)
            assert self._stats is not None
            return self._stats

    def _set_stats(self, totals: _Totals) -> None:
        self._stats = {
            model: ModelStats(
                n=round(n),
                p_correct=min(1.0, max(0.0, s / n)),
                mean_log_tokens=lt / nt if nt >= 0.5 else None,
                n_tokens=round(nt),
            )
            for model, (n, s, nt, lt) in sorted(totals.models.items())
            if n >= 0.5
        }
        if totals.in_chars > 0 and totals.in_tokens > 0:
            self._tokens_per_char = totals.in_tokens / totals.in_chars
        self._stats_at = time.monotonic()

    def _scan_totals(self) -> _Totals:
        totals = _Totals()
        for meta in self.iter_metadata():
            totals.add_meta(meta)
        return totals

    def _ensure_stats_base(self) -> None:
        """Give a store its base totals once: zero for a new one, a full count for one built before them."""
        if self._base_checked:
            return
        state = self._state_col()
        got = self._guard(lambda: state.get(ids=[STATS_BASE], include=[]), "read anchor totals")
        if not got["ids"]:
            if self.count() > 0:
                logger.info("anchor store %s has no running totals yet: counting its anchors once", self)
                base = self._scan_totals()
            else:
                base = _Totals()
            self._put_state(STATS_BASE, base.to_meta())
        self._base_checked = True

    def _save_totals(self) -> None:
        self._put_state(self._writer, self._mine.to_meta())
        self._mine_saved = True

    # -- side state: running totals and estimators' fitted state -------------------------------

    def _state_col(self) -> Any:
        if self._state_collection is None:
            self._col()  # checks the embedder and creates the anchors collection first
            with self._lock:
                if self._state_collection is None:
                    name = self._collection_name + STATE_SUFFIX
                    self._state_collection = self._guard(
                        lambda: self._client.get_or_create_collection(name, embedding_function=None),
                        "open the state collection",
                    )
        return self._state_collection

    def _put_state(self, rid: str, meta: Mapping[str, Any], document: str = "") -> None:
        state = self._state_col()
        self._guard(
            lambda: state.upsert(
                ids=[rid], embeddings=[_STATE_VECTOR], metadatas=[dict(meta) or {"empty": True}], documents=[document]
            ),
            "write anchor state",
        )

    def save_state(self, key: str, value: str) -> None:
        """Keep a text (e.g. an estimator's fitted parameters as JSON) with the store, for every process."""
        self._put_state(_STATE_KEY + key, {"saved_at": time.time()}, value)

    def load_state(self, key: str) -> str | None:
        """The text last saved under ``key`` (None if none)."""
        state = self._state_col()
        got = self._guard(lambda: state.get(ids=[_STATE_KEY + key], include=["documents"]), "read anchor state")
        docs = got["documents"] or []
        return docs[0] if got["ids"] and docs else None

    def cached_model_stats(self) -> dict[str, ModelStats] | None:
        """The last computed statistics, without touching the backend (for degraded routing)."""
        return self._stats

    @property
    def tokens_per_char(self) -> float:
        """Input tokens per character, from the anchors' recorded counts (refreshed with the statistics)."""
        return self._tokens_per_char

    def estimate_input_tokens(self, text: str) -> float:
        """Input tokens of ``text``, from the anchors' recorded tokens-per-character ratio."""
        return max(1.0, round(len(text) * self._tokens_per_char))

    def require_anchors(self) -> int:
        """The number of anchors; :class:`EmptyStoreError` when the store holds none."""
        count = self.count()
        if count == 0:
            msg = (
                f"anchor store {self._collection_name!r} at {self._where()} is empty; "
                "load outcomes first (scope-router ingest or AnchorStore.add)"
            )
            raise EmptyStoreError(msg)
        return count


def _fields(out: Outcome) -> tuple[float, int | None]:
    return (out.correct, out.output_tokens)


def _records(pages: Iterable[Any]) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
    """Chroma ``get`` pages (metadatas, documents, embeddings) as export rows."""
    records: list[AnchorRecord] = []
    vectors: list[Any] = []
    in_tokens: list[float | None] = []
    for page in pages:
        embs = page["embeddings"] if page["embeddings"] is not None else []
        rows = zip(page["ids"] or [], page["metadatas"] or [], page["documents"] or [], embs, strict=True)
        for rid, meta, doc, vec in rows:
            meta = meta or {}
            records.append(
                AnchorRecord(anchor_id=rid, question=_question(meta, doc), similarity=1.0, outcomes=_outcomes(meta))
            )
            vectors.append(np.asarray(vec, dtype=np.float32))
            in_tok = meta.get("in_tok")
            in_tokens.append(float(in_tok) if isinstance(in_tok, int | float) else None)
    matrix = np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
    return records, matrix, in_tokens


def _question(meta: Mapping[str, Any] | None, document: str | None) -> str:
    """An anchor's question: its ``question`` metadata, or the document of a store written before that."""
    q = (meta or {}).get(QUESTION)
    return q if isinstance(q, str) else document or ""


def _without_question(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != QUESTION}


def _log_tokens(value: Any) -> float:
    return math.log1p(max(0.0, float(value)))


def _check_model_name(model: str, where: str) -> None:
    if model != model.strip() or any(ord(ch) < 32 for ch in model):
        msg = f"{where}: model name {model!r} has surrounding spaces or control characters"
        raise DataError(msg)


def _outcomes(meta: Mapping[str, Any]) -> dict[str, AnchorOutcome]:
    out: dict[str, AnchorOutcome] = {}
    for key, value in meta.items():
        if key.startswith(CORRECT):
            model = key[len(CORRECT) :]
            tokens = meta.get(TOKENS + model)
            out[model] = AnchorOutcome(
                correct=float(value), output_tokens=float(tokens) if tokens is not None else None
            )
    return out


def _is_transport_error(exc: BaseException) -> bool:
    import httpx

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, httpx.TransportError | ConnectionError | TimeoutError):
            return True
        text = str(cur).lower()
        if "could not connect" in text or "connection refused" in text:
            return True
        cur = cur.__cause__ or cur.__context__
    return False
