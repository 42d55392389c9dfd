"""Metrics with one implementation: AUROC, ECE, AIQ, the single-model hull and lift over it."""

from __future__ import annotations

import numpy as np
import pytest

from scope_shared.evaluation import ReplayTable, routing_report
from scope_shared.metrics import aiq, auroc, expected_calibration_error, hull_accuracy, hull_aiq, upper_hull


def test_auroc_averages_ties_and_needs_both_classes() -> None:
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.5, 0.5], [0, 1]) == 0.5
    assert auroc([0.2, 0.3], [1, 1]) is None


def test_ece_is_the_weighted_gap_per_bin() -> None:
    assert expected_calibration_error([0.05, 0.05, 0.95, 0.95], [0, 0, 1, 1]) == pytest.approx(0.05)
    assert np.isnan(expected_calibration_error([], []))


def test_hull_drops_points_under_a_chord_and_dominated_points() -> None:
    points = [(1.0, 0.5), (2.0, 0.6), (3.0, 0.9), (4.0, 0.8), (0.5, 0.4)]
    assert upper_hull(points) == [(0.5, 0.4), (3.0, 0.9)]  # (1.0, 0.5) lies on the chord: not a vertex
    # a mixture half-way between the two outer vertices
    assert float(hull_accuracy(upper_hull(points), 2.0)) == pytest.approx(0.7)


def test_hull_aiq_integrates_the_mixture_line() -> None:
    points = [(1.0, 0.5), (3.0, 0.9)]
    assert hull_aiq(points, 1.0, 3.0, steps=201) == pytest.approx(0.7)
    # the router's step curve reaches 0.9 only at cost 3: it sits under the mixture line
    assert aiq(points, 1.0, 3.0, steps=201) == pytest.approx((200 * 0.5 + 0.9) / 201, abs=1e-9)
    assert aiq(points, 3.0, 1.0) is None


def _table(p: list[list[float]], correct: list[list[float]], cost: list[float]) -> ReplayTable:
    n = len(p)
    costs = np.tile(np.array(cost), (n, 1))
    return ReplayTable([f"q{i}" for i in range(n)], ["cheap", "strong"], np.array(p), costs, np.array(correct), costs)


def test_lift_over_singles_is_positive_only_when_routing_beats_mixing() -> None:
    n = 40
    cheap_right = [i % 2 == 0 for i in range(n)]
    correct = [[1.0 if ok else 0.0, 1.0] for ok in cheap_right]
    # estimates that rank the queries the cheap model gets wrong: better than any mixture of the two models
    sharp_p = [[0.9 if ok else 0.05 + 0.02 * i, 0.95] for i, ok in enumerate(cheap_right)]
    sharp = routing_report(_table(sharp_p, correct, [1.0, 10.0]))
    assert sharp["singles_hull"] == [{"cost": 1.0, "accuracy": 0.5}, {"cost": 10.0, "accuracy": 1.0}]
    assert sharp["hull_aiq"] == pytest.approx(0.75, abs=0.01)
    assert sharp["lift_over_singles"] == pytest.approx(sharp["aiq"] - sharp["hull_aiq"])
    assert sharp["lift_over_singles"] > 0.1
    # estimates that know nothing: the router can only switch between the singles, below the mixture line
    blind = routing_report(_table([[0.5, 0.9]] * n, correct, [1.0, 10.0]))
    assert blind["lift_over_singles"] < 0
