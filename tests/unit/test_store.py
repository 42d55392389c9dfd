from __future__ import annotations

import pytest

from scope_shared import AnchorStore, ConfigError, DataError, HashingEmbedder, Outcome
from scope_shared.store import anchor_id


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


def test_secrets_not_in_repr() -> None:
    s = AnchorStore(host="chroma.example", port=8000, token="s3cr3t-token", headers={"X-Api-Key": "k3y-value"})
    assert "s3cr3t" not in repr(s) and "k3y" not in repr(s)
    assert s.backend == "http"


def test_input_tokens_ratio_learned(store: AnchorStore) -> None:
    store.model_stats()
    # 8 or 9 recorded tokens over ~37-40 characters
    assert 0.15 < store.tokens_per_char < 0.3
    assert store.estimate_input_tokens("x" * 400) == pytest.approx(400 * store.tokens_per_char, abs=1)
