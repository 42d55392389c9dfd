from __future__ import annotations

import numpy as np
import pytest

from scope_shared import HashingEmbedder, ModelCard, Outcome
from scope_shared.evaluation import ReplayTable, auroc, evaluate, expected_calibration_error, routing_report


def test_auroc_matches_pair_counting() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.integers(0, 2, 60).astype(float)
    pos, neg = s[y == 1], s[y == 0]
    want = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(s, y) == pytest.approx(want)
    assert auroc([0.1, 0.2], [1, 1]) is None
    assert auroc([0.1, 0.9], [0, 1]) == 1.0


def test_ece() -> None:
    assert expected_calibration_error([0.8] * 10, [1] * 8 + [0] * 2) == pytest.approx(0.0)
    assert expected_calibration_error([0.9] * 10, [0] * 10) == pytest.approx(0.9)


def table() -> ReplayTable:
    # 4 queries x 2 models: "a" expensive always right, "b" cheap right on half
    p = np.array([[0.9, 0.8], [0.9, 0.2], [0.9, 0.8], [0.9, 0.2]])
    correct = np.array([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=float)
    cost = np.array([[1.0, 0.1]] * 4)
    return ReplayTable([f"q{i}" for i in range(4)], ["a", "b"], p, cost.copy(), correct, cost)


def test_routing_report_figures() -> None:
    rep = routing_report(table(), values=[0.0, 2.0, None])
    assert rep["best_single"] == {"model": "a", "accuracy": 1.0, "cost": 1.0}
    assert rep["cheapest"] == {"model": "b", "accuracy": 0.5, "cost": pytest.approx(0.1)}
    assert rep["oracle"] == {"accuracy": 1.0, "cost": pytest.approx(0.1 * 0.5 + 1.0 * 0.5)}
    by_v = {pt["value_per_correct"]: pt for pt in rep["curve"]}
    assert by_v[0.0]["accuracy"] == 0.5 and by_v[None]["accuracy"] == 1.0
    # value 2: b where p=0.8 (0.8*2-0.1 > 0.9*2-1), a where p=0.2 -> all right at half the cost... plus b's
    assert by_v[2.0]["accuracy"] == 1.0 and by_v[2.0]["cost"] == pytest.approx(0.55)
    assert rep["router_cost_to_match_best_single"] == pytest.approx(0.55)
    assert rep["router_acc_at_best_single_cost"] == 1.0
    assert 0.5 < rep["aiq"] <= 1.0


def test_evaluate_end_to_end_on_synthetic_outcomes() -> None:
    from tests.unit.conftest import CARDS, MATH, POEMS, sample_outcomes

    anchors = sample_outcomes()
    test = []
    for q in ["what is 100 plus 101 in arithmetic", "write a sonnet poem about the pale moon"]:
        poem = "poem" in q
        test.append(Outcome(query=q, model="big", correct=1.0, output_tokens=300 if poem else 10, input_tokens=9))
        test.append(Outcome(query=q, model="small", correct=0.0 if poem else 1.0, output_tokens=200 if poem else 12, input_tokens=9))
    assert MATH and POEMS
    rep = evaluate(anchors, test, CARDS, embedder=HashingEmbedder())
    assert rep["estimation"]["pairs"] == 4
    assert rep["estimation"]["auroc_within_model"] == 1.0  # small: poem lower than arithmetic
    assert rep["routing"]["router_max_accuracy"] == 1.0
    by_v = {pt["value_per_correct"]: pt for pt in rep["routing"]["curve"]}
    assert by_v[0.0]["accuracy"] == 0.5 and by_v[0.0]["model_share"] == {"small": 1.0}
    assert by_v[None]["accuracy"] == 1.0 and by_v[None]["model_share"] == {"big": 1.0}
    assert rep["routing"]["router_cost_to_match_best_single"] == pytest.approx(1.0)
    unpriced = [ModelCard(name="big", input_per_mtok=1, output_per_mtok=1)]
    rep2 = evaluate(anchors, test, unpriced, embedder=HashingEmbedder())
    assert rep2["routing"]["pool"] == ["big"]
