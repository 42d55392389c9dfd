"""Secrets (Chroma tokens, auth headers) never reach logs, reprs, errors or decision metadata."""

from __future__ import annotations

import logging
import socket

import pytest

from scope_shared import AnchorStore, HashingEmbedder, ScopeEngine, StoreUnavailableError
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
    d = engine.route("what is 2 plus 2 in arithmetic", reserve=False)
    dumped = d.model_dump_json() + str(d.summary())
    assert "SECRET" not in dumped
