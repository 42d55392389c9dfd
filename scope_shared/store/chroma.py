"""The Chroma connection: client, the anchors collection with its HNSW index, the side collection, errors.

This package is the only place that knows Chroma's API; this module is the only one that builds clients.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from scope_shared.errors import ConfigError, DataError, StoreUnavailableError

__all__ = ["HNSW_FIXED", "HNSW_UPDATABLE", "ChromaConnection", "check_hnsw"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Chroma HNSW settings an existing collection can change, and the ones fixed when it is created.
HNSW_UPDATABLE = ("ef_search", "sync_threshold", "resize_factor")
HNSW_FIXED = ("ef_construction", "max_neighbors")
#: The side collection ``<collection>.state`` holds the running outcome totals and fitted estimator state.
STATE_SUFFIX = ".state"


def check_hnsw(hnsw: Mapping[str, float]) -> dict[str, float]:
    """Validated HNSW settings; :class:`ConfigError` for an unknown key or a bad value."""
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


class ChromaConnection:
    """A lazily built Chroma client with the anchors collection and its side collection.

    Nothing connects until a collection is first asked for. Every Chroma call goes through :meth:`guard`,
    which turns transport failures into :class:`StoreUnavailableError`.
    """

    def __init__(
        self,
        *,
        path: str | Path | None,
        host: str | None,
        port: int,
        ssl: bool,
        headers: Mapping[str, str] | None,
        token: str | None,
        client: Any,
        collection: str,
        embedder_id: str,
        hnsw: Mapping[str, float],
    ) -> None:
        self.path = Path(path) if path else None
        self.host = host
        self.port = port
        self._ssl = ssl
        self._headers = {k: SecretStr(v) for k, v in (headers or {}).items()}
        self._token = SecretStr(token) if token else None
        self._client = client
        self.backend = "http" if host else "persistent" if path else "client" if client else "memory"
        self.name = collection
        self._embedder_id = embedder_id
        self._hnsw = dict(hnsw)
        self._anchors: Any = None
        self._side: Any = None
        self._lock = threading.Lock()

    def where(self) -> str:
        """Where the store lives, for messages (never includes credentials)."""
        return f"{self.host}:{self.port}" if self.host else (str(self.path) if self.path else "memory")

    def _build_client(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        if self.host:
            headers = {k: v.get_secret_value() for k, v in self._headers.items()}
            if self._token is not None:
                headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
            return chromadb.HttpClient(
                host=self.host, port=self.port, ssl=self._ssl, headers=headers, settings=settings
            )
        if self.path:
            self.path.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(self.path), settings=settings)
        return chromadb.EphemeralClient(settings=settings)

    def anchors(self) -> Any:
        """The anchors collection, opened (and created, with the HNSW settings) on first use."""
        if self._anchors is not None:
            return self._anchors
        with self._lock:
            if self._anchors is None:

                def connect() -> Any:
                    if self._client is None:
                        self._client = self._build_client()
                    return self._client.get_or_create_collection(
                        self.name,
                        embedding_function=None,
                        configuration={"hnsw": {"space": "cosine", **self._hnsw}},
                        metadata={"embedder": self._embedder_id, "schema": 1},
                    )

                col = self.guard(connect, "open the collection")
                stored = (col.metadata or {}).get("embedder")
                if stored and stored != self._embedder_id:
                    msg = (
                        f"collection {self.name!r} was built with embedder {stored!r}, not {self._embedder_id!r}; "
                        "open it with the same embedder (and embed_tail_chars) or use a new collection"
                    )
                    raise ConfigError(msg)
                self._apply_hnsw(col)
                self._anchors = col
        return self._anchors

    def side(self) -> Any:
        """The side collection ``<collection>.state`` (running totals and estimator state)."""
        if self._side is None:
            self.anchors()  # checks the embedder and creates the anchors collection first
            with self._lock:
                if self._side is None:
                    name = self.name + STATE_SUFFIX
                    self._side = self.guard(
                        lambda: self._client.get_or_create_collection(name, embedding_function=None),
                        "open the state collection",
                    )
        return self._side

    def _apply_hnsw(self, col: Any) -> None:
        """Bring an opened collection's index settings to the ``hnsw`` given (a created one has them)."""
        if not self._hnsw:
            return
        current = dict((getattr(col, "configuration", None) or {}).get("hnsw") or {})
        fixed = {k: current.get(k) for k, v in self._hnsw.items() if k in HNSW_FIXED and current.get(k) != v}
        if fixed:
            have = ", ".join(f"{k}={old}" for k, old in fixed.items())
            msg = (
                f"collection {self.name!r} was built with {have}; {', '.join(fixed)} cannot change "
                "on a built index: drop them from hnsw or use a new collection"
            )
            raise ConfigError(msg)
        change = {k: v for k, v in self._hnsw.items() if k in HNSW_UPDATABLE and current.get(k) != v}
        if change:
            self.guard(lambda: col.modify(configuration={"hnsw": change}), "change the index settings")
            logger.info("collection %s: index settings changed to %s", self.name, change)

    def guard(self, fn: Callable[[], T], what: str) -> T:
        """Run a Chroma call, turning transport failures into :class:`StoreUnavailableError`."""
        try:
            return fn()
        except (ConfigError, DataError):
            raise
        except Exception as exc:
            if _is_transport_error(exc):
                msg = f"cannot {what}: Chroma at {self.where()} is unreachable ({type(exc).__name__})"
                raise StoreUnavailableError(msg) from exc
            raise


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
