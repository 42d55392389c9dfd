"""Recording never loses an outcome silently and never blocks routing (issue: defects 1, 9)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from scope_shared import AnchorStore, HashingEmbedder, ModelCard, Outcome, ScopeEngine, StoreUnavailableError
from scope_shared.store import anchor_id

from .conftest import CARDS, sample_outcomes

ROOT = Path(__file__).resolve().parents[2]


def _store() -> AnchorStore:
    store = AnchorStore(embedder=HashingEmbedder())
    store.add(sample_outcomes())
    return store


def test_a_lone_surrogate_is_refused_when_the_outcome_is_built() -> None:
    with pytest.raises(ValidationError, match="lone surrogate"):
        Outcome(query="what is \ud800 plus 2", model="big", correct=1.0)
    with pytest.raises(ValidationError, match="surrogate|unicode"):
        ModelCard(name="gpt\udfff", input_per_mtok=1.0, output_per_mtok=1.0)


def test_a_query_with_a_lone_surrogate_still_routes() -> None:
    engine = ScopeEngine(store=_store(), models=CARDS, value_per_correct=1.0)
    assert engine.route("what is 3 plus \ud800 4 in arithmetic").model in {"big", "small"}


def test_an_outcome_the_store_rejects_is_dropped_and_kept_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = _store()
    real_add = store.add

    def add(outcomes: Any, **kw: Any) -> Any:
        if any("poison" in o.query for o in outcomes):
            raise TypeError("bad metadata value")  # what Chroma raised for a lone surrogate before validation
        return real_add(outcomes, **kw)

    store.add = add  # type: ignore[method-assign]
    unsent = tmp_path / "unsent.jsonl"
    engine = ScopeEngine(store=store, models=CARDS, write_behind=30.0, unsent=unsent)
    engine.record(Outcome(query="poison pill question", model="big", correct=1.0))
    engine.record(Outcome(query="a good question to keep", model="small", correct=0.0))
    with caplog.at_level(logging.ERROR):
        assert engine.flush() == 1
    assert engine.pending == 0
    assert "rejected the outcome of big" in caplog.text
    assert anchor_id("a good question to keep") in store.get([anchor_id("a good question to keep")])
    rejected = [json.loads(line) for line in (tmp_path / "unsent.jsonl.rejected").read_text().splitlines()]
    assert [r["query"] for r in rejected] == ["poison pill question"]
    assert engine.route("what is 2 plus 2 in arithmetic").model  # routing goes on


def test_outcomes_the_store_cannot_take_at_exit_are_replayed_by_the_next_engine(tmp_path: Path) -> None:
    store = _store()
    real_add = store.add
    down = True

    def add(outcomes: Any, **kw: Any) -> Any:
        if down:
            raise StoreUnavailableError("Chroma at x is unreachable")
        return real_add(outcomes, **kw)

    store.add = add  # type: ignore[method-assign]
    unsent = tmp_path / "unsent.jsonl"
    first = ScopeEngine(store=store, models=CARDS, write_behind=0.05, unsent=unsent)
    for i in range(3):
        first.record(Outcome(query=f"question number {i} asked while down", model="big", correct=1.0))
    first.close()
    assert first.pending == 0 and len(unsent.read_text().splitlines()) == 3
    down = False
    second = ScopeEngine(store=store, models=CARDS, unsent=unsent)
    assert second.flush() == 3 and not unsent.exists()
    assert len(store.get([anchor_id(f"question number {i} asked while down") for i in range(3)])) == 3


def test_routing_does_not_write_when_writing_behind() -> None:
    store = _store()
    engine = ScopeEngine(store=store, models=CARDS, write_behind=30.0)
    engine.record(Outcome(query="compose a haiku about a heron", model="big", correct=1.0))
    engine.route("what is 5 plus 6 in arithmetic")
    assert engine.pending == 1  # the writer thread's job, not the caller's
    engine.close()
    assert engine.pending == 0


def test_sigterm_writes_what_is_queued(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from scope_shared import AnchorStore, HashingEmbedder, ModelCard, Outcome, ScopeEngine
        store = AnchorStore(path={str(tmp_path / "store")!r}, embedder=HashingEmbedder())
        store.add([Outcome(query="seed question", model="big", correct=1.0)])
        cards = [ModelCard(name="big", input_per_mtok=1.0, output_per_mtok=1.0)]
        engine = ScopeEngine(store=store, models=cards, write_behind=60.0, unsent=None)
        for i in range(50):
            engine.record(Outcome(query=f"queued question {{i}}", model="big", correct=1.0))
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 30
    reopened = AnchorStore(path=tmp_path / "store", embedder=HashingEmbedder())
    assert reopened.count() == 51


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_a_program_with_its_own_sigterm_handler_keeps_it() -> None:
    code = textwrap.dedent(
        f"""
        import signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        mine = lambda s, f: None
        signal.signal(signal.SIGTERM, mine)
        from scope_shared import AnchorStore, HashingEmbedder, ModelCard, Outcome, ScopeEngine
        store = AnchorStore(embedder=HashingEmbedder())
        engine = ScopeEngine(store=store, models=[ModelCard(name="m", input_per_mtok=1, output_per_mtok=1)])
        engine.record(Outcome(query="q", model="m", correct=1.0))
        print(signal.getsignal(signal.SIGTERM) is mine)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
