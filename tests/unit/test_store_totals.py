"""Running outcome totals: model statistics without scanning the anchors, shared by every writer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from scope_shared import AnchorStore, HashingEmbedder, Outcome
from scope_shared.store.chroma import STATE_SUFFIX

from .conftest import MATH, POEMS, sample_outcomes


def scanned(store: AnchorStore) -> dict[str, tuple[int, float, int, float | None]]:
    """Each model's statistics counted the slow way, from every anchor's metadata."""
    out: dict[str, list[float]] = {}
    for meta in store.iter_metadata():
        for key, value in meta.items():
            kind, _, model = key.partition("::")
            acc = out.setdefault(model, [0, 0.0, 0, 0.0])
            if kind == "c":
                acc[0] += 1
                acc[1] += float(value)
            elif kind == "t":
                acc[2] += 1
                acc[3] += math.log1p(float(value))
    return {m: (int(n), c / n, int(nt), lt / nt if nt else None) for m, (n, c, nt, lt) in out.items() if n}


def as_tuples(store: AnchorStore) -> dict[str, tuple[int, float, int, float | None]]:
    return {m: (s.n, s.p_correct, s.n_tokens, s.mean_log_tokens) for m, s in store.model_stats(refresh=True).items()}


def assert_same(a: dict[str, tuple[int, float, int, float | None]], b: dict[str, tuple[int, float, int, float | None]]) -> None:
    assert a.keys() == b.keys()
    for model in a:
        assert a[model][0] == b[model][0] and a[model][2] == b[model][2], model
        assert a[model][1] == pytest.approx(b[model][1], abs=1e-9), model
        assert (a[model][3] is None) == (b[model][3] is None), model
        if a[model][3] is not None:
            assert a[model][3] == pytest.approx(b[model][3], abs=1e-9), model


def test_totals_match_a_full_scan_through_new_anchors_new_models_and_changed_outcomes() -> None:
    s = AnchorStore(embedder=HashingEmbedder())
    s.add(sample_outcomes())
    assert_same(as_tuples(s), scanned(s))
    # A new model on existing anchors, an outcome changed, a re-add of the same rows (idempotent).
    s.add([Outcome(query=q, model="third", correct=0.5, output_tokens=7) for q in MATH])
    s.add([Outcome(query=MATH[0], model="small", correct=0.0, output_tokens=99)])
    s.add(sample_outcomes()[4:10])
    assert_same(as_tuples(s), scanned(s))
    stats = s.model_stats()
    assert stats["third"].n == 10 and stats["third"].p_correct == pytest.approx(0.5)
    assert stats["small"].n == 20 and stats["small"].p_correct == pytest.approx(9 / 20)


def test_model_stats_reads_no_anchor_once_the_totals_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    s = AnchorStore(embedder=HashingEmbedder())
    s.add(sample_outcomes())

    def no_scan(self: AnchorStore) -> None:
        raise AssertionError("model_stats scanned the anchors")

    monkeypatch.setattr(AnchorStore, "iter_metadata", no_scan)
    assert s.model_stats(refresh=True)["big"].n == 20
    s.add([Outcome(query="a new question about rivers", model="big", correct=0.0, output_tokens=4)])
    assert s.model_stats()["big"].n == 21


def test_two_writers_on_one_store_see_each_others_totals(tmp_path: Path) -> None:
    a = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
    b = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
    a.add([Outcome(query=q, model="from-a", correct=1.0, output_tokens=3) for q in MATH])
    b.add([Outcome(query=q, model="from-b", correct=0.0, output_tokens=5) for q in [*MATH, *POEMS]])
    for store in (a, b):
        stats = store.model_stats(refresh=True)
        assert (stats["from-a"].n, stats["from-b"].n) == (10, 20)
    reopened = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
    assert_same(as_tuples(reopened), scanned(reopened))


def test_a_store_built_before_the_totals_is_counted_once(tmp_path: Path) -> None:
    old = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
    old.add(sample_outcomes())
    old._conn._client.delete_collection(old.collection_name + STATE_SUFFIX)  # as written by an older version
    reopened = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
    assert reopened.model_stats()["small"].n == 20
    reopened.add([Outcome(query=q, model="small", correct=1.0) for q in POEMS])  # flips 10 outcomes
    assert_same(as_tuples(reopened), scanned(reopened))


def test_rebuild_recounts_drifted_totals() -> None:
    s = AnchorStore(embedder=HashingEmbedder())
    s.add(sample_outcomes())
    s._side.put("stats:drift", {"n::big": 5.0, "c::big": 5.0})  # a writer that died mid-write
    assert s.model_stats(refresh=True)["big"].n == 25
    s.rebuild_stats()
    assert_same(as_tuples(s), scanned(s))


def test_tokens_per_char_follows_recorded_input_tokens() -> None:
    s = AnchorStore(embedder=HashingEmbedder())
    s.add([Outcome(query="x" * 400, model="m", correct=1.0, input_tokens=100)])
    s.model_stats()
    assert s.tokens_per_char == pytest.approx(0.25)
    s.add([Outcome(query="y" * 100, model="m", correct=1.0, input_tokens=50)])
    s.model_stats()
    assert s.tokens_per_char == pytest.approx(150 / 500)


def test_saved_state_is_shared_and_survives_reopening(tmp_path: Path) -> None:
    a = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
    assert a.load_state("fit") is None
    a.save_state("fit", '{"w": [1, 2]}')
    a.save_state("fit", '{"w": [3]}')
    assert AnchorStore(path=tmp_path, embedder=HashingEmbedder()).load_state("fit") == '{"w": [3]}'


def test_record_cache_serves_repeat_neighbourhoods_and_drops_what_this_store_writes(tmp_path: Path) -> None:
    a = AnchorStore(path=tmp_path, embedder=HashingEmbedder())
    a.add(sample_outcomes())
    probe = a.embed([MATH[2]])
    [[hit, *_]] = a.query(probe, k=3)
    assert "third" not in hit.outcomes
    a.add([Outcome(query=MATH[2], model="third", correct=1.0)])
    [[hit, *_]] = a.query(probe, k=3)
    assert hit.outcomes["third"].correct == 1.0  # own write: read again at once
    # Another writer's outcome shows after stats_ttl (here 0: at once); with the default TTL it may lag.
    b = AnchorStore(path=tmp_path, embedder=HashingEmbedder(), stats_ttl=0.0)
    b.query(probe, k=3)
    a.add([Outcome(query=MATH[2], model="fourth", correct=0.0)])
    [[hit, *_]] = b.query(probe, k=3)
    assert hit.outcomes["fourth"].correct == 0.0


def test_record_cache_can_be_turned_off() -> None:
    s = AnchorStore(embedder=HashingEmbedder(), record_cache=0)
    s.add(sample_outcomes())
    s.query(s.embed([MATH[0]]), k=3)
    assert not s._cache
