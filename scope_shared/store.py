"""The anchor store: anchor questions, their embeddings and every model's recorded outcomes, on Chroma.

One Chroma record per anchor question (its id is a hash of the text, so the same text is one anchor).
Outcomes live in the record's metadata, one key per model and field (``c::<model>`` correctness,
``t::<model>`` output tokens), so adding a new model's outcomes merges into existing records in place,
re-adding an outcome is idempotent, and writers in several processes never overwrite each other's models.

The same class runs embedded (a directory), in memory, or against a Chroma server (``chroma run``).
This is the only module that knows Chroma's API.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import SecretStr

from scope_shared.embeddings import Embedder, Matrix, as_embedder
from scope_shared.errors import ConfigError, DataError, EmptyStoreError, StoreUnavailableError
from scope_shared.estimators.base import AnchorOutcome, AnchorRecord, ModelStats
from scope_shared.types import Outcome

__all__ = ["AddReport", "AnchorStore", "anchor_id"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

CORRECT = "c::"
TOKENS = "t::"
DEFAULT_COLLECTION = "scope-anchors"
#: Tokens per character when no anchor records its input tokens (about 4 characters a token in English).
DEFAULT_TOKENS_PER_CHAR = 0.25
_PAGE = 2000


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
        embed_tail_chars: embed only the last this-many characters of a text (None: all of it). Prompts
            put the question last, often after shared instructions or few-shot examples, and small
            sentence encoders read only their first ~256 word pieces; embedding the tail keeps the part
            that tells questions apart. Stored with the collection: anchors and queries use the same.
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
        embed_tail_chars: int | None = 1000,
    ) -> None:
        chosen = [name for name, v in (("path", path), ("host", host), ("client", client)) if v]
        if len(chosen) > 1:
            msg = f"choose one backend; got {chosen} (path=embedded, host=server, client=your own)"
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
        self._path = Path(path) if path else None
        self._host = host
        self._port = port
        self._ssl = ssl
        self._headers = {k: SecretStr(v) for k, v in (headers or {}).items()}
        self._token = SecretStr(token) if token else None
        self._client = client
        self._backend = "http" if host else "persistent" if path else "client" if client else "memory"
        self._embedder = as_embedder(embedder)
        if collection is None:
            in_memory = not (path or host or client)
            collection = f"scope-mem-{uuid.uuid4().hex[:12]}" if in_memory else DEFAULT_COLLECTION
        self._collection_name = collection
        self._batch_size = batch_size
        self._tail = embed_tail_chars
        self._stats_ttl = stats_ttl
        self._collection: Any = None
        self._lock = threading.RLock()
        self._writes = 0
        self._stats: dict[str, ModelStats] | None = None
        self._stats_at = 0.0
        self._tokens_per_char = DEFAULT_TOKENS_PER_CHAR

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
                        configuration={"hnsw": {"space": "cosine"}},
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
                self._collection = col
        return self._collection

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
        questions: dict[str, str] = {}
        seen: dict[tuple[str, str], tuple[int, Outcome]] = {}
        for i, item in enumerate(chunk):
            where = f"row {offset + i}"
            if isinstance(item, Outcome):
                out = item
            elif isinstance(item, Mapping):
                out = outcome_from_row(item, where=where)
            else:
                msg = f"{where}: expected an Outcome or a mapping, got {type(item).__name__}"
                raise DataError(msg)
            _check_model_name(out.model, where)
            aid = anchor_id(out.query)
            prev = seen.get((aid, out.model))
            if prev is not None and _fields(prev[1]) != _fields(out):
                msg = (
                    f"{where}: conflicts with row {offset + prev[0]}: two different outcomes of model "
                    f"{out.model!r} on the same query"
                )
                raise DataError(msg)
            seen[(aid, out.model)] = (i, out)
            meta = records.setdefault(aid, {"chars": len(out.query)})
            questions[aid] = out.query
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
            got = self._guard(lambda: col.get(ids=ids, include=[]), "read anchors")
            known = set(got["ids"])
            fresh = [rid for rid in ids if rid not in known]
            stored = [rid for rid in ids if rid in known]
            if fresh:
                vectors = self.embed([questions[rid] for rid in fresh])
                self._guard(
                    lambda: col.upsert(
                        ids=fresh,
                        embeddings=np.asarray(vectors, dtype=np.float32),
                        documents=[questions[rid] for rid in fresh],
                        metadatas=[records[rid] for rid in fresh],
                    ),
                    "write anchors",
                )
            if stored:
                # Metadata only: Chroma merges the keys into the record and leaves its vector in the index.
                self._guard(
                    lambda: col.update(ids=stored, metadatas=[records[rid] for rid in stored]), "update anchors"
                )
            self._writes += 1
            self._stats = None
        return len(fresh), len(ids) - len(fresh)

    # -- reading -------------------------------------------------------------------------------

    def count(self) -> int:
        """Number of anchor questions."""
        col = self._col()
        return int(self._guard(col.count, "count anchors"))

    @property
    def version(self) -> str:
        """Changes whenever the anchors change (through this object, or their number elsewhere)."""
        return self.version_for(self.count())

    def version_for(self, count: int) -> str:
        """:attr:`version` from an anchor count just read (saves a second count on the routing path)."""
        return f"{self._collection_name}:{count}:{self._writes}"

    def embed(self, texts: Sequence[str]) -> Matrix:
        """Embed texts as the store does (its embedder, over each text's last ``embed_tail_chars``)."""
        if self._tail:
            texts = [t[-self._tail :] for t in texts]
        return self._embedder.embed(texts)

    def query(self, embeddings: Matrix, *, k: int) -> list[tuple[AnchorRecord, ...]]:
        """The ``k`` most similar anchors of each embedding, most similar first."""
        if k < 1:
            msg = f"k must be >= 1, got {k}"
            raise ConfigError(msg)
        if len(embeddings) == 0:
            return []
        col = self._col()
        res = self._guard(
            lambda: col.query(
                query_embeddings=np.asarray(embeddings, dtype=np.float32),
                n_results=k,
                include=["metadatas", "distances", "documents"],
            ),
            "query anchors",
        )
        out: list[tuple[AnchorRecord, ...]] = []
        for ids, metas, dists, docs in zip(
            res["ids"], res["metadatas"], res["distances"], res["documents"]
        , strict=True):
            out.append(
                tuple(
                    AnchorRecord(
                        anchor_id=rid,
                        question=doc or "",
                        similarity=max(-1.0, min(1.0, 1.0 - float(dist))),
                        outcomes=_outcomes(meta or {}),
                    )
                    for rid, meta, dist, doc in zip(ids, metas, dists, docs, strict=True)
                )
            )
        return out

    def get(self, ids: Sequence[str]) -> dict[str, AnchorRecord]:
        """Anchors by id (similarity set to 1.0)."""
        col = self._col()
        res = self._guard(lambda: col.get(ids=list(ids), include=["metadatas", "documents"]), "read anchors")
        return {
            rid: AnchorRecord(anchor_id=rid, question=doc or "", similarity=1.0, outcomes=_outcomes(meta or {}))
            for rid, meta, doc in zip(res["ids"], res["metadatas"], res["documents"], strict=True)
        }

    def export(self) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
        """Every anchor with its embedding and recorded input tokens, for estimators that fit on the store.

        Returns the anchors (similarity set to 1.0), their embeddings as one row-aligned matrix, and each
        anchor's recorded input tokens (None where none was recorded). Reads page by page.
        """
        col = self._col()
        records: list[AnchorRecord] = []
        vectors: list[Any] = []
        in_tokens: list[float | None] = []
        for offset in itertools.count(0, _PAGE):

            def page_at(off: int = offset) -> Any:
                return col.get(include=["metadatas", "documents", "embeddings"], limit=_PAGE, offset=off)

            page = self._guard(page_at, "export anchors")
            ids = page["ids"] or []
            embs = page["embeddings"] if page["embeddings"] is not None else []
            for rid, meta, doc, vec in zip(ids, page["metadatas"] or [], page["documents"] or [], embs, strict=True):
                meta = meta or {}
                outcomes = _outcomes(meta)
                records.append(AnchorRecord(anchor_id=rid, question=doc or "", similarity=1.0, outcomes=outcomes))
                vectors.append(np.asarray(vec, dtype=np.float32))
                in_tok = meta.get("in_tok")
                in_tokens.append(float(in_tok) if isinstance(in_tok, int | float) else None)
            if len(ids) < _PAGE:
                break
        matrix = np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
        return records, matrix, in_tokens

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
        """Each model's overall record over all anchors (cached; see ``stats_ttl``)."""
        with self._lock:
            fresh = self._stats is not None and time.monotonic() - self._stats_at < self._stats_ttl
            if fresh and not refresh:
                assert self._stats is not None
                return self._stats
            sums: dict[str, list[float]] = {}
            ratios: list[float] = []
            for meta in self.iter_metadata():
                for key, value in meta.items():
                    if key.startswith(CORRECT):
                        acc = sums.setdefault(key[len(CORRECT) :], [0.0, 0.0, 0.0, 0.0])
                        acc[0] += 1
                        acc[1] += float(value)
                    elif key.startswith(TOKENS):
                        acc = sums.setdefault(key[len(TOKENS) :], [0.0, 0.0, 0.0, 0.0])
                        acc[2] += 1
                        acc[3] += math.log1p(max(0.0, float(value)))
                chars, in_tok = meta.get("chars"), meta.get("in_tok")
                if isinstance(chars, int | float) and isinstance(in_tok, int | float) and chars > 0:
                    ratios.append(float(in_tok) / float(chars))
            self._stats = {
                model: ModelStats(
                    n=int(n),
                    p_correct=s / n if n else 0.0,
                    mean_log_tokens=lt / nt if nt else None,
                    n_tokens=int(nt),
                )
                for model, (n, s, nt, lt) in sums.items()
                if n > 0
            }
            if ratios:
                self._tokens_per_char = float(np.median(ratios))
            self._stats_at = time.monotonic()
            return self._stats

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
