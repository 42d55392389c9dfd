"""Calibrating the answer posterior on the anchors: nothing in a cascade's evidence is hand-set.

Every parameter of :mod:`.posterior` is fitted on the anchors' recorded answers (the extracted answer the store
keeps with each outcome) and out-of-sample pre-hoc estimates of the anchors themselves (each anchor estimated by
an estimator that did not see it: :func:`~scope_shared.cascade.crossfit.crossfit_estimates`):

- ``unparsed``: per grader kind and model, how often its answer cannot be read (such an answer is never correct;
  a parsed answer's P(correct) is the pre-hoc P(correct) divided by the share it parses);
- ``collision``: per grader kind, the probability that two wrong parsed answers of different models to one anchor
  are the same answer; per query it is the similarity-weighted rate of the anchors behind the pre-hoc estimate,
  shrunk toward the kind's rate with a strength fitted by likelihood (:meth:`CascadeCalibration.collision_for`);
- ``loading``: per grader kind and model, how strongly its correctness goes with the query's latent difficulty,
  by maximum marginal likelihood of every anchor's pattern of grades given the pre-hoc estimates.

:func:`fit_calibration` also reports how well the fitted posterior is calibrated on the anchors, next to the
same posterior with independent models (loading 0), on pairs and triples of models. The fitted parameters and
their persistence are :mod:`.parameters` (re-exported here); calibrating on an anchor store is :mod:`.crossfit`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scope_shared.cascade.checkers import LogprobCalibration
from scope_shared.cascade.parameters import COLLISION_CLIP, CascadeCalibration, GroupCalibration, group_name
from scope_shared.cascade.posterior import P_CLIP, AnswerPosterior, Quadrature, correct_curves
from scope_shared.cascade.state import answer_cluster
from scope_shared.errors import DataError
from scope_shared.estimators.learned.fit import fit_logistic
from scope_shared.metrics import expected_calibration_error
from scope_shared.suites.graders import Grader, grader_named

__all__ = ["CalibrationRow", "CascadeCalibration", "GroupCalibration", "fit_calibration", "group_name"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

_STRENGTHS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 1e9)
_LOADINGS = tuple(float(v) for v in np.round(np.arange(0.0, 3.01, 0.25), 2))
_LOADINGS_2 = tuple(float(v) for v in np.round(np.arange(-3.0, 3.01, 0.5), 2))


@dataclass(frozen=True)
class CalibrationRow:
    """One anchor as calibration sees it.

    Attributes:
        anchor_id: the anchor's id in the store.
        kind: the grader kind of its question.
        outcomes: model -> (recorded grade, extracted answer or None when none could be read).
        prehoc: model -> out-of-sample pre-hoc P(correct) on this anchor.
        neighbours: (anchor id, cosine similarity) of the anchors behind that estimate.
        task: the task it comes from, where recorded (tasks with enough anchors get parameters of their own).
    """

    anchor_id: str
    kind: str
    outcomes: Mapping[str, tuple[float, str | None]]
    prehoc: Mapping[str, float]
    neighbours: Sequence[tuple[str, float]] = ()
    task: str | None = None


def _pair_stats(outcomes: Mapping[str, tuple[float, str | None]], grader: Grader) -> tuple[int, int]:
    wrong = [a for c, a in outcomes.values() if c < 0.5 and a is not None]
    hits = sum(1 for a, b in itertools.combinations(wrong, 2) if grader.agree(a, b))
    return hits, len(wrong) * (len(wrong) - 1) // 2


def _fit_strength(rows: Sequence[CalibrationRow], calibration: CascadeCalibration) -> float:
    """The pseudo-pairs of the group's rate that best predict each anchor's collisions from its neighbours'."""
    best, best_ll = 30.0, -math.inf
    prior = {
        row.anchor_id: calibration.group(calibration.group_for(row.kind, row.neighbours)).collision for row in rows
    }
    for strength in _STRENGTHS:
        ll = 0.0
        for row in rows:
            hits, pairs, _ = calibration.anchors[row.anchor_id]
            if pairs == 0:
                continue
            h = n = 0.0
            for aid, sim in row.neighbours:
                found = calibration.anchors.get(aid)
                if found is not None and aid != row.anchor_id:
                    w = max(sim, 0.0) ** 2
                    h += w * found[0]
                    n += w * found[1]
            rate = (h + strength * prior[row.anchor_id]) / (n + strength)
            rate = min(max(rate, COLLISION_CLIP), 1.0 - COLLISION_CLIP)
            ll += hits * math.log(rate) + (pairs - hits) * math.log(1.0 - rate)
        if ll > best_ll:
            best, best_ll = strength, ll
    return best


