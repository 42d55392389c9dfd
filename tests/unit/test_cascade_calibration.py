"""Fitting the cascade's posterior on anchors: it recovers the parameters that generated the answers."""

from __future__ import annotations

import numpy as np
import pytest

from scope_shared import AnchorStore, HashingEmbedder, Outcome
from scope_shared.cascade import CalibrationRow, CascadeCalibration, fit_calibration, fit_calibration_from_store
from scope_shared.cascade.posterior import Quadrature, correct_curves
from scope_shared.errors import ConfigError, DataError
from scope_shared.estimators import AnchorStatsEstimator
from scope_shared.types import NO_ANSWER
from tests.unit.cascade_fixtures import CARDS

MODELS = ("m0", "m1", "m2", "m3")
QUAD = Quadrature.of(10)


def simulate(
    n: int, *, loading: float, collision: float, unparsed: float, seed: int, kind: str = "number"
) -> list[CalibrationRow]:
    """Anchors drawn from the posterior's own generative model (numbers as answers)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        d = rng.normal()
        priors = rng.uniform(0.35, 0.9, size=len(MODELS))
        curves = correct_curves(priors, np.full(len(MODELS), loading), QUAD)
        wrong: list[str] = []
        outcomes: dict[str, tuple[float, str | None]] = {}
        for j, m in enumerate(MODELS):
            if rng.random() < unparsed:
                outcomes[m] = (0.0, None)
                continue
            if rng.random() < np.interp(d, QUAD.nodes[:, 0], curves[j]):
                outcomes[m] = (1.0, "42")
            elif wrong and rng.random() < min(collision * len(wrong), 1.0):
                outcomes[m] = (0.0, wrong[int(rng.integers(len(wrong)))])
            else:
                wrong.append(str(100 + len(wrong)))
                outcomes[m] = (0.0, wrong[-1])
        # the pre-hoc estimate is P(correct) including unreadable answers
        prehoc = {m: float(priors[j] * (1 - unparsed)) for j, m in enumerate(MODELS)}
        rows.append(CalibrationRow(anchor_id=f"a{i}", kind=kind, outcomes=outcomes, prehoc=prehoc))
    return rows


def test_fit_recovers_collision_unparsed_rate_and_loading() -> None:
    cal = fit_calibration(simulate(800, loading=1.5, collision=0.3, unparsed=0.1, seed=0))
    k = cal.group("number")
    assert k.collision == pytest.approx(0.3, abs=0.06)
    assert all(v == pytest.approx(0.1, abs=0.03) for v in k.unparsed.values())
    assert k.default_loading[0] == pytest.approx(1.5, abs=0.5)
    assert cal.parsed_p("number", "m0", 0.45) == pytest.approx(0.45 / (1 - k.unparsed["m0"]))
    lls = cal.report["groups"]["number"]["loglik"]
    assert lls["shared"] > lls["independent"]


def test_independent_errors_fit_a_small_loading() -> None:
    cal = fit_calibration(simulate(800, loading=0.0, collision=0.3, unparsed=0.0, seed=1))
    assert cal.group("number").default_loading[0] <= 0.5


def test_fitted_posterior_is_calibrated_on_its_anchors() -> None:
    cal = fit_calibration(simulate(800, loading=1.5, collision=0.3, unparsed=0.05, seed=2))
    check = cal.report["posterior_check"]
    assert check["fitted"]["ece"] < 0.05
    assert abs(check["fitted"]["mean_p"] - check["fitted"]["accuracy"]) < 0.03


def test_neighbours_move_a_querys_collision_probability() -> None:
    rows = simulate(300, loading=0.0, collision=0.3, unparsed=0.0, seed=3)
    cal = fit_calibration(rows)
    hot = [r.anchor_id for r in rows if cal.anchors[r.anchor_id][1] > 0]
    hits = {a: cal.anchors[a][:2] for a in hot}
    colliding = [a for a, (h, n) in hits.items() if h == n][:5]
    apart = [a for a, (h, _) in hits.items() if h == 0][:5]
    base = cal.collision_for("number")
    assert cal.collision_for("number", [(a, 1.0) for a in colliding]) > base
    assert cal.collision_for("number", [(a, 1.0) for a in apart]) < base
    assert cal.collision_for("number", [("unknown", 1.0)]) == pytest.approx(base)


def test_json_round_trip_and_errors() -> None:
    cal = fit_calibration(simulate(200, loading=1.0, collision=0.3, unparsed=0.05, seed=4))
    back = CascadeCalibration.from_json(cal.to_json())
    assert back.groups == cal.groups
    assert back.anchors == cal.anchors
    assert back.collision_for("number", [("a1", 0.9)]) == cal.collision_for("number", [("a1", 0.9)])
    with pytest.raises(DataError):
        CascadeCalibration.from_json('{"format": 7}')
    with pytest.raises(DataError):
        CascadeCalibration.from_json('{"format": 2}')
    with pytest.raises(DataError):
        fit_calibration([])
    with pytest.raises(ConfigError, match="calibrated: \\['number'\\]"):
        cal.group("choice")
    with pytest.raises(ConfigError, match="calibrated"):
        cal.group_for("choice", [("a1", 1.0)])


def answers_store(n: int, *, with_answers: bool = True) -> AnchorStore:
    """A store of ``n`` choice anchors: tiny's answer is unreadable on every other one, strong's always right."""
    rng = np.random.default_rng(7)
    store = AnchorStore(embedder=HashingEmbedder())
    rows = []
    for i in range(n):
        query = f"question {i} about {('planets', 'rivers', 'metals')[i % 3]}: (A) one (B) two (C) three"
        gold = "ABC"[i % 3]
        for model in ("tiny", "mid", "strong"):
            right = model == "strong" or rng.random() < 0.6
            answer = gold if right else "ABC"[("ABC".index(gold) + 1) % 3]
            if model == "tiny" and i % 2:
                answer, right = NO_ANSWER, False
            rows.append(
                Outcome(
                    query=query,
                    model=model,
                    correct=float(right),
                    output_tokens=20,
                    input_tokens=30,
                    answer=answer if with_answers else None,
                )
            )
    store.add(rows, progress=False)
    return store


def test_fit_calibration_from_store_reads_the_recorded_answers() -> None:
    store = answers_store(60)
    cal = fit_calibration_from_store(
        store, CARDS, grader="choice", estimator_factory=lambda: AnchorStatsEstimator(k=5), k=5, folds=3
    )
    assert cal.kinds == ["choice"] and cal.report["anchors"] == 60
    assert cal.unparsed("choice", "tiny") == pytest.approx((30 + 0.5) / (60 + 1))  # every other answer unreadable
    assert cal.unparsed("choice", "strong") == pytest.approx(0.5 / 61)
    # wrong readable answers are always the letter after the gold: every pair of wrong answers coincides
    group = cal.group("choice")
    assert group.collision_pairs > 0 and group.collision == pytest.approx(
        (group.collision_pairs + 1) / (group.collision_pairs + 2)
    )


def test_fit_calibration_from_store_needs_recorded_answers() -> None:
    with pytest.raises(DataError, match="carries a recorded answer"):
        fit_calibration_from_store(answers_store(10, with_answers=False), CARDS, grader="choice")
    with pytest.raises(ConfigError, match="unknown grader kind"):
        fit_calibration_from_store(answers_store(10), CARDS, grader="letters")
