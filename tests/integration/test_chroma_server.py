"""The anchor store against a real Chroma server: same behaviour as embedded, shared between processes,
an outage survived (routing degrades, recorded outcomes are kept and written once it is back), a server that
hangs treated as one that is down, and a server behind an authenticating TLS proxy."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scope_shared import AnchorStore, HashingEmbedder, Outcome, ScopeEngine, StoreUnavailableError
from scope_shared.cli import main
from scope_shared.errors import StoreAccessError
from scope_shared.store import DEFAULT_COLLECTION
from tests.integration.chroma_server import AuthTLSProxy, ChromaServer, make_tls_certs
from tests.unit.conftest import CARDS, sample_outcomes

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ChromaServer]:
    srv = ChromaServer(tmp_path / "chroma-data")
    srv.start()
    yield srv
    srv.stop()


def http_store(srv: ChromaServer, **kw: object) -> AnchorStore:
    return AnchorStore(host="127.0.0.1", port=srv.port, embedder=HashingEmbedder(), **kw)  # type: ignore[arg-type]


def test_server_store_behaves_like_embedded(server: ChromaServer) -> None:
    remote, local = http_store(server), AnchorStore(embedder=HashingEmbedder())
    for s in (remote, local):
        s.add(sample_outcomes())
        s.add(sample_outcomes())  # idempotent
        s.add([Outcome(query=sample_outcomes()[0].query, model="late", correct=1.0, output_tokens=3)])
    assert remote.count() == local.count() == 20
    q = ["write a sonnet poem about the red moon"]  # an anchor: a unique top hit
    [r_hits], [l_hits] = remote.query(remote.embed(q), k=5), local.query(local.embed(q), k=5)
    assert r_hits[0].anchor_id == l_hits[0].anchor_id  # the lexical hashing embedder ties the rest
    assert [h.similarity for h in r_hits] == pytest.approx([h.similarity for h in l_hits], abs=1e-5)
    assert remote.model_stats() == local.model_stats()
    engines = [ScopeEngine(store=s, models=CARDS) for s in (remote, local)]
    assert all(e.wait_ready(timeout=60) for e in engines)
    d_remote, d_local = (e.route(q[0]) for e in engines)
    assert d_remote.model == d_local.model
    assert d_remote.estimates["small"].p_correct == pytest.approx(d_local.estimates["small"].p_correct)


WRITER = r"""
import sys
from scope_shared import AnchorStore, HashingEmbedder, Outcome
s = AnchorStore(host="127.0.0.1", port=int(sys.argv[1]), embedder=HashingEmbedder())
s.add([Outcome(query=f"question from process {sys.argv[2]} number {i}", model=sys.argv[2], correct=1.0) for i in range(25)])
print(s.count())
"""


def test_processes_sharing_a_server_see_each_other(server: ChromaServer) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(server.port), name], stdout=subprocess.PIPE, text=True)
        for name in ("alpha", "beta")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    store = http_store(server)
    stats = store.model_stats()
    assert store.count() == 50 and stats["alpha"].n == 25 and stats["beta"].n == 25


def test_outage_degrades_routing_and_loses_no_outcome(server: ChromaServer) -> None:
    store = http_store(server)
    store.add(sample_outcomes())
    # store_retry_s=0: the route after the restart goes to the store at once (the default skips it for 5 s)
    engine = ScopeEngine(store=store, models=CARDS, value_per_correct=1.0, store_retry_s=0)
    assert engine.wait_ready(timeout=60)
    poem = "write a sonnet poem about the amber moon"
    before = engine.route(poem)
    assert not before.degraded and before.model == "big"

    server.stop()
    during = engine.route(poem)  # last known statistics, no neighbours
    assert during.degraded and "anchor store unavailable" in during.reason
    recorded = [Outcome(query=f"asked during the outage {i}", model="small", correct=1.0, output_tokens=5) for i in range(3)]
    for o in recorded:
        engine.record(o)
    assert engine.pending == 3
    strict = ScopeEngine(store=store, models=CARDS, on_store_down="raise")
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        strict.route(poem)

    server.start()
    assert engine.flush() == 3 and engine.pending == 0
    assert engine.flush() == 0  # nothing written twice
    fresh = http_store(server)
    assert fresh.count() == 23
    assert fresh.model_stats(refresh=True)["small"].n == 23
    after = engine.route(poem)
    assert not after.degraded


def test_process_killed_while_recording_keeps_acknowledged_writes(server: ChromaServer, tmp_path: Path) -> None:
    code = r"""
import sys, time
from scope_shared import AnchorStore, HashingEmbedder, Outcome
s = AnchorStore(host="127.0.0.1", port=int(sys.argv[1]), embedder=HashingEmbedder())
for i in range(10_000):
    s.add([Outcome(query=f"recorded outcome number {i}", model="m", correct=1.0)], progress=False)
    print(i, flush=True)   # acknowledged