def _marginal_loglik(total: FloatArray, log_w: FloatArray) -> float:
    z = total + log_w[None, :]
    top = z.max(axis=1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(z - top).sum(axis=1))).sum())


def _fit_loadings(
    pt: FloatArray, y: FloatArray, has: npt.NDArray[np.bool_], quad: Quadrature
) -> tuple[FloatArray, FloatArray, dict[str, float]]:
    """Per-model loadings (models x factors) and a shared default, by coordinate ascent of the marginal
    likelihood of the anchors' grades. The first factor's shared loading starts the search; a second factor
    starts from the leading pattern of the models' residual correlations beyond the first."""
    n, m = pt.shape
    f = quad.factors
    log_w = np.log(quad.weights)

    def contrib(j: int, lam: FloatArray) -> FloatArray:
        rows = np.flatnonzero(has[:, j])
        out = np.zeros((n, len(quad.weights)))
        if len(rows):
            q = correct_curves(pt[rows, j], np.broadcast_to(lam, (len(rows), f)), quad)
            yy = y[rows, j][:, None]
            out[rows] = yy * np.log(q) + (1.0 - yy) * np.log1p(-q)
        return out

    def total_of(loads: FloatArray) -> FloatArray:
        return np.sum([contrib(j, loads[j]) for j in range(m)], axis=0) if m else np.zeros((n, len(quad.weights)))

    shared = np.zeros(f)
    shared_ll = -math.inf
    for lam in _LOADINGS:
        ll = _marginal_loglik(total_of(np.tile(np.array([lam] + [0.0] * (f - 1)), (m, 1))), log_w)
        if ll > shared_ll:
            shared, shared_ll = np.array([lam] + [0.0] * (f - 1)), ll
    independent_ll = _marginal_loglik(total_of(np.zeros((m, f))), log_w)
    loads = np.tile(shared, (m, 1))
    if f == 2 and m >= 3:
        resid = np.where(has, y - pt, 0.0) / np.sqrt(pt * (1.0 - pt))
        corr = np.corrcoef(resid.T)
        vals, vecs = np.linalg.eigh(np.nan_to_num(corr))
        loads[:, 1] = np.clip(1.5 * vecs[:, -2] * math.sqrt(m), -2.0, 2.0)  # the second pattern of shared errors
    parts = [contrib(j, loads[j]) for j in range(m)]
    total = np.sum(parts, axis=0) if parts else np.zeros((n, len(quad.weights)))
    for _ in range(4):
        changed = False
        for j in range(m):
            for axis in range(f):
                base = total - parts[j]
                best_val, best_ll, best_part = loads[j, axis], -math.inf, parts[j]
                low = 0.0 if axis == 0 else -3.0
                grid = sorted(
                    {
                        *(_LOADINGS if axis == 0 else _LOADINGS_2),
                        *np.clip(loads[j, axis] + np.array([-0.1, 0.1]), low, 4.0).round(3),
                    }
                )
                for val in grid:
                    lam = loads[j].copy()
                    lam[axis] = val
                    part = contrib(j, lam)
                    ll = _marginal_loglik(base + part, log_w)
                    if ll > best_ll + 1e-9:
                        best_val, best_ll, best_part = float(val), ll, part
                changed = changed or best_val != loads[j, axis]
                loads[j, axis], parts[j] = best_val, best_part
                total = base + best_part
        if not changed:
            break
    final_ll = _marginal_loglik(total, log_w)
    return loads, shared, {"independent": independent_ll, "shared": shared_ll, "per_model": final_ll}


