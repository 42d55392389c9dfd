"""Secrets never reach logs, reprs, errors or decision metadata.

Chroma tokens and auth headers; the userinfo and query of the SCOPE server's URL, and its API key.
"""

from __future__ import annotations

import base64
import logging
import socket

import httpx
import pytest

from scope_shared import AnchorStore, HashingEmbedder, ScopeEngine, StoreUnavailableError
from scope_shared.errors import ConfigError, EstimatorUnavailableError
from scope_shared.estimators.scope import HTTPBackend, SamplingConfig, ScopeLLMEstimator
from scope_shared.estimators.scope.http import redact_url
from tests.unit.conftest import CARDS, sample_outcomes

TOKEN = "tok-7f3a9c-SECRET"
HEADER = "hdr-55e1-SECRET"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again once we return


def test_unreachable_server_error_and_logs_hold_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = AnchorStore(host="127.0.0.1", port=closed_port(), token=TOKEN, headers={"X-Key": HEADER}, embedder=HashingEmbedder())
    engine = ScopeEngine(store=store, models=CARDS)
    with pytest.raises(StoreUnavailableError) as err:
        engine.route("what is 2 plus 2")
    text = " ".join([str(err.value), repr(err.value), repr(store), repr(engine), caplog.text])
    assert "unreachable" in str(err.value)
    assert TOKEN not in text and HEADER not in text


def test_decision_metadata_holds_no_secret() -> None:
    store = AnchorStore(embedder=HashingEmbedder())
    store.add(sample_outcomes())
    engine = ScopeEngine(store=store, models=CARDS)
    d = engine.route("what is 2 plus 2 in arithmetic", options={"reserve": False})
    dumped = d.model_dump_json() + str(d.summary())
    assert "SECRET" not in dumped


# -- the vLLM side: credentials in the SCOPE server's URL and its API key ---------------------------------

PASSWORD = "pw-91c4-SECRET"
QUERY_KEY = "qs-3b8d-SECRET"
API_KEY = "key-c0de-SECRET"


def scope_url(port: int) -> str:
    return f"http://scope-user:{PASSWORD}@127.0.0.1:{port}/v1?token={QUERY_KEY}"


def test_vllm_url_credentials_are_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = closed_port()
    scope = ScopeLLMEstimator(base_url=scope_url(port), api_key=API_KEY, retries=1, backoff=0.0)
    store = AnchorStore(embedder=HashingEmbedder())
    store.add(sample_outcomes())
    engine = ScopeEngine(store=store, models=CARDS, estimator=scope)
    d = engine.route("what is 2 plus 2 in arithmetic", options={"reserve": False})
    assert d.degraded and "unavailable" in d.reason
    assert isinstance(scope.backend, HTTPBackend)
    shown = [
        d.reason,
        d.model_dump_json(),
        str(d.summary()),
        repr(scope),
        repr(engine),
        scope.backend.identity,
        scope.backend.base_url,
        caplog.text,
    ]
    for text in shown:
        assert "SECRET" not in text
    assert f"http://***@127.0.0.1:{port}/v1?token=***" in d.reason  # still says which server failed
    with pytest.raises(ConfigError) as err:
        ScopeLLMEstimator(base_url=f"ftp://scope-user:{PASSWORD}@host/v1?token={QUERY_KEY}")
    assert "SECRET" not in str(err.value) and "ftp://***@host/v1?token=***" in str(err.value)


def test_vllm_url_credentials_still_reach_the_server(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":  # model=None asks which model is served; this server refuses
            return httpx.Response(403, json={"error": {"message": "forbidden"}})
        return httpx.Response(503, json={"error": {"message": "overloaded"}})

    url = scope_url(8000)
    backend = HTTPBackend(base_url=url, model="scope", retries=1, backoff=0.0, transport=httpx.MockTransport(handler))
    with pytest.raises(EstimatorUnavailableError) as unavailable:
        backend.generate(["a prompt"], SamplingConfig(n=1))
    post = seen[0]
    assert str(post.url) == f"http://127.0.0.1:8000/v1/chat/completions?token={QUERY_KEY}"
    assert post.headers["authorization"] == "Basic " + base64.b64encode(f"scope-user:{PASSWORD}".encode()).decode()
    backend = HTTPBackend(base_url=url, model=None, retries=0, transport=httpx.MockTransport(handler))
    with pytest.raises(ConfigError) as refused:
        backend.generate(["a prompt"], SamplingConfig(n=1))
    assert str(seen[-1].url) == f"http://127.0.0.1:8000/v1/models?token={QUERY_KEY}"

    def echoing(request: httpx.Request) -> httpx.Response:  # a transport error that names the real URL
        raise httpx.ConnectError(f"cannot connect to {url}", request=request)

    backend = HTTPBackend(base_url=url, model="scope", retries=1, backoff=0.0, transport=httpx.MockTransport(echoing))
    with pytest.raises(EstimatorUnavailableError) as echoed:
        backend.generate(["a prompt"], SamplingConfig(n=1))
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("scope_shared"))
    for text in (str(unavailable.value), str(refused.value), str(echoed.value), ours):
        assert "SECRET" not in text and "127.0.0.1:8000" in text
    # httpx logs each request's URL at INFO: with its query (documented), never with the userinfo
    assert PASSWORD not in caplog.text


def test_redact_url() -> None:
    assert redact_url("http://u:p%40ss@host:8000/v1?a=1&b&c=#frag") == "http://***@host:8000/v1?a=***&***&c=***#***"
    assert redact_url("https://host/v1") == "https://host/v1"
    assert redact_url("user:pw@host:8000/v1") == "***@host:8000/v1"  # no scheme: still hidden
    assert redact_url("http://u:p@ss@host/v1") == "http://***@host/v1"  # an unescaped @ in the password
