"""The Chroma connection: client, the anchors collection with its HNSW index, the side collection, errors.

This package is the only place that knows Chroma's API; this module is the only one that builds clients.
For a server it also owns the transport: timeouts (chromadb's HTTP client has none, so a hung server would
hang every call), TLS verification, and the one-line errors for a failed TLS handshake or refused
credentials. Credentials are never logged nor put in an error.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl as _ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from pydantic import SecretStr

from scope_shared.errors import ConfigError, DataError, StoreAccessError, StoreUnavailableError

__all__ = ["HNSW_FIXED", "HNSW_UPDATABLE", "ChromaConnection", "check_hnsw", "check_verify"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Chroma HNSW settings an existing collection can change, and the ones fixed when it is created.
HNSW_UPDATABLE = ("ef_search", "sync_threshold", "resize_factor")
HNSW_FIXED = ("ef_construction", "max_neighbors")
#: The side collection ``<collection>.state`` holds the running outcome totals and fitted estimator state.
STATE_SUFFIX = ".state"
#: Header names that carry credentials (compared lower-case); sending one without TLS is warned about.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-chroma-token", "x-api-key"})
#: The request made before chromadb's client is built: it answers like any chromadb call, with a timeout.
_PREFLIGHT = "/auth/identity"


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


def check_verify(verify: Any, *, ssl: bool, host: str | None) -> bool | str:
    """``verify`` as chromadb takes it: a bool, or the path of an existing CA bundle."""
    if isinstance(verify, bool):
        return verify
    if not isinstance(verify, str | Path):
        msg = f"verify must be True, False or the path of a CA bundle (PEM), got {type(verify).__name__}"
        raise ConfigError(msg)
    if not Path(verify).is_file():
        msg = f"verify={str(verify)!r} is not a file; pass the CA bundle (PEM) that signed the server's certificate"
        raise ConfigError(msg)
    if host and not ssl:
        msg = f"verify={str(verify)!r} is a CA bundle but ssl=False: pass ssl=True to use TLS"
        raise ConfigError(msg)
    return str(verify)


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
        verify: bool | str,
        timeout: float | None,
        connect_timeout: float,
        client: Any,
        collection: str,
        embedder_id: str,
        hnsw: Mapping[str, float],
    ) -> None:
        self.path = Path(path).resolve() if path else None  # Chroma caches clients by the path string
        self.host = host
        self.port = port
        self._ssl = ssl
        self._headers = {k: SecretStr(v) for k, v in (headers or {}).items()}
        self._token = SecretStr(token) if token else None
        self._verify = verify
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._client = client
        self.backend = "http" if host else "persistent" if path else "client" if client else "memory"
        self.name = collection
        self._embedder_id = embedder_id
        self._hnsw = dict(hnsw)
        self._anchors: Any = None
        self._side: Any = None
        self._lock = threading.Lock()
        if host:
            self._warn_transport()

    def _warn_transport(self) -> None:
        """Once per store: credentials that would cross the network in clear, or TLS without verification."""
        assert self.host is not None
        sent = sorted(k for k in self._headers if k.lower() in CREDENTIAL_HEADERS)
        if self._token is not None:
            sent.append("token")
        if sent and not self._ssl and not _is_loopback(self.host):
            logger.warning(
                "Chroma credentials (%s) will be sent to %s without TLS: anyone on the network path can read "
                "them. Put a TLS proxy in front of the server and pass ssl=True (see docs/chroma-server.md)",
                ", ".join(sent),
                self.where(),
            )
        if self._ssl and self._verify is False:
            logger.warning(
                "TLS certificate verification is off for Chroma at %s: the connection can be intercepted; "
                "pass verify=<CA bundle> instead",
                self.where(),
            )

    def where(self) -> str:
        """Where the store lives, for messages (never includes credentials)."""
        return f"{self.host}:{self.port}" if self.host else (str(self.path) if self.path else "memory")

    def _build_client(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        if self.host:
            settings = Settings(anonymized_telemetry=False, allow_reset=False, chroma_server_ssl_verify=self._verify)
            headers = {k: v.get_secret_value() for k, v in self._headers.items()}
            if self._token is not None:
                headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
            self._preflight(headers, settings.chroma_server_api_default_path or "")
            client = chromadb.HttpClient(
                host=self.host, port=self.port, ssl=self._ssl, headers=headers, settings=settings
            )
            _set_timeout(client, self._http_timeout())
            return client
        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        if self.path:
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                return chromadb.PersistentClient(path=str(self.path), settings=settings)
            except Exception as exc:
                if "readonly database" not in str(exc):
                    raise
                msg = (
                    f"cannot open the anchor store at {self.path}: it is read-only here, and Chroma's embedded "
                    "store needs write access even to read; copy it somewhere writable, or serve it with chroma run"
                )
                raise StoreAccessError(msg) from None
        return chromadb.EphemeralClient(settings=settings)

    def _http_timeout(self) -> Any:
        import httpx

        return httpx.Timeout(self.timeout, connect=self.connect_timeout)

    def _preflight(self, headers: Mapping[str, str], api_path: str) -> None:
        """One request with the client's TLS settings and headers, under the timeouts, before chromadb builds
        its client (whose own first requests would wait forever on a hung server): a failed handshake, a
        refused credential or no answer is reported here in one line."""
        import httpx
        from chromadb.api.fastapi import FastAPI

        assert self.host is not None
        url = FastAPI.resolve_url(
            chroma_server_host=self.host,
            chroma_server_http_port=self.port,
            chroma_server_ssl_enabled=self._ssl,
            default_api_path=api_path,
        )
        verify: Any = self._verify
        if isinstance(verify, str):
            verify = _ssl.create_default_context(cafile=verify)
        with httpx.Client(timeout=self._http_timeout(), verify=verify, headers=dict(headers)) as http:
            resp = self.guard(lambda: http.get(url + _PREFLIGHT), "connect")
        if resp.status_code in (401, 403):
            raise StoreAccessError(self._refused(resp.status_code))

    def _refused(self, status: int) -> str:
        if self._token is None and not any(k.lower() in CREDENTIAL_HEADERS for k in self._headers):
            return (
                f"Chroma at {self.where()} requires credentials (HTTP {status}) and none were sent; "
                "pass token= (or a header)"
            )
        return f"Chroma at {self.where()} refused the credentials (HTTP {status}); check the token or headers"

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
        """Run a Chroma call, turning transport failures into :class:`StoreUnavailableError`: a failed TLS
        handshake or refused credentials into :class:`StoreAccessError`, no answer within the timeout, an
        unreachable server."""
        try:
            return fn()
        except (ConfigError, DataError, StoreUnavailableError):
            raise
        except Exception as exc:
            access = self._access_error(exc)
            if access is not None:
                raise StoreAccessError(access) from exc
            waited = self._timeout_error(exc)
            if waited is not None:
                msg = f"cannot {what}: {waited}"
                raise StoreUnavailableError(msg) from exc
            if _is_transport_error(exc):
                msg = f"cannot {what}: Chroma at {self.where()} is unreachable ({type(exc).__name__})"
                raise StoreUnavailableError(msg) from exc
            raise

    def _access_error(self, exc: BaseException) -> str | None:
        """The one-line reason when ``exc`` is a failed TLS handshake or refused credentials."""
        for cur in _chain(exc):
            if isinstance(cur, _ssl.SSLCertVerificationError):
                why = cur.verify_message or cur.reason or str(cur)
                return (
                    f"TLS handshake with Chroma at {self.where()} failed: certificate verify failed: {why}; "
                    "pass verify=<CA bundle> (a PEM file with the CA that signed the server's certificate)"
                )
            if isinstance(cur, _ssl.SSLError):
                return (
                    f"TLS handshake with Chroma at {self.where()} failed: {cur.reason or cur}; check that the "
                    "server (or its proxy) speaks TLS on this port, or pass ssl=False for plain HTTP"
                )
        for cur in _chain(exc):
            status = _auth_status(cur)
            if status is not None:
                return self._refused(status)
        return None

    def _timeout_error(self, exc: BaseException) -> str | None:
        import httpx

        for cur in _chain(exc):
            if isinstance(cur, httpx.ConnectTimeout):
                return f"Chroma at {self.where()} did not accept a connection within {self.connect_timeout:g} s"
            if isinstance(cur, httpx.TimeoutException | TimeoutError):
                limit = f"{self.timeout:g} s" if self.timeout is not None else "its timeout"
                return f"Chroma at {self.where()} did not answer within {limit} ({type(cur).__name__})"
        return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _auth_status(exc: BaseException) -> int | None:
    """401 or 403 when ``exc`` says the server refused the request's credentials."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return status if status in (401, 403) else None
    from chromadb.errors import AuthorizationError, ChromaAuthError

    if isinstance(exc, AuthorizationError | ChromaAuthError):
        return int(exc.code())
    return None


def _is_transport_error(exc: BaseException) -> bool:
    import httpx

    for cur in _chain(exc):
        if isinstance(cur, httpx.TransportError | ConnectionError | TimeoutError):
            return True
        text = str(cur).lower()
        if "could not connect" in text or "connection refused" in text:
            return True
    return False


def _is_loopback(host: str) -> bool:
    name = (urlparse(host).hostname if "://" in host else host) or host
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _set_timeout(client: Any, timeout: Any) -> None:
    """Give the HTTP session of a chromadb client the timeouts (chromadb builds it with none).

    chromadb has no setting for it, so this reaches the session through its private attributes
    (``client._server._session``, chromadb 1.x); if that layout changes, a WARNING says the calls are
    unbounded.
    """
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = timeout
        return
    import chromadb

    logger.warning(
        "cannot set a timeout on the HTTP client of chromadb %s (its internals changed): a Chroma server "
        "that stops answering will hang the calls to it",
        getattr(chromadb, "__version__", "?"),
    )