def fit_calibration(
    rows: Sequence[CalibrationRow],
    *,
    graders: Mapping[str, Grader] | None = None,
    quadrature_points: int | None = None,
    factors: int = 1,
    min_task_anchors: int = 150,
    logprob: LogprobCalibration | None = None,
    check_seed: int = 0,
) -> CascadeCalibration:
    """Fit every parameter of the answer posterior on anchors; see the module docstring.

    Args:
        rows: the anchors, with recorded grades and extracted answers and out-of-sample pre-hoc estimates.
        graders: graders of kinds beyond the built-in ones (``agree`` decides which answers coincide).
        quadrature_points: nodes per factor of the difficulty grid (default 10 for one factor, 7 for two).
        factors: latent difficulty factors (1, or 2 to let some models share errors others avoid).
        min_task_anchors: a task with at least this many anchors gets parameters of its own.
        logprob: a log-probability calibration to carry along (fitted elsewhere: the store keeps no logprobs).
        check_seed: seed of the pairs and triples of models the calibration check samples.
    """
    if not rows:
        msg = "no calibration rows: the cascade is calibrated on anchors with recorded answers"
        raise DataError(msg)
    quad = Quadrature.of(quadrature_points or (10 if factors == 1 else 7), factors=factors)
    members: dict[str, list[CalibrationRow]] = {}
    anchors: dict[str, tuple[int, int, str | None]] = {}
    for row in rows:
        grader = grader_named(row.kind, extra=graders)
        hits, pairs = _pair_stats(row.outcomes, grader)
        members.setdefault(group_name(row.kind), []).append(row)
        if row.task is not None:
            members.setdefault(group_name(row.kind, row.task), []).append(row)
        anchors[row.anchor_id] = (hits, pairs, row.task)
    groups: dict[str, GroupCalibration] = {}
    fit_report: dict[str, Any] = {}
    for name, items in members.items():
        if "/" in name and len(items) < min_task_anchors:
            continue
        groups[name], fit_report[name] = _fit_group(name, items, anchors, quad)
    kept = {
        a: (h, n, t if t is not None and any(g.endswith("/" + t) for g in groups) else None)
        for a, (h, n, t) in anchors.items()
    }
    calibration = CascadeCalibration(groups=groups, anchors=kept)
    strength = _fit_strength(rows, calibration)
    calibration = CascadeCalibration(groups=groups, anchors=kept, collision_strength=strength)
    fitted = _check_states(rows, calibration, quad, graders, seed=check_seed)
    independent = _check_states(rows, calibration, quad, graders, seed=check_seed, independent=True)
    for name in groups:
        groups[name] = dataclasses.replace(groups[name], confidence=_fit_confidence(*fitted.get(name, ([], []))))
        fit_report[name]["confidence"] = list(groups[name].confidence)
    calibration = CascadeCalibration(groups=groups, anchors=kept, collision_strength=strength)
    check = {
        "independent": _check_report(independent),
        "fitted": _check_report(fitted),
        "recalibrated": _check_report(
            {g: ([calibration.confidence(g, p) for p in ps], ys) for g, (ps, ys) in fitted.items()}
        ),
    }
    report = {"anchors": len(rows), "collision_strength": strength, "groups": fit_report, "posterior_check": check}
    return CascadeCalibration(groups=groups, anchors=kept, collision_strength=strength, logprob=logprob, report=report)


def _fit_group(
    name: str, items: Sequence[CalibrationRow], anchors: Mapping[str, tuple[int, int, str | None]], quad: Quadrature
) -> tuple[GroupCalibration, dict[str, Any]]:
    """One group's collision rate, unparsed rates and loadings."""
    hits = sum(anchors[row.anchor_id][0] for row in items)
    pairs = sum(anchors[row.anchor_id][1] for row in items)
    collision = min(max((hits + 1.0) / (pairs + 2.0), COLLISION_CLIP), 1.0 - COLLISION_CLIP)
    models = sorted({m for row in items for m in row.outcomes})
    counts = {m: [0, 0] for m in models}
    for row in items:
        for m, (_, a) in row.outcomes.items():
            counts[m][0] += a is None
            counts[m][1] += 1
    unparsed = {m: (c[0] + 0.5) / (c[1] + 1.0) for m, c in counts.items()}
    default_unparsed = (sum(c[0] for c in counts.values()) + 0.5) / (sum(c[1] for c in counts.values()) + 1.0)
    # the loading fit: parsed answers only, with P(correct | parsed)
    col = {m: j for j, m in enumerate(models)}
    pt = np.full((len(items), len(models)), 0.5)
    y = np.zeros((len(items), len(models)))
    has = np.zeros((len(items), len(models)), dtype=bool)
    for i, row in enumerate(items):
        for m, (c, a) in row.outcomes.items():
            if a is None or m not in row.prehoc:
                continue
            j = col[m]
            pt[i, j] = min(max(row.prehoc[m] / max(1.0 - unparsed[m], 1e-6), P_CLIP), 1.0 - P_CLIP)
            y[i, j] = 1.0 if c >= 0.5 else 0.0
            has[i, j] = True
    loads, shared, lls = _fit_loadings(pt, y, has, quad)
    logger.info(
        "cascade calibration %s: %d anchors, collision %.3f over %d pairs, shared loading %s",
        name,
        len(items),
        collision,
        pairs,
        shared,
    )
    group = GroupCalibration(
        collision=collision,
        collision_pairs=pairs,
        unparsed=unparsed,
        default_unparsed=default_unparsed,
        loading={m: tuple(float(x) for x in loads[col[m]]) for m in models},
        default_loading=tuple(float(x) for x in shared),
        anchors=len(items),
    )
    return group, {"anchors": len(items), "collision": collision, "loglik": lls}


