"""The learned estimator on synthetic item-response data, in the engine, and evaluate's holdout mode."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from scope_shared import (
    AnchorStore,
    ConfigError,
    HashingEmbedder,
    ModelCard,
    Outcome,
    ScopeEngine,
    StoreUnavailableError,
)
from scope_shared.cli import main
from scope_shared.estimators import AnchorOutcome, AnchorRecord, AnchorStatsEstimator, ModelStats, QueryContext
from scope_shared.estimators.learned import LearnedEstimator
from scope_shared.evaluation import auroc, evaluate, expected_calibration_error
from scope_shared.routing import build_routing
from tests.unit.conftest import CARDS, MATH, POEMS, sample_outcomes

DIM = 16
CLUSTERS = 6
DIFFICULTY = np.linspace(-1.5, 1.5, CLUSTERS)  # cluster 0 easiest
ABILITY = {"weak": -0.5, "mid": 0.5, "strong": 1.5}
LENGTH = {"weak": 3.0, "mid": 4.0, "strong": 5.0}


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


class World:
    """Clusters of questions with a difficulty each; models answer by a Rasch model."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        c = self.rng.normal(size=(CLUSTERS, DIM))
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.length = self.rng.normal(0, 0.7, CLUSTERS)

    def questions(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        cl = np.arange(n) % CLUSTERS
        x = self.centres[cl] + 0.25 * self.rng.normal(size=(n, DIM))
        return x / np.linalg.norm(x, axis=1, keepdims=True), cl

    def outcome(self, model: str, cluster: int) -> AnchorOutcome:
        correct = float(self.rng.random() < _sigmoid(ABILITY.get(model, 1.0) - DIFFICULTY[cluster]))
        tokens = math.expm1(LENGTH.get(model, 4.5) + self.length[cluster] + 0.1 * self.rng.normal())
        return AnchorOutcome(correct=correct, output_tokens=round(tokens))

    def anchors(
        self, n: int, models: tuple[str, ...] = tuple(ABILITY)
    ) -> tuple[list[AnchorRecord], np.ndarray, np.ndarray]:
        x, cl = self.questions(n)
        recs = [
            AnchorRecord(
                anchor_id=f"a{i}",
                question=f"question {i} of cluster {c}",
                similarity=1.0,
                outcomes={m: self.outcome(m, int(c)) for m in models},
            )
            for i, c in enumerate(cl)
        ]
        return recs, x, cl


def stats_of(recs: list[AnchorRecord]) -> dict[str, ModelStats]:
    by: dict[str, list[AnchorOutcome]] = {}
    for r in recs:
        for m, o in r.outcomes.items():
            by.setdefault(m, []).append(o)
    return {
        m: ModelStats(
            n=len(v),
            p_correct=float(np.mean([o.correct for o in v])),
            mean_log_tokens=float(np.mean([math.log1p(o.output_tokens or 0) for o in v])),
            n_tokens=len(v),
        )
        for m, v in by.items()
    }


def context(
    x: np.ndarray, recs: list[AnchorRecord], emb: np.ndarray, *, r: int = 30, embedding: bool = True
) -> QueryContext:
    sims = emb @ x
    top = np.argsort(-sims)[:r]
    anchors = tuple(
        AnchorRecord(
            anchor_id=recs[i].anchor_id, question=recs[i].question, similarity=float(sims[i]), outcomes=recs[i].outcomes
        )
        for i in top
    )
    return QueryContext(
        query="a new question",
        input_tokens=50.0,
        anchors=anchors,
        stats=stats_of(recs),
        embedding=list(x) if embedding else None,
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[World, LearnedEstimator, list[AnchorRecord], np.ndarray]:
    world = World(0)
    recs, emb, _ = world.anchors(900)
    est = LearnedEstimator(k=10)
    est.fit_anchors(recs, emb, [50.0] * len(recs))
    return world, est, recs, emb


def test_loo_fit_recovers_difficulty_and_ability_ordering(
    fitted: tuple[World, LearnedEstimator, list[AnchorRecord], np.ndarray],
) -> None:
    world, est, recs, emb = fitted
    rep = est.report
    assert rep is not None and rep.anchors == 900 and rep.models == 3
    assert rep.loo_auroc_within_model is not None and rep.loo_auroc_within_model > 0.65
    x, cl = world.questions(CLUSTERS * 20)
    ctxs = [context(xi, recs, emb) for xi in x]
    preds = est._predict(ctxs, list(ABILITY))
    p = np.array([[row[m].p_correct for m in ABILITY] for row in preds])
    by_cluster = np.array([p[cl == c].mean(axis=0) for c in range(CLUSTERS)])
    # harder clusters get lower p for every model; stronger models get higher p in every cluster
    assert np.all(np.diff(by_cluster, axis=0) < 0)
    assert np.all(np.diff(by_cluster, axis=1) > 0)


def test_calibrated_on_fresh_questions_and_monotone_in_neighbour_record(
    fitted: tuple[World, LearnedEstimator, list[AnchorRecord], np.ndarray],
) -> None:
    world, est, recs, emb = fitted
    assert est.report is not None and est.report.loo_ece is not None and est.report.loo_ece < 0.05
    x, cl = world.questions(600)
    ctxs = [context(xi, recs, emb) for xi in x]
    preds = est._predict(ctxs, ["mid"])
    p = np.array([row["mid"].p_correct for row in preds])
    y = np.array([world.outcome("mid", int(c)).correct for c in cl])
    assert expected_calibration_error(p, y) < 0.06
    # more of the model's own neighbours correct -> higher p (a positive weight on its neighbour record)
    base = ctxs[0]
    ps = []
    for n_right in range(0, 11, 2):
        anchors = tuple(
            AnchorRecord(
                anchor_id=a.anchor_id,
                question=a.question,
                similarity=a.similarity,
                outcomes={**a.outcomes, "mid": AnchorOutcome(correct=float(i < n_right), output_tokens=50)},
            )
            for i, a in enumerate(base.anchors)
        )
        ctx = QueryContext(
            query=base.query, input_tokens=50.0, anchors=anchors, stats=base.stats, embedding=base.embedding
        )
        ps.append(est._predict([ctx], ["mid"])[0]["mid"].p_correct)
    assert all(b > a for a, b in zip(ps, ps[1:], strict=False))


def test_length_follows_model_and_cluster(
    fitted: tuple[World, LearnedEstimator, list[AnchorRecord], np.ndarray],
) -> None:
    world, est, recs, emb = fitted
    x, cl = world.questions(CLUSTERS * 10)
    preds = est._predict([context(xi, recs, emb) for xi in x], list(ABILITY))
    err = [
        abs(math.log1p(row[m].output_tokens) - (LENGTH[m] + world.length[c]))
        for row, c in zip(preds, cl, strict=True)
        for m in ABILITY
    ]
    assert float(np.mean(err)) < 0.2


def test_new_model_with_few_anchors_needs_no_refit(
    fitted: tuple[World, LearnedEstimator, list[AnchorRecord], np.ndarray],
) -> None:
    world, est, recs, emb = fitted
    params = est._params
    # "new" answers only 12 anchors (2 per cluster); everything else is as before
    with_new = [
        AnchorRecord(
            anchor_id=r.anchor_id,
            question=r.question,
            similarity=1.0,
            outcomes={**r.outcomes, "new": world.outcome("new", i % CLUSTERS)} if i < 12 else r.outcomes,
        )
        for i, r in enumerate(recs)
    ]
    x, cl = world.questions(CLUSTERS * 40)
    preds = est._predict([context(xi, with_new, emb) for xi in x], ["new"])
    assert est._params is params
    p = np.array([row["new"].p_correct for row in preds])
    y = np.array([world.outcome("new", int(c)).correct for c in cl])
    score = auroc(p, y)
    assert score is not None and score > 0.65
    assert p[cl == 0].mean() > p[cl == CLUSTERS - 1].mean() + 0.2


def test_missing_embedding_is_marked(fitted: tuple[World, LearnedEstimator, list[AnchorRecord], np.ndarray]) -> None:
    world, est, recs, emb = fitted
    x, _ = world.questions(1)
    row = est._predict([context(x[0], recs, emb, embedding=False)], ["mid"])[0]["mid"]
    assert row.degraded and "no query embedding" in row.reason
    assert 0.0 < row.p_correct < 1.0


def test_too_few_outcomes_means_anchor_statistics() -> None:
    world = World(1)
    recs, emb, _ = world.anchors(12)
    est = LearnedEstimator(k=5)
    rep = est.fit_anchors(recs, emb, [10.0] * 12)
    assert "too few" in rep.note
    ctx = context(emb[0], recs[1:], emb[1:], r=11)
    mine = est.estimate([ctx], [ModelCard(name="mid", input_per_mtok=1, output_per_mtok=1)])[0]["mid"]
    plain = AnchorStatsEstimator(k=5).estimate([ctx], [ModelCard(name="mid", input_per_mtok=1, output_per_mtok=1)])[0][
        "mid"
    ]
    assert mine.p_correct == pytest.approx(min(max(plain.p_correct, 1e-3), 1 - 1e-3))
    assert "too few" in mine.reason


def test_unfitted_without_store_says_what_to_do() -> None:
    ctx = QueryContext(query="q", input_tokens=1.0, anchors=(), stats={"m": ModelStats(n=3, p_correct=0.5)})
    with pytest.raises(ConfigError, match="fit\\(store\\)"):
        LearnedEstimator()._predict([ctx], ["m"])
    with pytest.raises(ConfigError):
        LearnedEstimator(k=0)


def more_math(n: int, start: int = 100) -> list[Outcome]:
    rows = []
    for a in range(start, start + n):
        q = f"what is {a} plus {a + 1} in arithmetic"
        rows.append(Outcome(query=q, model="big", correct=1.0, output_tokens=10, input_tokens=8))
        rows.append(Outcome(query=q, model="small", correct=1.0, output_tokens=12, input_tokens=8))
    return rows


def test_engine_binds_store_fits_in_the_background_and_refits_on_growth(
    store: AnchorStore, cards: list[ModelCard]
) -> None:
    records, emb, in_tok = store.export()
    assert len(records) == store.count() == len(MATH) + len(POEMS)
    assert emb.shape[0] == len(records) and in_tok[0] in (8.0, 9.0)
    est = LearnedEstimator(k=5, min_fit_pairs=10, refit_check_s=0.0)  # count after every write
    engine = ScopeEngine(store=store, models=cards, estimator=est, k=5)
    assert est.wait_ready(timeout=30)
    assert est.fitted and est.report is not None and est.report.anchors == 20
    math_q, poem_q = "what is 40 plus 41 in arithmetic", "write a sonnet poem about the grey moon"
    d_math = engine.route(math_q, options={"reserve": False})
    assert d_math.estimate.estimator == "learned"
    d_poem = engine.route(poem_q, options={"reserve": False})
    assert d_math.estimates["small"].p_correct > d_poem.estimates["small"].p_correct
    assert d_poem.estimates["small"].output_tokens > d_math.estimates["small"].output_tokens
    store.add(more_math(10))  # 20 -> 30 anchors: beyond refit_growth (10%)
    engine.route(math_q, options={"reserve": False})
    est.wait_refit(timeout=30)
    assert est.report.anchors == 30


@pytest.mark.parametrize("check_s", [3600.0, 0.0])
def test_writes_between_decisions_count_the_store_at_most_every_refit_check_s(
    store: AnchorStore, cards: list[ModelCard], monkeypatch: pytest.MonkeyPatch, check_s: float
) -> None:
    est = LearnedEstimator(k=5, min_fit_pairs=10, refit_check_s=check_s)
    engine = ScopeEngine(store=store, models=cards, estimator=est, k=5)
    assert est.wait_ready(timeout=30)  # the fit counted the store: that count starts the refit_check_s clock
    engine.route("what is 40 plus 41 in arithmetic", options={"reserve": False})
    counts: list[str] = []  # the thread of each count (a background refit counts too)
    real_count = store.count
    monkeypatch.setattr(store, "count", lambda: counts.append(threading.current_thread().name) or real_count())
    for i in range(4):  # a router recording every call: a write between each two decisions
        store.add(more_math(1, start=500 + i))
        engine.route(f"what is {i} plus 7 in arithmetic", options={"reserve": False})
    assert counts.count(threading.main_thread().name) == (0 if check_s else 4)
    est.wait_refit(timeout=30)
    assert est.report is not None
    if check_s:
        assert est.report.anchors == 20  # not counted again within the hour: no refit
    else:
        assert est.report.anchors > 20  # counted each time: saw 23 > 20 * 1.1 and refitted


def test_registry_and_cli_know_learned() -> None:
    est, escalation = build_routing("learned", k=7)
    assert isinstance(est, LearnedEstimator) and est.k == 7 and escalation is None


def holdout_data() -> tuple[list[Outcome], list[Outcome]]:
    anchors = sample_outcomes() + more_math(10)
    test = []
    for q in ["what is 500 plus 501 in arithmetic", "write a sonnet poem about the pale moon"]:
        poem = "poem" in q
        test.append(Outcome(query=q, model="big", correct=1.0, output_tokens=300 if poem else 10, input_tokens=9))
        test.append(
            Outcome(
                query=q, model="small", correct=0.0 if poem else 1.0, output_tokens=200 if poem else 12, input_tokens=9
            )
        )
    return anchors, test


def test_evaluate_holdout_keeps_n_anchors_of_held_out_models() -> None:
    anchors, test = holdout_data()
    store = AnchorStore(embedder=HashingEmbedder())
    rep = evaluate(
        anchors,
        test,
        CARDS,
        store=store,
        estimator=LearnedEstimator(k=5, min_fit_pairs=10),
        holdout_models=["small"],
        holdout_anchors=6,
        holdout_seed=3,
    )
    stats = store.model_stats(refresh=True)
    assert stats["small"].n == 6 and stats["big"].n == 30
    ho = rep["holdout"]
    assert ho["anchors_kept"] == {"small": 6} and ho["seed"] == 3
    assert ho["auroc_per_model"]["small"] == rep["estimation"]["auroc_per_model"]["small"]
    assert set(ho["mean_share_over_curve"]) == {"small"}
    # the same seed keeps the same anchors
    store2 = AnchorStore(embedder=HashingEmbedder())
    evaluate(anchors, test, CARDS, store=store2, holdout_models=["small"], holdout_anchors=6, holdout_seed=3)
    kept = {r.question for r in store.export()[0] if "small" in r.outcomes}
    assert kept == {r.question for r in store2.export()[0] if "small" in r.outcomes}
    with pytest.raises(ConfigError, match="holdout models"):
        evaluate(anchors, test, CARDS, embedder=HashingEmbedder(), holdout_models=["nope"])
    assert "holdout" not in evaluate(anchors, test, CARDS, embedder=HashingEmbedder())


def test_cli_evaluate_learned_with_holdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    anchors, test = holdout_data()
    a, t = tmp_path / "a.jsonl", tmp_path / "t.jsonl"
    a.write_text("\n".join(json.dumps(r.model_dump()) for r in anchors))
    t.write_text("\n".join(json.dumps(r.model_dump()) for r in test))
    prices = tmp_path / "prices.csv"
    prices.write_text("model,input_per_mtok,output_per_mtok\nbig,10,30\nsmall,0.2,0.2\n")
    code = main(
        [
            "evaluate",
            "--anchors",
            str(a),
            "--test",
            str(t),
            "--prices",
            str(prices),
            "--embedder",
            "hashing",
            "--estimator",
            "learned",
            "--holdout-models",
            "small",
            "--holdout-anchors",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "estimator=learned" in out and "holdout: 1 models keep [4] anchors" in out


def test_query_that_is_an_anchor_moves_toward_its_recorded_outcome(
    fitted: tuple[World, LearnedEstimator, list[AnchorRecord], np.ndarray],
) -> None:
    world, est, recs, emb = fitted
    ctx = context(emb[0], recs[1:], emb[1:])

    def with_first(question: str) -> QueryContext:
        first = AnchorRecord(
            anchor_id="self",
            question=question,
            similarity=1.0,
            outcomes={"strong": AnchorOutcome(correct=0.0, output_tokens=5000)},
        )
        return QueryContext(
            query=ctx.query, input_tokens=50.0, anchors=(first, *ctx.anchors), stats=ctx.stats, embedding=ctx.embedding
        )

    twin = est._predict([with_first("a different text, same embedding")], ["strong", "weak"])[0]
    same = est._predict([with_first(ctx.query)], ["strong", "weak"])[0]
    w = est.exact_weight
    assert same["strong"].p_correct == pytest.approx((1 - w) * twin["strong"].p_correct)
    assert math.log1p(same["strong"].output_tokens) == pytest.approx(
        (1 - w) * math.log1p(twin["strong"].output_tokens) + w * math.log1p(5000)
    )
    assert "the query itself is an anchor" in same["strong"].reason
    assert same["weak"].p_correct == twin["weak"].p_correct and same["weak"].reason == ""


def test_a_batch_predicts_what_each_query_predicts_alone(
    fitted: tuple[World, LearnedEstimator, list[AnchorRecord], np.ndarray],
) -> None:
    """Queries are predicted in one vectorised pass; padding, groups and per-query cases must not leak."""
    world, est, recs, emb = fitted
    x, _ = world.questions(8)
    stats = stats_of(recs)
    ctxs = [context(xi, recs, emb, r=5 + 4 * i, embedding=i % 3 != 1) for i, xi in enumerate(x)]
    ctxs = [dataclasses.replace(c, stats=stats) if i % 2 else c for i, c in enumerate(ctxs)]  # equal, or the same
    ctxs.append(QueryContext(query="no anchors at all", input_tokens=10.0, anchors=(), stats=ctxs[0].stats))
    exact = ctxs[0].anchors[0]
    ctxs.append(
        QueryContext(
            query=exact.question, input_tokens=500.0, anchors=ctxs[0].anchors, stats=ctxs[0].stats, embedding=list(x[0])
        )
    )
    only_two = {m: st for m, st in stats_of(recs).items() if m != "weak"}  # a second statistics mapping
    ctxs.append(
        QueryContext(query="other stats", input_tokens=50.0, anchors=ctxs[1].anchors, stats=only_two, embedding=list(x[1]))
    )
    models = ["strong", "mid"]
    batch = est._predict(ctxs, models)
    assert len(batch) == len(ctxs)
    for ctx, got in zip(ctxs, batch, strict=True):
        alone = est._predict([ctx], models)[0]
        for m in models:
            assert got[m].p_correct == pytest.approx(alone[m].p_correct, abs=1e-12)
            assert got[m].output_tokens == pytest.approx(alone[m].output_tokens, rel=1e-12)
            assert got[m].p_std == pytest.approx(alone[m].p_std, rel=1e-12)
            assert (got[m].evidence, got[m].reason, got[m].degraded) == (
                alone[m].evidence,
                alone[m].reason,
                alone[m].degraded,
            )
    assert batch[1]["mid"].degraded and not batch[0]["mid"].degraded  # the second query has no embedding
    assert "the query itself is an anchor" in batch[-2]["strong"].reason
    # the anchors differ per query, so do the estimates: nothing of one query reached another
    assert len({round(row["mid"].p_correct, 9) for row in batch[:8]}) > 4


def test_engine_with_learned_estimator_routes(store: AnchorStore, cards: list[ModelCard]) -> None:
    engine = ScopeEngine(store=store, models=cards)  # the default
    assert isinstance(engine.estimator, LearnedEstimator)
    assert isinstance(engine.fallback, AnchorStatsEstimator)
    assert engine.estimator.wait_ready(timeout=30)
    d = engine.route("what is 7 plus 8 in arithmetic", options={"reserve": False})
    assert d.estimate.estimator == "learned"


def world_store(path: Path | None, n: int, seed: int = 0) -> AnchorStore:
    """A store holding ``n`` synthetic item-response anchors with their world embeddings."""
    world = World(seed)
    recs, emb, _ = world.anchors(n)
    vectors = {r.question: emb[i] for i, r in enumerate(recs)}
    store = AnchorStore(path=path, embedder=lambda texts: np.stack([vectors.get(t, emb[0]) for t in texts]))
    store.add(
        [
            Outcome(query=r.question, model=m, correct=o.correct, output_tokens=o.output_tokens, input_tokens=50)
            for r in recs
            for m, o in r.outcomes.items()
        ]
    )
    return store


def test_fit_is_saved_with_the_store_and_loaded_by_the_next_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = world_store(tmp_path, 300)
    first = LearnedEstimator(k=5)
    engine = ScopeEngine(
        store=store,
        models=[ModelCard(name=m, input_per_mtok=1, output_per_mtok=1) for m in ABILITY],
        estimator=first,
        k=5,
    )
    q = "question 7 of cluster 1"
    assert first.wait_ready(timeout=30)
    before = engine.estimate([q])[0][0]

    def no_fit(*_: object, **__: object) -> None:
        raise AssertionError("refitted although a fit is saved with the store")

    monkeypatch.setattr(LearnedEstimator, "fit", no_fit)
    reopened = AnchorStore(path=tmp_path, embedder=store.embedder)
    second = LearnedEstimator(k=5)
    engine2 = ScopeEngine(store=reopened, models=list(engine.models.values()), estimator=second, k=5)
    assert second.wait_ready(timeout=30)  # a fit attempt would have failed: not ready
    after = engine2.estimate([q])[0][0]
    assert second.report == first.report
    for m in ABILITY:
        assert after[m].p_correct == pytest.approx(before[m].p_correct, abs=1e-12)
        assert after[m].output_tokens == pytest.approx(before[m].output_tokens, rel=1e-9)
    # Another configuration has its own fit: it does not load this one.
    assert LearnedEstimator(k=7).load(reopened) is None


def test_unreadable_saved_fit_is_refitted(tmp_path: Path) -> None:
    store = world_store(tmp_path, 200)
    est = LearnedEstimator(k=5)
    store.save_state(est.state_key, "{not json")
    ScopeEngine(  # binding starts the load, which finds the text unreadable, then the fit
        store=store,
        models=[ModelCard(name=m, input_per_mtok=1, output_per_mtok=1) for m in ABILITY],
        estimator=est,
        k=5,
    )
    assert est.wait_ready(timeout=30)
    assert est.report is not None and est.report.anchors == 200
    assert json.loads(store.load_state(est.state_key) or "")["anchors"] == 200


def test_large_store_is_fitted_on_a_bounded_sample() -> None:
    store = world_store(None, 600)
    est = LearnedEstimator(k=5, max_fit_anchors=200, max_store_anchors=300, persist=False)
    report = est.fit(store)
    assert report.anchors == 600 and report.fit_anchors == 200
    assert "random 300 of 600 anchors" in report.note
    assert report.loo_auroc_within_model is not None and report.loo_auroc_within_model > 0.6
    with pytest.raises(ConfigError, match="max_store_anchors"):
        LearnedEstimator(max_fit_anchors=500, max_store_anchors=100)


def test_a_route_while_the_first_fit_runs_falls_back_after_ready_wait_s_and_says_so(
    store: AnchorStore, cards: list[ModelCard], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_export = store.export

    def slow_export() -> tuple[list[AnchorRecord], np.ndarray, list[float | None]]:
        release.wait(10)  # a fit in the caller's thread would hold the route here
        return real_export()

    monkeypatch.setattr(store, "export", slow_export)
    est = LearnedEstimator(k=5, min_fit_pairs=10, ready_wait_s=0.3)
    engine = ScopeEngine(store=store, models=cards, estimator=est, k=5)
    q = "what is 40 plus 41 in arithmetic"
    started = time.monotonic()
    decisions = [engine.route(q, options={"reserve": False}), asyncio.run(engine.aroute(q, options={"reserve": False}))]
    assert time.monotonic() - started < 5  # not held for the fit (it waits for release, 10 s)
    for d in decisions:
        assert d.degraded and "learned estimator is still fitting" in d.reason
        assert d.estimate.estimator == "anchors"
    assert not release.is_set() and not est.fitted
    assert not est.wait_ready(timeout=0.05)
    release.set()
    assert est.wait_ready(timeout=30)
    d = engine.route(q, options={"reserve": False})
    assert d.estimate.estimator == "learned" and not d.degraded


def test_the_first_route_on_a_store_with_a_saved_fit_uses_it(store: AnchorStore, cards: list[ModelCard]) -> None:
    LearnedEstimator.from_store(store, k=5, min_fit_pairs=10)  # fitted and saved with the store
    engine = ScopeEngine(store=store, models=cards, estimator=LearnedEstimator(k=5, min_fit_pairs=10), k=5)
    d = engine.route("what is 40 plus 41 in arithmetic", options={"reserve": False})  # at once, no wait_ready
    assert d.estimate.estimator == "learned" and not d.degraded


def test_a_store_down_at_construction_is_retried_by_a_later_prediction_not_every_one(
    store: AnchorStore, cards: list[ModelCard], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    down = [True]
    attempts: list[str] = []
    real_load = store.load_state

    def load_state(key: str) -> str | None:
        attempts.append(key)
        if down[0]:
            raise StoreUnavailableError("chroma is down (test)")
        return real_load(key)

    monkeypatch.setattr(store, "load_state", load_state)
    est = LearnedEstimator(k=5, min_fit_pairs=10, fit_retry_s=3600)
    with caplog.at_level(logging.WARNING, logger="scope_shared.estimators.learned"):
        engine = ScopeEngine(store=store, models=cards, estimator=est, k=5)  # does not raise
        assert not est.wait_ready(timeout=30)
    failed = [r for r in caplog.records if r.levelno == logging.WARNING and "could not load or fit" in r.getMessage()]
    assert len(failed) == 1 and "chroma is down (test)" in failed[0].getMessage()
    q = "what is 40 plus 41 in arithmetic"
    for _ in range(5):
        d = engine.route(q, options={"reserve": False})
        assert d.degraded and d.estimate.estimator == "anchors"
        assert "loading or fitting on its anchors failed" in d.reason and "chroma is down" in d.reason
    assert len(attempts) == 1  # not retried before fit_retry_s
    down[0] = False
    est.fit_retry_s = 0.0
    assert engine.route(q, options={"reserve": False}).degraded  # this prediction starts the retry; it does not wait for it
    assert est.wait_ready(timeout=30) and len(attempts) == 2
    assert engine.route(q, options={"reserve": False}).estimate.estimator == "learned"


@pytest.mark.parametrize(("coverage", "same"), [(0.2, True), (0.0, False)])
def test_a_sparsely_profiled_model_is_not_estimated_from_its_few_own_neighbours(coverage: float, same: bool) -> None:
    """fresh answered 2 of 20 anchors (10%): right on a sum and wrong on a poem, or the other way round. Its
    overall accuracy is 0.5 either way; below min_own_coverage the nearest of the two does not move it."""
    estimates = []
    for math_right in (1.0, 0.0):
        store = AnchorStore(embedder=HashingEmbedder())
        store.add(sample_outcomes())
        store.add([
            Outcome(query=MATH[0], model="fresh", correct=math_right, output_tokens=5),
            Outcome(query=POEMS[0], model="fresh", correct=1.0 - math_right, output_tokens=5),
        ])
        cards = [*CARDS, ModelCard(name="fresh", input_per_mtok=1.0, output_per_mtok=1.0)]
        engine = ScopeEngine(store=store, models=cards, estimator=LearnedEstimator(min_own_coverage=coverage))
        assert engine.wait_ready(timeout=30)
        estimates.append(engine.route("what is 0 plus 2 in arithmetic").estimates["fresh"].p_correct)
    assert (estimates[0] == pytest.approx(estimates[1])) is same


def test_min_own_coverage_is_a_share() -> None:
    with pytest.raises(ConfigError, match="min_own_coverage"):
        LearnedEstimator(min_own_coverage=1.5)


def test_exit_waits_for_a_background_fit_in_progress(
    store: AnchorStore, cards: list[ModelCard], monkeypatch: pytest.MonkeyPatch
) -> None:
    from scope_shared.estimators.learned import estimator as module

    gate = threading.Event()
    real_export = store.export

    def slow_export() -> object:
        gate.wait(5)
        return real_export()

    monkeypatch.setattr(store, "export", slow_export)
    est = LearnedEstimator(k=5, min_fit_pairs=10, persist=False)
    ScopeEngine(store=store, models=cards, estimator=est, k=5)
    thread = est._thread  # noqa: SLF001 - the fit the exit hook must wait for
    assert thread is not None and thread.is_alive()
    threading.Timer(0.3, gate.set).start()
    module._join_fits()  # what atexit runs: a daemon thread in native code at finalization can crash the process
    assert not thread.is_alive() and est.fitted
