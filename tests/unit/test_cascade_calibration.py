"""Fitting the cascade's posterior on anchors: it recovers the parameters that generated the answers."""

from __future__ import annotations

import numpy as np
import pytest

from scope_shared.cascade import CalibrationRow, CascadeCalibration, fit_calibration
from scope_shared.cascade.posterior import Quadrature, correct_curves
from scope_shared.errors import ConfigError, DataError

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
