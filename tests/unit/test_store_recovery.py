"""Running totals that heal: a writer that stops between writing anchors and writing its totals (killed, or a
write that failed after the server applied it) leaves a journal that is counted exactly once; and
``scope-router store check`` / ``repair`` find and fix drift the journals cannot see."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from scope_shared import AnchorStore, HashingEmbedder, Outcome, StoreUnavailableError
from scope_shared.cli import main
from scope_shared.store.chroma import STATE_SUFFIX
from scope_shared.store.totals import STATS_BASE

from .conftest import MATH, POEMS
from .test_store import spy_on
from .test_store_totals import as_tuples, assert_same, scanned

ROOT = Path(__file__).resolve().parents[2]

FIRST = [Outcome(query=f"first batch question {i}", model="m", correct=float(i % 2), output_tokens=5) for i in range(30)]
SECOND = [
    *(Outcome(query=f"second batch question {i}", model="m", correct=1.0, output_tokens=7) for i in range(20)),
    *(Outcome(query=f"first batch question {i}", model="late", correct=1.0, output_tokens=9) for i in range(10)),
]

#: Writes FIRST, then dies (SIGKILL) between writing SECOND's anchors and its totals.
KILLED_WRITER = r"""
import os, signal, sys
from scope_shared import AnchorStore, HashingEmbedder
from scope_shared.store.totals import RunningTotals
from tests.unit.test_store_recovery import FIRST, SECOND
s = AnchorStore(path=sys.argv[1], embedder=HashingEmbedder())
s.add(FIRST)
RunningTotals.wrote = lambda self, records, before: os.kill(os.getpid(), signal.SIGKILL)
s.add(SECOND)
"""


def killed_midway(path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == -9  # killed at the point under test, not failed earlier


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["store", *argv])
    return code, capsys.readouterr().out


def test_kill_between_anchors_and_totals_is_reported_and_healed_by_rerunning_the_ingest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    killed_midway(path)
    opts = ("--store", str(path), "--embedder", "hashing")

    code, out = cli(capsys, "check", *opts)  # writes nothing: the drift is still there to see
    assert code == 1
    assert "50 anchors; in the running totals: 30" in out
    assert [ln.split()[:4] for ln in out.splitlines() if ln.startswith(("m ", "late "))] == [
        ["late", "10", "0", "-10"],
        ["m", "50", "30", "-20"],
    ]
    assert "unsettled batch journal" in out and "gone" in out
    assert "drift: 2 model(s) differ, by 30 outcomes; the totals count 30 anchors, not 50" in out
    assert cli(capsys, "check", *opts)[0] == 1

    store = AnchorStore(path=path, embedder=HashingEmbedder())
    with caplog.at_level(logging.WARNING, logger="scope_shared.store"):
        store.add(SECOND)  # the same ingest again: opening the store settles the dead writer's journal
    assert any("stopped between writing a batch and its totals" in r.getMessage() for r in caplog.records)
    assert_same(as_tuples(store), scanned(store))
    assert store.model_stats()["m"].p_correct == pytest.approx(35 / 50)
    code, out = cli(capsys, "check", *opts)
    assert code == 0 and "no drift" in out and "unsettled" not in out


def test_repair_fixes_the_drift_a_killed_writer_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    killed_midway(path)
    opts = ("--store", str(path), "--embedder", "hashing")
    assert cli(capsys, "check", *opts)[0] == 1
    code, out = cli(capsys, "repair", *opts)
    assert code == 0 and "recounted 50 anchors" in out and "late: 10 outcomes" in out and "m: 50 outcomes" in out
    code, out = cli(capsys, "check", *opts)
    assert code == 0 and "no drift" in out and "unsettled" not in out


def test_a_writer_killed_on_another_host_is_not_hidden_by_a_rerun_and_is_settled_once_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "store"
    killed_midway(path)
    side = AnchorStore(path=path, embedder=HashingEmbedder())._conn.side()
    [writer] = [rid for rid in side.get()["ids"] if rid.startswith("stats:") and rid != STATS_BASE]
    side.upsert(ids=[writer], embeddings=[[1.0]], metadatas=[{"host": "another-host"}])  # its pid means nothing here

    store = AnchorStore(path=path, embedder=HashingEmbedder())
    store.add(SECOND)  # a rerun within JOURNAL_STALE: that writer may still be alive, so it is left alone
    assert store.model_stats(refresh=True)["m"].n == 30
    code, out = cli(capsys, "check", "--store", str(path), "--embedder", "hashing")
    assert code == 1 and "on another-host" in out and "in flight, or gone elsewhere" in out  # not hidden

    later = AnchorStore(path=path, embedder=HashingEmbedder())
    later._totals._stale = 0.0  # JOURNAL_STALE has passed
    assert later.model_stats()["m"].n == 50
    assert_same(as_tuples(later), scanned(later))
    assert_same(as_tuples(store), scanned(store))


def test_opening_the_store_heals_it_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "store"
    killed_midway(path)
    store = AnchorStore(path=path, embedder=HashingEmbedder())
    assert store.model_stats()["late"].n == 10 and store.model_stats()["m"].n == 50
    assert not store.check_stats().drift


def test_repair_recounts_drift_no_journal_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    store = AnchorStore(path=path, embedder=HashingEmbedder())
    store.add(FIRST)
    # Drift of the kind journals cannot see (e.g. two writers counting one (anchor, model) at the same instant).
    side = store._conn.side()
    side.upsert(ids=[STATS_BASE], embeddings=[[1.0]], metadatas=[{"n::m": 7.0, "c::m": 7.0, "n::ghost": 3.0}])
    opts = ("--store", str(path), "--embedder", "hashing")
    code, out = cli(capsys, "check", *opts)
    assert code == 1 and "ghost" in out and "<- differs" in out
    code, out = cli(capsys, "repair", *opts)
    assert code == 0 and "recounted 30 anchors" in out and "m: 30 outcomes, p_correct 0.5000" in out
    code, out = cli(capsys, "check", *opts)
    assert code == 0 and "no drift" in out and "ghost" not in out


def test_check_on_a_missing_store_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "check", "--store", str(tmp_path / "none"), "--embedder", "hashing"]) == 2
    assert "no anchor store at" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


class LandsThenFails:
    """Makes one collection call apply its write and then raise, as a request that timed out after the server
    applied it (``before=True``: raise without applying, as a request that never arrived)."""

    def __init__(self, store: AnchorStore, method: str, *, before: bool = False) -> None:
        self.spy = spy_on(store)
        self.method, self.before, self.armed = method, before, True
        inner = getattr(self.spy.inner, method)

        def call(*a: Any, **kw: Any) -> Any:
            if self.armed:
                self.armed = False
                if not self.before:
                    inner(*a, **kw)
                raise httpx.ReadTimeout("timed out")
            return inner(*a, **kw)

        setattr(self.spy.inner, method, call)


@pytest.mark.parametrize("method", ["upsert", "update"])
def test_a_write_applied_by_the_server_but_reported_failed_is_counted_once(method: str) -> None:
    store = AnchorStore(embedder=HashingEmbedder())
    store.add([Outcome(query=q, model="big", correct=1.0, output_tokens=10) for q in MATH])
    LandsThenFails(store, method)
    batch = [
        *(Outcome(query=q, model="small", correct=0.0, output_tokens=4) for q in MATH),  # update: stored anchors
        *(Outcome(query=q, model="small", correct=1.0, output_tokens=40) for q in POEMS),  # upsert: new anchors
    ]
    with pytest.raises(StoreUnavailableError, match="did not answer"):
        store.add(batch)
    store.add(batch)  # what the engine's recorder does: write the same outcomes again
    assert_same(as_tuples(store), scanned(store))
    assert store.model_stats()["small"].n == 20
    assert not store.check_stats().drift


def test_the_writer_settles_its_own_journal_at_the_next_refresh() -> None:
    store = AnchorStore(embedder=HashingEmbedder())
    LandsThenFails(store, "upsert")
    with pytest.raises(StoreUnavailableError):
        store.add([Outcome(query=q, model="m", correct=1.0, output_tokens=3) for q in MATH])
    assert store.model_stats(refresh=True)["m"].n == 10
    assert_same(as_tuples(store), scanned(store))


def test_a_journal_whose_write_never_arrived_counts_nothing() -> None:
    store = AnchorStore(embedder=HashingEmbedder())
    LandsThenFails(store, "upsert", before=True)
    with pytest.raises(StoreUnavailableError):
        store.add([Outcome(query=q, model="m", correct=1.0, output_tokens=3) for q in MATH])
    assert store.model_stats(refresh=True) == {} and store.count() == 0
    store.add([Outcome(query=MATH[0], model="m", correct=0.0, output_tokens=3)])
    assert_same(as_tuples(store), scanned(store))
    assert store.model_stats()["m"].n == 1


def test_a_live_writers_journal_is_left_to_it_and_a_stale_one_is_settled_once(tmp_path: Path) -> None:
    writer = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
    LandsThenFails(writer, "upsert")
    with pytest.raises(StoreUnavailableError):
        writer.add([Outcome(query=q, model="m", correct=1.0, output_tokens=3) for q in MATH])

    reader = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
    assert "m" not in reader.model_stats()  # this process is alive: its writer may still be writing
    check = reader.check_stats()
    assert check.drift and len(check.journals) == 1 and "in flight" in check.journals[0]

    reader._totals._stale = 0.0  # as if the journal were older than JOURNAL_STALE: settled by the reader
    assert reader.model_stats(refresh=True)["m"].n == 10
    # The writer finds its journal settled and adopts the record instead of counting the batch again.
    writer.add([Outcome(query=POEMS[0], model="m", correct=0.0, output_tokens=3)])
    for s in (writer, reader):
        assert s.model_stats(refresh=True)["m"].n == 11
        assert_same(as_tuples(s), scanned(s))


def test_the_anchor_count_is_compared_once_per_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
    store.add(FIRST)
    store._conn.side().upsert(ids=[STATS_BASE], embeddings=[[1.0]], metadatas=[{"anchors": 5.0}])
    with caplog.at_level(logging.WARNING, logger="scope_shared.store"):
        fresh = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
        fresh.model_stats()
        fresh.model_stats(refresh=True)
    drift = [r for r in caplog.records if "count 35 anchors but the store holds 30" in r.getMessage()]
    assert len(drift) == 1 and "scope-router store check" in drift[0].getMessage()


def test_totals_side_collection_name_is_unchanged() -> None:
    """Stores written before the journals keep their totals: same side collection, same base record."""
    assert (STATE_SUFFIX, STATS_BASE) == (".state", "stats:base")


def test_a_journal_open_during_a_repair_is_not_counted_twice() -> None:
    store = AnchorStore(embedder=HashingEmbedder())
    LandsThenFails(store, "upsert")
    with pytest.raises(StoreUnavailableError):
        store.add([Outcome(query=q, model="m", correct=1.0, output_tokens=3) for q in MATH])
    other = AnchorStore(client=store._conn._client, collection=store.collection_name, embedder=HashingEmbedder())
    assert other.rebuild_stats()["m"].n == 10  # the recount includes the batch that landed
    store.add([Outcome(query=POEMS[0], model="m", correct=0.0, output_tokens=3)])
    assert store.model_stats(refresh=True)["m"].n == 11
    assert_same(as_tuples(store), scanned(store))


def test_a_refresh_while_a_batch_is_being_written_does_not_count_it_twice() -> None:
    store = AnchorStore(embedder=HashingEmbedder())
    spy = spy_on(store)
    upsert = spy.inner.upsert

    def upsert_then_refresh(*a: Any, **kw: Any) -> Any:
        out = upsert(*a, **kw)
        store.model_stats(refresh=True)  # another thread's refresh, between the anchors and the totals
        return out

    spy.inner.upsert = upsert_then_refresh
    store.add([Outcome(query=q, model="m", correct=1.0, output_tokens=3) for q in MATH])
    assert store.model_stats(refresh=True)["m"].n == 10
    assert_same(as_tuples(store), scanned(store))