"""
    proc = subprocess.Popen([sys.executable, "-c", code, str(server.port)], stdout=subprocess.PIPE, text=True)
    acked = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) >= 40:
            proc.kill()  # SIGKILL mid-run
            break
    proc.wait(timeout=30)
    store = http_store(server)
    ids = store.get([__import__("scope_shared.store", fromlist=["anchor_id"]).anchor_id(f"recorded outcome number {i}") for i in acked])
    assert len(ids) == len(acked)
    print(json.dumps({"acknowledged": len(acked), "found": len(ids)}))


def test_hnsw_settings_reach_the_server(server: ChromaServer) -> None:
    import chromadb

    def ef_search() -> int:
        client = chromadb.HttpClient(host="127.0.0.1", port=server.port)
        return int(client.get_collection(DEFAULT_COLLECTION).configuration["hnsw"]["ef_search"])

    store = http_store(server, hnsw={"ef_search": 200})
    store.add(sample_outcomes())
    assert ef_search() == 200
    assert http_store(server, hnsw={"ef_search": 48}).count() == store.count()
    assert ef_search() == 48


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()``'s result (or exception, raised); fails the test if it has not returned after ``seconds``."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - raised below, in the test's thread
            out.append((False, exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"still waiting after {seconds} s"
    ok, value = out[0]
    if not ok:
        raise value
    return value


def test_a_frozen_server_degrades_routing_like_a_dead_one(server: ChromaServer) -> None:
    store = http_store(server, timeout=2.0)
    store.add(sample_outcomes())
    # store_retry_s=0 and write_behind=0: this test checks recovery and retry the moment the server is back
    engine = ScopeEngine(store=store, models=CARDS, value_per_correct=1.0, store_retry_s=0, write_behind=0)
    assert engine.wait_ready(timeout=60)
    poem = "write a sonnet poem about the amber moon"
    assert not engine.route(poem).degraded
    server.freeze()  # SIGSTOP: the port still accepts connections, nothing answers
    try:
        t0 = time.monotonic()
        during = within(60, lambda: engine.route(poem))
        took = time.monotonic() - t0
        assert during.degraded and "did not answer within 2 s" in during.reason, during.reason
        assert during.model == "big" and took < 10, took  # last known statistics, after one timeout
        engine.record(Outcome(query="asked while the server hung", model="small", correct=1.0, output_tokens=5))
        assert engine.pending == 1  # kept for retry, as in an outage
    finally:
        server.thaw()
    assert not engine.route(poem).degraded and engine.pending == 0
    assert http_store(server).model_stats(refresh=True)["small"].n == 21


TOKEN = "proxy-token-0123456789abcdef"


@pytest.fixture
def proxy(server: ChromaServer, tmp_path: Path) -> Iterator[tuple[AuthTLSProxy, Path]]:
    ca, cert, key = make_tls_certs(tmp_path / "tls")
    front = AuthTLSProxy(upstream=server.port, token=TOKEN, cert=cert, key=key).start()
    yield front, ca
    front.stop()


def tls_store(front: AuthTLSProxy, **kw: Any) -> AnchorStore:
    return AnchorStore(host="127.0.0.1", port=front.port, ssl=True, embedder=HashingEmbedder(), timeout=10.0, **kw)


def test_through_an_authenticating_tls_proxy(proxy: tuple[AuthTLSProxy, Path]) -> None:
    front, ca = proxy
    store = tls_store(front, token=TOKEN, verify=ca)
    assert store.add(sample_outcomes()).anchors_new == 20
    decision = ScopeEngine(store=store, models=CARDS, value_per_correct=1.0).route("write a sonnet about the moon")
    assert not decision.degraded and decision.model == "big"
    assert front.refused == 0

    for wrong in ("not-the-token", None):
        with pytest.raises(StoreAccessError) as err:
            tls_store(front, token=wrong, verify=ca).count()
        says = "refused the credentials (HTTP 401)" if wrong else "requires credentials (HTTP 401)"
        assert str(err.value).startswith(f"Chroma at 127.0.0.1:{front.port} {says.split(' (')[0]}")
        assert says in str(err.value) and "not-the-token" not in str(err.value) and TOKEN not in str(err.value)
    assert front.refused == 2

    with pytest.raises(StoreAccessError) as err:
        tls_store(front, token=TOKEN).count()  # verify=True: the system CAs do not know the private CA
    text = str(err.value)
    assert text.startswith(f"TLS handshake with Chroma at 127.0.0.1:{front.port} failed: certificate verify failed: ")
    assert "pass verify=<CA bundle>" in text and "\n" not in text and TOKEN not in text


def test_cli_through_an_authenticating_tls_proxy(
    proxy: tuple[AuthTLSProxy, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    front, ca = proxy
    rows = tmp_path / "anchors.jsonl"
    rows.write_text("\n".join(json.dumps(r.model_dump()) for r in sample_outcomes()))
    monkeypatch.setenv("SCOPE_TEST_CHROMA_TOKEN", TOKEN)
    opts = ["--chroma-host", "127.0.0.1", "--chroma-port", str(front.port), "--chroma-ssl", "--chroma-ca", str(ca),
            "--chroma-token-env", "SCOPE_TEST_CHROMA_TOKEN", "--embedder", "hashing"]
    assert main(["ingest", *opts, "--estimator", "anchors", "-q", str(rows)]) == 0
    assert "20 new anchors" in capsys.readouterr().out
    assert main(["store", "check", *opts]) == 0
    assert "no drift" in capsys.readouterr().out
    no_ca = [o for o in opts if o not in ("--chroma-ca", str(ca))]
    assert main(["store", "check", *no_ca]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "certificate verify failed" in err and TOKEN not in err
