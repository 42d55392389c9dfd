"""The store's transport to a Chroma server: timeouts, TLS and credential errors, cleartext warnings.

A few tests here listen on 127.0.0.1 (a socket that never answers, a tiny fake of Chroma's first requests):
what they check is how the client behaves on the wire, which no in-process fake can show.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scope_shared import AnchorStore, ConfigError, HashingEmbedder, StoreUnavailableError
from scope_shared.errors import StoreAccessError

#: Chroma 1.x's answers to the requests chromadb's client makes while it is built.
HANDSHAKE = {
    "/api/v2/auth/identity": {"user_id": "", "tenant": "default_tenant", "databases": ["default_database"]},
    "/api/v2/tenants/default_tenant": {"name": "default_tenant", "resource_name": None},
    "/api/v2/tenants/default_tenant/databases/default_database": {
        "id": "00000000-0000-0000-0000-000000000000",
        "name": "default_database",
        "tenant": "default_tenant",
    },
}


def within(seconds: float, fn: Callable[[], Any]) -> BaseException | Any:
    """``fn()``'s result or exception; fails the test if it has not returned after ``seconds``."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"still waiting after {seconds} s: a server that does not answer hangs the call"
    return out[0]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose server accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


class FakeChroma(BaseHTTPRequestHandler):
    """Answers chromadb's handshake, then goes silent (``status`` set: answers everything with it)."""

    protocol_version = "HTTP/1.1"
    status: int | None = None
    release: threading.Event
    seen: list[tuple[str, str | None]]

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.status is not None:
            self._send(self.status, {"error": "Unauthorized", "message": "no"})
        elif self.path in HANDSHAKE:
            self._send(200, HANDSHAKE[self.path])
        else:
            self.release.wait(30)

    do_POST = do_GET

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def fake_chroma() -> Iterator[tuple[ThreadingHTTPServer, type[FakeChroma]]]:
    handler = type("Handler", (FakeChroma,), {"release": threading.Event(), "seen": [], "status": None})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, handler
    handler.release.set()
    srv.shutdown()
    srv.server_close()


def remote(port: int, **kw: Any) -> AnchorStore:
    return AnchorStore(host="127.0.0.1", port=port, embedder=HashingEmbedder(), **kw)


def test_a_server_that_accepts_and_never_answers_times_out(silent_port: int) -> None:
    store = remote(silent_port, timeout=0.5)
    t0 = time.monotonic()
    err = within(20, store.count)
    assert isinstance(err, StoreUnavailableError) and not isinstance(err, StoreAccessError)
    assert "did not answer within 0.5 s" in str(err) and f"127.0.0.1:{silent_port}" in str(err)
    assert time.monotonic() - t0 < 10


def test_a_server_that_goes_silent_after_connecting_times_out(
    fake_chroma: tuple[ThreadingHTTPServer, type[FakeChroma]],
) -> None:
    """chromadb's own client is built (the handshake answered), then the collection request hangs: the
    timeout has to be on chromadb's HTTP session, not only on the first request."""
    srv, handler = fake_chroma
    store = remote(srv.server_address[1], timeout=0.5)
    err = within(20, store.count)
    assert isinstance(err, StoreUnavailableError), err
    assert "cannot open the collection" in str(err) and "did not answer within 0.5 s" in str(err)
    assert [p for p, _ in handler.seen][:4] == ["/api/v2/auth/identity", *HANDSHAKE]  # past the handshake
    assert any("/collections" in p for p, _ in handler.seen)


