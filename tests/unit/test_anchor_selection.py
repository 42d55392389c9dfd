"""Anchor selection for a new model: select_anchors, the 2PL fit, and evaluate's / the CLI's holdout_select."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scope_shared import AnchorStore, ConfigError, HashingEmbedder, Outcome
from scope_shared.cli import main
from scope_shared.evaluation import evaluate
from scope_shared.holdout import hold_out
from scope_shared.suites.selection import SELECTION_STRATEGIES, fit_2pl, kmeans, select_anchors
from tests.unit.conftest import CARDS


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def world(
    seed: int = 0, sizes: tuple[int, ...] = (40, 30, 20, 10), models: int = 8, dim: int = 12
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Well-separated clusters of questions; reference models answer by a Rasch model.

    Returns ids, embeddings, outcomes (questions x models), cluster labels and true difficulties.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * 5.0
    labels = np.repeat(np.arange(len(sizes)), sizes)
    emb = centres[labels] + rng.normal(size=(len(labels), dim)) * 0.3
    difficulty = rng.normal(size=len(labels)) * 1.5
    ability = np.linspace(-1.5, 1.5, models)
    outcomes = (rng.random((len(labels), models)) < _sigmoid(ability[None, :] - difficulty[:, None])).astype(float)
    ids = [f"q{i:03d}" for i in range(len(labels))]
    return ids, emb, outcomes, labels, difficulty


@pytest.mark.parametrize("strategy", SELECTION_STRATEGIES)
def test_selection_is_n_distinct_candidates_and_deterministic_given_the_seed(strategy: str) -> None:
    ids, emb, out, _, _ = world()
    picked = select_anchors(ids, emb, out, n=15, seed=3, strategy=strategy)  # type: ignore[arg-type]
    assert len(picked) == len(set(picked)) == 15
    assert set(picked) <= set(ids) and picked == sorted(picked, key=ids.index)
    assert select_anchors(ids, emb, out, n=15, seed=3, strategy=strategy) == picked  # type: ignore[arg-type]
    others = {tuple(select_anchors(ids, emb, out, n=15, seed=s, strategy=strategy)) for s in range(4, 9)}  # type: ignore[arg-type]
    assert len(others | {tuple(picked)}) > 1  # the seed moves it


def test_selection_covers_every_cluster_in_proportion_to_its_size() -> None:
    ids, emb, out, labels, _ = world(sizes=(40, 30, 20, 10))
    for seed in range(5):
        picked = select_anchors(ids, emb, out, n=10, seed=seed)
        counts = np.bincount(labels[[ids.index(i) for i in picked]], minlength=4)
        assert counts.tolist() == [4, 3, 2, 1], seed


def test_selection_spans_the_difficulty_range_of_a_cluster() -> None:
    """One cluster, half easy and half hard anchors: the selection takes as many of each."""
    rng = np.random.default_rng(1)
    ids = [f"q{i}" for i in range(60)]
    emb = rng.normal(size=(1, 8)) * 5 + rng.normal(size=(60, 8)) * 0.1
    hard = np.arange(60) % 2 == 1
    out = np.where(hard[:, None], rng.random((60, 6)) < 0.1, rng.random((60, 6)) < 0.9).astype(float)
    for seed in range(5):
        picked = select_anchors(ids, emb, out, n=10, seed=seed, clusters=1)
        assert sum(hard[ids.index(i)] for i in picked) == 5, seed


def test_cluster_strategy_takes_one_central_anchor_per_cluster() -> None:
    ids, emb, out, labels, _ = world(sizes=(25, 25, 25, 25))
    picked = select_anchors(ids, emb, out, n=4, seed=0, strategy="cluster")
    assert sorted(labels[[ids.index(i) for i in picked]].tolist()) == [0, 1, 2, 3]


def test_fit_2pl_orders_anchors_by_difficulty_and_models_by_ability() -> None:
    ids, _, out, _, difficulty = world(sizes=(300,), models=20)
    out[::7, 3] = np.nan  # missing outcomes are skipped, not read as wrong
    items = fit_2pl(out)
    assert np.corrcoef(items.difficulty, difficulty)[0, 1] > 0.85
    assert np.all(np.diff(items.ability) > -0.5) and items.ability[-1] - items.ability[0] > 2.0
    assert np.all(items.discrimination > 0) and np.all(np.isfinite(items.information()))
    assert len(items.difficulty) == len(ids)


def test_kmeans_recovers_separated_clusters() -> None:
    _, emb, _, labels, _ = world(sizes=(30, 30, 30))
    found = kmeans(emb, 3, seed=0)
    # the same partition up to renaming
    assert len({(a, b) for a, b in zip(found.tolist(), labels.tolist(), strict=True)}) == 3


def test_selection_rejects_bad_arguments() -> None:
    ids, emb, out, _, _ = world()
    with pytest.raises(ConfigError, match="n must be in 0..100"):
        select_anchors(ids, emb, out, n=101)
    with pytest.raises(ConfigError, match="distinct"):
        select_anchors([*ids[:-1], ids[0]], emb, out, n=5)
    with pytest.raises(ConfigError, match="embeddings must be"):
        select_anchors(ids, emb[:-1], out, n=5)
    with pytest.raises(ConfigError, match="outcomes must be"):
        select_anchors(ids, emb, out[:-1], n=5)
    with pytest.raises(ConfigError, match=r"graded in \[0, 1\]"):
        select_anchors(ids, emb, out * 2, n=5)
    with pytest.raises(ConfigError, match="unknown selection strategy"):
        select_anchors(ids, emb, out, n=5, strategy="best")  # type: ignore[arg-type]
    assert select_anchors(ids, emb, out, n=0) == []
    assert select_anchors(ids, emb, out, n=len(ids)) == ids


def test_selection_without_reference_outcomes_still_covers_clusters() -> None:
    ids, emb, _, labels, _ = world(sizes=(20, 20))
    picked = select_anchors(ids, emb, np.empty((len(ids), 0)), n=4, seed=0)
    assert np.bincount(labels[[ids.index(i) for i in picked]]).tolist() == [2, 2]


# -- evaluate's holdout_select -------------------------------------------------------------------------------


def rows_world(flip_small: bool = False) -> tuple[list[Outcome], list[Outcome]]:
    """Arithmetic and poems; three reference models and 'small', the model held out."""
    rng = np.random.default_rng(0)
    anchors, test = [], []
    for i in range(60):
        poem = i % 3 == 0
        q = f"write a sonnet poem about the moon number {i}" if poem else f"what is {i} plus {i + 1} in arithmetic"
        for m, skill in (("big", 0.9), ("mid", 0.6), ("tiny", 0.3), ("small", 0.5)):
            p = skill * (0.5 if poem else 1.0) + (0.0 if poem else 0.1)
            c = float(rng.random() < p)
            if m == "small" and flip_small:
                c = 1.0 - c
            row = Outcome(query=q, model=m, correct=c, output_tokens=20, input_tokens=9)
            (test if i >= 50 else anchors).append(row)
    return anchors, test


WORLD_CARDS = [*CARDS, *(c.model_copy(update={"name": n}) for c in CARDS[1:] for n in ("mid", "tiny"))]


def kept_by_hold_out(anchors: list[Outcome], select: str, seed: int = 0) -> set[str]:
    store = AnchorStore(embedder=HashingEmbedder())
    known = {c.name for c in WORLD_CARDS}
    rows, kept = hold_out(anchors, ["small"], 8, seed, known, select=select, embed=store.embed)
    assert kept == {"small": 8}
    return {o.query for o in rows if o.model == "small"}


def test_informative_selection_never_reads_the_held_out_models_outcomes() -> None:
    anchors, _ = rows_world()
    flipped, _ = rows_world(flip_small=True)
    assert [o.correct for o in anchors if o.model == "small"] != [o.correct for o in flipped if o.model == "small"]
    for select in ("informative", *SELECTION_STRATEGIES):
        assert kept_by_hold_out(anchors, select) == kept_by_hold_out(flipped, select), select
    # ...while the reference models' outcomes do move it
    mid_flipped = [o.model_copy(update={"correct": 1.0 - o.correct}) if o.model == "mid" else o for o in anchors]
    moved = [
        kept_by_hold_out(anchors, "informative", s) != kept_by_hold_out(mid_flipped, "informative", s) for s in range(5)
    ]
    assert any(moved)


def test_random_selection_is_the_seeded_uniform_draw_of_before() -> None:
    anchors, _ = rows_world()
    queries = sorted({o.query for o in anchors if o.model == "small"})
    picked = np.random.default_rng([4, 0]).choice(len(queries), size=8, replace=False)
    assert kept_by_hold_out(anchors, "random", seed=4) == {queries[j] for j in picked}


def test_evaluate_holdout_select_informative_keeps_n_anchors() -> None:
    anchors, test = rows_world()
    store = AnchorStore(embedder=HashingEmbedder())
    rep = evaluate(
        anchors,
        test,
        WORLD_CARDS,
        store=store,
        holdout_models=["small"],
        holdout_anchors=8,
        holdout_select="informative",
    )
    assert store.model_stats(refresh=True)["small"].n == 8 and store.model_stats()["big"].n == 50
    assert rep["holdout"]["anchors_kept"] == {"small": 8} and rep["holdout"]["select"] == "informative"
    store2 = AnchorStore(embedder=HashingEmbedder())
    evaluate(anchors, test, WORLD_CARDS, store=store2, holdout_models=["small"], holdout_anchors=8)
    informative = {r.question for r in store.export()[0] if "small" in r.outcomes}
    assert informative == kept_by_hold_out(anchors, "informative")
    assert informative != {r.question for r in store2.export()[0] if "small" in r.outcomes}
    with pytest.raises(ConfigError, match="unknown holdout selection"):
        evaluate(anchors, test, WORLD_CARDS, embedder=HashingEmbedder(), holdout_select="best")


def test_cli_evaluate_holdout_select(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    anchors, test = rows_world()
    a, t = tmp_path / "a.jsonl", tmp_path / "t.jsonl"
    a.write_text("\n".join(json.dumps(r.model_dump()) for r in anchors))
    t.write_text("\n".join(json.dumps(r.model_dump()) for r in test))
    prices = tmp_path / "prices.csv"
    prices.write_text(
        "model,input_per_mtok,output_per_mtok\n"
        + "".join(f"{c.name},{c.input_per_mtok},{c.output_per_mtok}\n" for c in WORLD_CARDS)
    )
    argv = ["evaluate", "--anchors", str(a), "--test", str(t), "--prices", str(prices), "--embedder", "hashing",
            "--holdout-models", "small", "--holdout-anchors", "8", "--json", str(tmp_path / "r.json")]  # fmt: skip
    assert main([*argv, "--holdout-select", "informative"]) == 0
    assert "holdout: 1 models keep [8] anchors" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*argv, "--holdout-select", "best"])
