from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from scope_shared import AnchorStore, ConfigError, DataError, HashingEmbedder, Outcome, StoreUnavailableError
from scope_shared.store import anchor_id

from .conftest import MATH, POEMS, CountingEmbedder, index_settings


class SpyCollection:
    """A real Chroma collection that logs each call's name and keyword arguments."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*a: Any, **kw: Any) -> Any:
            self.calls.append((name, kw))
            if name in self.fail:
                raise httpx.ConnectError("connection refused")
            return attr(*a, **kw)

        return call


def spy_on(store: AnchorStore) -> SpyCollection:
    spy = SpyCollection(store._col())
    store._conn._anchors = spy
    return spy


def stored_vectors(store: AnchorStore) -> dict[str, np.ndarray]:
    records, matrix, _ = store.export()
    return {r.anchor_id: matrix[i].copy() for i, r in enumerate(records)}


def test_add_and_query_most_similar_first(store: AnchorStore) -> None:
    assert store.count() == 20
    [hits] = store.query(store.embed(["what is 3 plus 4 in arithmetic"]), k=5)
    assert len(hits) == 5
    assert all("plus" in h.question for h in hits)
    sims = [h.similarity for h in hits]
    assert sims == sorted(sims, reverse=True)
    assert -1.0 <= sims[-1] <= sims[0] <= 1.0
    assert set(hits[0].outcomes) == {"big", "small"}


def test_readding_is_idempotent_and_new_model_updates_in_place(store: AnchorStore, outcomes: list[Outcome]) -> None:
    q = outcomes[0].query
    report = store.add(outcomes)
    assert (report.anchors_new, report.anchors_updated) == (0, 20)
    assert store.count() == 20
    store.add([Outcome(query=q, model="newcomer", correct=0.0, output_tokens=7)])
    rec = store.get([anchor_id(q)])[anchor_id(q)]
    assert set(rec.outcomes) == {"big", "small", "newcomer"}
    assert rec.outcomes["big"].correct == 1.0 and rec.outcomes["newcomer"].output_tokens == 7.0
    stats = store.model_stats()
    assert stats["newcomer"].n == 1 and stats["big"].n == 20
    assert stats["small"].p_correct == pytest.approx(0.5)


def test_malformed_row_rejects_whole_batch(store: AnchorStore) -> None:
    rows = [
        {"query": "a brand new question one", "model": "big", "correct": 1},
        {"query": "a brand new question two", "model": "big", "correct": 7},
    ]
    with pytest.raises(DataError, match="row 1") as err:
        store.add(rows)
    assert "0 outcomes from earlier batches" in str(err.value)
    assert store.count() == 20  # nothing half-written


def test_earlier_batches_stay_and_error_says_so() -> None:
    s = AnchorStore(embedder=HashingEmbedder())
    rows = [Outcome(query=f"question number {i}", model="m", correct=1.0) for i in range(5)]
    bad = {"query": "", "model": "m", "correct": 1}
    with pytest.raises(DataError, match="4 outcomes from earlier batches were written"):
        s.add([*rows, bad], batch_size=2)  # batches: [0,1] [2,3] [4,bad]
    assert s.count() == 4


def test_conflicting_duplicates_in_one_batch() -> None:
    s = AnchorStore(embedder=HashingEmbedder())
    rows = [Outcome(query="same question", model="m", correct=1.0), Outcome(query="same question", model="m", correct=0.0)]
    with pytest.raises(DataError, match="row 1: conflicts with row 0"):
        s.add(rows)
    assert s.count() == 0
    s.add([rows[0], rows[0]])  # identical duplicates are fine
    assert s.count() == 1


def test_persistent_reopen_and_embedder_mismatch(tmp_path, outcomes) -> None:  # type: ignore[no-untyped-def]
    s = AnchorStore(path=tmp_path / "db", embedder=HashingEmbedder())
    s.add(outcomes)
    again = AnchorStore(path=tmp_path / "db", embedder=HashingEmbedder())
    assert again.count() == 20
    other = AnchorStore(path=tmp_path / "db", embedder=HashingEmbedder(dim=64))
    with pytest.raises(ConfigError, match="built with embedder .hashing-bow/256|tail1000."):
        other.count()


def test_hnsw_settings_build_the_index_change_ef_search_and_guard_the_fixed_ones(
    tmp_path, outcomes  # type: ignore[no-untyped-def]
) -> None:
    s = AnchorStore(path=tmp_path / "db", embedder=HashingEmbedder(), hnsw={"ef_search": 300, "max_neighbors": 24})
    s.add(outcomes)
    assert {k: index_settings(tmp_path / "db")[k] for k in ("ef_search", "max_neighbors")} == {
        "ef_search": 300,
        "max_neighbors": 24,
    }
    # reopened with another ef_search: changed in place, the anchors stay searchable
    again = AnchorStore(path=tmp_path / "db", embedder=HashingEmbedder(), hnsw={"ef_search": 64})
    [hits] = again.query(again.embed([outcomes[0].query]), k=3)
    assert hits[0].question == outcomes[0].query
    assert {k: index_settings(tmp_path / "db")[k] for k in ("ef_search", "max_neighbors")} == {
        "ef_search": 64,
        "max_neighbors": 24,
    }
    # without hnsw, a store leaves the settings as they are
    assert AnchorStore(path=tmp_path / "db", embedder=HashingEmbedder()).count() == 20
    assert index_settings(tmp_path / "db")["ef_search"] == 64
    # a built index's graph settings can't change: refused, saying what the index has
    with pytest.raises(ConfigError, match="built with max_neighbors=24"):
        AnchorStore(path=tmp_path / "db", embedder=HashingEmbedder(), hnsw={"max_neighbors": 32}).count()
    for bad, says in (
        ({"space": "l2"}, "unknown hnsw settings"),
        ({"ef_search": 0}, "ef_search must be an integer >= 1"),
        ({"ef_search": 2.5}, "ef_search must be an integer >= 1"),
        ({"ef_search": True}, "ef_search must be an integer >= 1"),
        ({"resize_factor": 0.5}, "resize_factor must be a number >= 1"),
    ):
        with pytest.raises(ConfigError, match=says):
            AnchorStore(hnsw=bad)


def test_in_memory_stores_are_private(outcomes) -> None:  # type: ignore[no-untyped-def]
    a = AnchorStore(embedder=HashingEmbedder())
    b = AnchorStore(embedder=HashingEmbedder())
    a.add(outcomes)
    assert b.count() == 0


def test_backend_choice_is_validated() -> None:
    with pytest.raises(ConfigError, match="choose one backend"):
        AnchorStore(path="x", host="localhost")
    with pytest.raises(ConfigError, match="port"):
        AnchorStore(host="localhost", port=0)
    with pytest.raises(ConfigError, match="embed_cache must be >= 0"):
        AnchorStore(embed_cache=-1)


def test_secrets_not_in_repr() -> None:
    s = AnchorStore(host="chroma.example", port=8000, token="s3cr3t-token", headers={"X-Api-Key": "k3y-value"})
    assert "s3cr3t" not in repr(s) and "k3y" not in repr(s)
    assert s.backend == "http"


def test_input_tokens_ratio_learned(store: AnchorStore) -> None:
    store.model_stats()
    # 8 or 9 recorded tokens over ~37-40 characters
    assert 0.15 < store.tokens_per_char < 0.3
    assert store.estimate_input_tokens("x" * 400) == pytest.approx(400 * store.tokens_per_char, abs=1)


def test_outcomes_of_models_added_separately_are_all_kept() -> None:
    s = AnchorStore(embedder=HashingEmbedder())
    qs = [*MATH, *POEMS]
    assert s.add([Outcome(query=q, model="a", correct=1.0, output_tokens=5) for q in qs]).anchors_new == 20
    report = s.add([Outcome(query=q, model="b", correct=0.0, output_tokens=9) for q in qs])
    assert (report.anchors_new, report.anchors_updated) == (0, 20)
    recs = s.get([anchor_id(q) for q in qs])
    assert len(recs) == 20
    for rec in recs.values():
        assert rec.outcomes["a"].correct == 1.0 and rec.outcomes["a"].output_tokens == 5.0
        assert rec.outcomes["b"].correct == 0.0 and rec.outcomes["b"].output_tokens == 9.0
        assert rec.question in qs
    stats = s.model_stats()
    assert (stats["a"].n, stats["b"].n, stats["b"].p_correct) == (20, 20, 0.0)


def test_new_outcomes_on_stored_anchors_update_metadata_only(outcomes: list[Outcome]) -> None:
    emb = CountingEmbedder()
    s = AnchorStore(embedder=emb)
    s.add(outcomes)
    assert len(emb.texts) == 20
    probe = s.embed(["what is 3 plus 4 in arithmetic", "a sonnet poem about the moon"])
    emb.texts.clear()
    before_vectors = stored_vectors(s)
    before_hits = s.query(probe, k=20)
    spy = spy_on(s)

    report = s.add([Outcome(query=q, model="third", correct=1.0, output_tokens=3) for q in [*MATH, *POEMS]])

    assert (report.anchors_new, report.anchors_updated) == (0, 20)
    assert emb.texts == []  # nothing embedded again
    names = [name for name, _ in spy.calls]
    assert names == ["get", "update"]
    assert spy.calls[0][1]["include"] == ["metadatas"]  # no vector read (old metadata: running totals)
    assert set(spy.calls[1][1]) == {"ids", "metadatas"}  # no vector, no document written
    after_vectors = stored_vectors(s)
    assert after_vectors.keys() == before_vectors.keys()
    for rid, vec in before_vectors.items():
        assert np.array_equal(after_vectors[rid], vec)
    after_hits = s.query(probe, k=20)
    for before, after in zip(before_hits, after_hits, strict=True):
        assert [h.anchor_id for h in after] == [h.anchor_id for h in before]
        assert [h.similarity for h in after] == [h.similarity for h in before]
        assert [h.question for h in after] == [h.question for h in before]
        assert all(set(h.outcomes) == {"big", "small", "third"} for h in after)


def test_mixed_batch_embeds_only_new_anchors(outcomes: list[Outcome]) -> None:
    emb = CountingEmbedder()
    s = AnchorStore(embedder=emb)
    s.add(outcomes)
    emb.texts.clear()
    spy = spy_on(s)
    rows = [
        Outcome(query=MATH[0], model="third", correct=1.0),
        Outcome(query="an unseen question about rivers", model="third", correct=0.0),
        Outcome(query=POEMS[0], model="third", correct=0.0),
    ]
    report = s.add(rows)
    assert (report.anchors_new, report.anchors_updated) == (1, 2)
    assert emb.texts == ["an unseen question about rivers"]
    writes = {name: kw["ids"] for name, kw in spy.calls if name in ("upsert", "add", "update")}
    assert writes == {"upsert": [anchor_id(rows[1].query)], "update": [anchor_id(MATH[0]), anchor_id(POEMS[0])]}
    assert s.count() == 21
    rec = s.get([anchor_id(rows[1].query)])[anchor_id(rows[1].query)]
    assert rec.question == rows[1].query and set(rec.outcomes) == {"third"}
    [[hit, *_]] = s.query(s.embed([rows[1].query]), k=3)
    assert hit.anchor_id == anchor_id(rows[1].query) and hit.similarity == pytest.approx(1.0)


def test_update_failure_is_store_unavailable_and_readding_recovers(outcomes: list[Outcome]) -> None:
    s = AnchorStore(embedder=HashingEmbedder())
    s.add(outcomes)
    version = s.version
    spy = spy_on(s)
    spy.fail = {"update"}
    row = Outcome(query=MATH[1], model="third", correct=1.0)
    with pytest.raises(StoreUnavailableError, match="cannot update anchors"):
        s.add([row])
    assert s.version == version  # nothing counted as written
    spy.fail = set()
    assert s.add([row]).anchors_updated == 1
    assert "third" in s.get([anchor_id(MATH[1])])[anchor_id(MATH[1])].outcomes


def test_require_anchors_returns_the_count_and_version_counts_outcomes(store: AnchorStore) -> None:
    assert store.require_anchors() == 20
    assert store.version.split(":")[1:] == ["40", "1"]  # 20 anchors x 2 models, one write


def test_fill_reads_nearest_records_until_every_model_has_enough() -> None:
    s = AnchorStore(embedder=HashingEmbedder(), record_cache=0)
    rows = [Outcome(query=q, model="big", correct=1.0) for q in MATH]
    rows += [Outcome(query=q, model="new", correct=0.0) for q in MATH[7:]]  # "new" only on a few anchors
    s.add(rows)
    probe = s.embed([MATH[0]])
    [full] = s.query(probe, k=9)
    spy = spy_on(s)
    [only_big] = s.query(probe, k=9, fill=3, models=["big"])
    assert only_big == full[:3]
    assert [c for c, kw in spy.calls if c == "get"] == ["get"]
    assert sum(len(kw["ids"]) for c, kw in spy.calls if c == "get") == 3
    spy.calls.clear()
    [both] = s.query(probe, k=9, fill=3, models=["big", "new"])  # "new" is short among the nearest 3: read on
    assert both == full
    assert sum(len(kw["ids"]) for c, kw in spy.calls if c == "get") == 9
    assert s.query(probe, k=9, fill=3) == [full]  # no models named: everything is read


def test_questions_live_in_metadata() -> None:
    s = AnchorStore(embedder=HashingEmbedder(), record_cache=0)
    s.add([Outcome(query=MATH[0], model="big", correct=1.0)])
    got = s._col().get(include=["documents", "metadatas"])
    assert got["documents"] == [None]  # no full-text-indexed document
    assert got["metadatas"][0]["question"] == MATH[0]
    [hits] = s.query(s.embed([MATH[0]]), k=1)
    assert hits[0].question == MATH[0]
    assert s.get([anchor_id(MATH[0])])[anchor_id(MATH[0])].question == MATH[0]


def test_a_relative_store_path_means_the_directory_it_named_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = AnchorStore(path="anchors", embedder=HashingEmbedder())
    first.add([Outcome(query=MATH[0], model="big", correct=1.0)])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    second = AnchorStore(path="anchors", embedder=HashingEmbedder())  # Chroma caches clients by path string
    assert second.count() == 0 and first.count() == 1
    assert (tmp_path / "elsewhere" / "anchors").is_dir()