@pytest.mark.parametrize(("status", "token", "says"), [
    (401, "s3cret-token-value", "refused the credentials (HTTP 401)"),
    (403, "s3cret-token-value", "refused the credentials (HTTP 403)"),
    (401, None, "requires credentials (HTTP 401) and none were sent"),
])
def test_refused_credentials_are_one_line_and_never_show_the_token(
    fake_chroma: tuple[ThreadingHTTPServer, type[FakeChroma]], status: int, token: str | None, says: str
) -> None:
    srv, handler = fake_chroma
    handler.status = status
    port = srv.server_address[1]
    with pytest.raises(StoreAccessError) as err:
        remote(port, token=token, timeout=2.0).count()
    text = str(err.value)
    assert text.startswith(f"Chroma at 127.0.0.1:{port} ") and says in text
    assert "\n" not in text and "s3cret" not in text and "s3cret" not in repr(err.value.__cause__)
    assert isinstance(err.value, StoreUnavailableError)  # a running engine degrades on it, as on an outage
    assert handler.seen[0][1] == (f"Bearer {token}" if token else None)


def test_tls_to_a_plain_http_server_is_a_tls_error(fake_chroma: tuple[ThreadingHTTPServer, type[FakeChroma]]) -> None:
    srv, _ = fake_chroma
    with pytest.raises(StoreAccessError, match=r"^TLS handshake with Chroma at 127\.0\.0\.1:\d+ failed: "):
        remote(srv.server_address[1], ssl=True, timeout=2.0).count()


def test_a_timeout_midway_is_store_unavailable_with_the_limit() -> None:
    import httpx

    store = remote(1, timeout=3.0)

    def slow() -> None:
        raise httpx.ReadTimeout("timed out")

    with pytest.raises(StoreUnavailableError, match=r"^cannot query anchors: Chroma at 127\.0\.0\.1:1 did not answer within 3 s"):
        store._conn.guard(slow, "query anchors")


@pytest.mark.parametrize(("kw", "warns"), [
    ({"host": "10.20.30.40", "token": "s3cret-token-value"}, True),
    ({"host": "chroma.internal", "headers": {"authorization": "Basic czNjcmV0"}}, True),
    ({"host": "chroma.internal", "headers": {"X-Chroma-Token": "s3cret-token-value"}}, True),
    ({"host": "chroma.internal", "token": "s3cret-token-value", "ssl": True}, False),
    ({"host": "127.0.0.1", "token": "s3cret-token-value"}, False),
    ({"host": "localhost", "token": "s3cret-token-value"}, False),
    ({"host": "chroma.internal", "headers": {"X-Trace": "1"}}, False),
])
def test_credentials_without_tls_to_another_host_warn_once(
    caplog: pytest.LogCaptureFixture, kw: dict[str, Any], warns: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="scope_shared.store"):
        store = AnchorStore(embedder=HashingEmbedder(), **kw)
    cleartext = [r for r in caplog.records if "without TLS" in r.getMessage()]
    assert len(cleartext) == (1 if warns else 0)
    assert all("s3cret" not in r.getMessage() and "czNjcmV0" not in r.getMessage() for r in caplog.records)
    assert store.backend == "http"


def test_tls_without_verification_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="scope_shared.store"):
        AnchorStore(host="chroma.internal", ssl=True, verify=False, embedder=HashingEmbedder())
    assert any("verification is off" in r.getMessage() for r in caplog.records)


def test_verify_and_timeouts_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        AnchorStore(host="h", ssl=True, verify=tmp_path / "missing.pem", embedder=HashingEmbedder())
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="ssl=False"):
        AnchorStore(host="h", verify=ca, embedder=HashingEmbedder())
    with pytest.raises(ConfigError, match="verify must be"):
        AnchorStore(host="h", verify=1, embedder=HashingEmbedder())  # type: ignore[arg-type]
    for bad in ({"timeout": 0}, {"timeout": -1.0}, {"timeout": float("inf")}, {"connect_timeout": None}):
        with pytest.raises(ConfigError, match="timeout must be a positive number of seconds"):
            AnchorStore(host="h", embedder=HashingEmbedder(), **bad)  # type: ignore[arg-type]
    assert AnchorStore(host="h", ssl=True, verify=ca, timeout=None, embedder=HashingEmbedder()).backend == "http"