def _fit_confidence(probs: Sequence[float], labels: Sequence[float]) -> tuple[float, float]:
    """Slope and intercept of a logistic recalibration of the best answer's log-odds (identity when too few)."""
    y = np.asarray(labels, dtype=np.float64)
    if len(y) < 200 or y.min() == y.max():
        return 1.0, 0.0
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-6, 1.0 - 1e-6)
    coef = fit_logistic(np.log(p / (1.0 - p))[:, None], y, l2=1e-3)
    return float(coef[0]), float(coef[1])


def _check_states(
    rows: Sequence[CalibrationRow],
    calibration: CascadeCalibration,
    quad: Quadrature,
    graders: Mapping[str, Grader] | None,
    *,
    seed: int,
    independent: bool = False,
    samples: int = 2,
) -> dict[str, tuple[list[float], list[float]]]:
    """Per group (as a query would get it): P(best answer correct) and whether it was, over sampled pairs and
    triples of models per anchor."""
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        models = sorted(m for m in row.outcomes if m in row.prehoc)
        if len(models) < 2:
            continue
        group = calibration.group_for(row.kind, row.neighbours)
        probs, labels = out.setdefault(group, ([], []))
        grader = grader_named(row.kind, extra=graders)
        collision = (
            calibration.group(group).collision if independent else calibration.collision_for(group, row.neighbours)
        )
        parsed = [calibration.parsed_p(group, m, row.prehoc[m]) for m in models]
        loads = np.array([calibration.loading(group, m) for m in models]) * (0.0 if independent else 1.0)
        curves = correct_curves(parsed, loads, quad)
        for size in (2, 3):
            if len(models) < size:
                continue
            for _ in range(samples):
                post = AnswerPosterior(collision=collision, quad=quad)
                truth: list[float] = []
                for i in rng.choice(len(models), size=size, replace=False):
                    c, a = row.outcomes[models[i]]
                    if a is None:
                        continue
                    k = answer_cluster(grader, a, post.answers)
                    post = post.add(curves[i], k, answer=a, p=parsed[i])
                    if k is None:
                        truth.append(1.0 if c >= 0.5 else 0.0)
                best, pb = post.best()
                if best is None:
                    continue
                probs.append(pb)
                labels.append(truth[best])
    return out


def _check_report(states: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> dict[str, Any]:
    """Calibration of the best answer's P(correct) over the check states (all groups together)."""
    probs = [p for ps, _ in states.values() for p in ps]
    labels = [y for _, ys in states.values() for y in ys]
    if not probs:
        return {"states": 0}
    p_arr, y_arr = np.array(probs), np.array(labels)
    top = p_arr >= 0.95
    return {
        "states": len(probs),
        "mean_p": float(p_arr.mean()),
        "accuracy": float(y_arr.mean()),
        "brier": float(np.mean((p_arr - y_arr) ** 2)),
        "ece": expected_calibration_error(p_arr, y_arr),
        "log_loss": float(-np.mean(y_arr * np.log(p_arr + 1e-12) + (1 - y_arr) * np.log(1 - p_arr + 1e-12))),
        "top_states": int(top.sum()),
        "top_mean_p": float(p_arr[top].mean()) if top.any() else None,
        "top_accuracy": float(y_arr[top].mean()) if top.any() else None,
    }
