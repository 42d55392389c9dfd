"""Calibrating the answer posterior on the anchors: nothing in a cascade's evidence is hand-set.

Every parameter of :mod:`.posterior` is fitted on the anchors' recorded answers (the extracted answer the store
keeps with each outcome) and out-of-sample pre-hoc estimates of the anchors themselves (each anchor estimated by
an estimator that did not see it: :func:`~scope_shared.cascade.replay.crossfit_estimates`):

- ``unparsed``: per grader kind and model, how often its answer cannot be read (such an answer is never correct;
  a parsed answer's P(correct) is the pre-hoc P(correct) divided by the share it parses);
- ``collision``: per grader kind, the probability that two wrong parsed answers of different models to one anchor
  are the same answer; per query it is the similarity-weighted rate of the anchors behind the pre-hoc estimate,
  shrunk toward the kind's rate with a strength fitted by likelihood (:meth:`CascadeCalibration.collision_for`);
- ``loading``: per grader kind and model, how strongly its correctness goes with the query's latent difficulty,
  by maximum marginal likelihood of every anchor's pattern of grades given the pre-hoc estimates.

:func:`fit_calibration` also reports how well the fitted posterior is calibrated on the anchors, next to the
same posterior with independent models (loading 0), on pairs and triples of models.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from scope_shared.cascade.checkers import LogprobCalibration
from scope_shared.cascade.posterior import P_CLIP, AnswerPosterior, Quadrature, correct_curves
from scope_shared.errors import ConfigError, DataError
from scope_shared.estimators.learned.fit import fit_logistic
from scope_shared.metrics import expected_calibration_error
from scope_shared.suites.graders import Grader, grader_named

__all__ = ["CalibrationRow", "CascadeCalibration", "GroupCalibration", "fit_calibration", "group_name"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Collision probabilities are held inside [COLLISION_CLIP, 1 - COLLISION_CLIP].
COLLISION_CLIP = 0.01
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


@dataclass(frozen=True)
class GroupCalibration:
    """The fitted parameters of one grader kind, or of one task of it (see :meth:`CascadeCalibration.group_for`)."""

    collision: float
    collision_pairs: int
    unparsed: Mapping[str, float]
    default_unparsed: float
    loading: Mapping[str, tuple[float, ...]]
    default_loading: tuple[float, ...]
    anchors: int
    confidence: tuple[float, float] = (1.0, 0.0)  # slope, intercept on the log-odds of the best answer


def group_name(kind: str, task: str | None = None) -> str:
    """The name of a calibration group: the grader kind, or ``kind/task``."""
    return kind if task is None else f"{kind}/{task}"


@dataclass(frozen=True)
class CascadeCalibration:
    """Everything the answer posterior needs, fitted on the anchors (:func:`fit_calibration`).

    Parameters come per group: a grader kind (``"choice"``), and each task of it with enough anchors
    (``"choice/winogrande"``). A query's group is read off the anchors behind its pre-hoc estimate
    (:meth:`group_for`), so no task label is needed at run time.

    Attributes:
        groups: per group.
        anchors: anchor id -> (coinciding pairs, pairs of its wrong parsed answers, its task or None).
        collision_strength: pseudo-pairs of the group's rate in a query's collision probability.
        logprob: the log-probability calibration, when one was fitted.
        report: how the fit went (anchors, likelihoods, calibration of the posterior on the anchors).
    """

    groups: Mapping[str, GroupCalibration]
    anchors: Mapping[str, tuple[int, int, str | None]] = field(default_factory=dict)
    collision_strength: float = 30.0
    logprob: LogprobCalibration | None = None
    report: Mapping[str, Any] = field(default_factory=dict)

    def group(self, name: str) -> GroupCalibration:
        """The parameters of a group; :class:`ConfigError` naming the calibrated groups otherwise."""
        try:
            return self.groups[name]
        except KeyError:
            msg = f"no cascade calibration for grader kind {name!r}; calibrated: {sorted(self.groups)}"
            raise ConfigError(msg) from None

    @property
    def kinds(self) -> list[str]:
        """The calibrated grader kinds."""
        return sorted(g for g in self.groups if "/" not in g)

    @property
    def factors(self) -> int:
        """Latent difficulty factors of the posterior (1 or 2)."""
        return len(next(iter(self.groups.values())).default_loading) if self.groups else 1

    def group_for(self, kind: str, neighbours: Sequence[tuple[str, float]] = ()) -> str:
        """A query's group: the task most of the anchors behind its estimate (weighted by similarity squared)
        come from, when that task has parameters of its own and holds at least half the weight; else the kind."""
        self.group(kind)
        weight: dict[str, float] = {}
        total = 0.0
        for aid, sim in neighbours:
            found = self.anchors.get(aid)
            if found is None or found[2] is None:
                continue
            w = max(sim, 0.0) ** 2
            total += w
            name = group_name(kind, found[2])
            if name in self.groups:
                weight[name] = weight.get(name, 0.0) + w
        if weight:
            best = max(weight, key=lambda g: (weight[g], g))
            if weight[best] >= 0.5 * total:
                return best
        return kind

    def collision_for(self, group: str, neighbours: Sequence[tuple[str, float]] = ()) -> float:
        """P(two wrong answers to this query coincide): the neighbours' rate, shrunk toward the group's."""
        g = self.group(group)
        hits = pairs = 0.0
        for aid, sim in neighbours:
            found = self.anchors.get(aid)
            if found is not None:
                w = max(sim, 0.0) ** 2
                hits += w * found[0]
                pairs += w * found[1]
        rate = (hits + self.collision_strength * g.collision) / (pairs + self.collision_strength)
        return float(min(max(rate, COLLISION_CLIP), 1.0 - COLLISION_CLIP))

    def unparsed(self, group: str, model: str) -> float:
        """P(the model's answer cannot be read)."""
        g = self.group(group)
        return float(g.unparsed.get(model, g.default_unparsed))

    def loading(self, group: str, model: str) -> tuple[float, ...]:
        """A model's loadings on the latent difficulty factors."""
        g = self.group(group)
        return tuple(g.loading.get(model, g.default_loading))

    def confidence(self, group: str, p: float) -> float:
        """P(the best answer is correct), recalibrated from the posterior's ``p`` (a fitted temperature)."""
        slope, intercept = self.group(group).confidence
        if slope == 1.0 and intercept == 0.0:
            return p
        pc = min(max(p, 1e-12), 1.0 - 1e-12)
        return 1.0 / (1.0 + math.exp(-(slope * math.log(pc / (1.0 - pc)) + intercept)))

    def parsed_p(self, group: str, model: str, p: float) -> float:
        """P(correct | the answer parses) from the pre-hoc P(correct): an unparsed answer is never correct."""
        return min(max(p / max(1.0 - self.unparsed(group, model), 1e-6), P_CLIP), 1.0 - P_CLIP)

    # -- persistence ---------------------------------------------------------------------------------

    def to_json(self) -> str:
        data = {
            "format": 2,
            "groups": {
                name: {
                    "collision": g.collision,
                    "collision_pairs": g.collision_pairs,
                    "unparsed": dict(g.unparsed),
                    "default_unparsed": g.default_unparsed,
                    "loading": {m: list(v) for m, v in g.loading.items()},
                    "default_loading": list(g.default_loading),
                    "anchors": g.anchors,
                    "confidence": list(g.confidence),
                }
                for name, g in self.groups.items()
            },
            "anchors": {a: list(v) for a, v in self.anchors.items()},
            "collision_strength": self.collision_strength,
            "logprob": self.logprob.to_json() if self.logprob is not None else None,
            "report": self.report,
        }
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> CascadeCalibration:
        try:
            data = json.loads(text)
            if data.get("format") != 2:
                msg = f"unknown cascade calibration format {data.get('format')!r}"
                raise DataError(msg)
            groups = {
                name: GroupCalibration(
                    collision=float(g["collision"]),
                    collision_pairs=int(g["collision_pairs"]),
                    unparsed={str(m): float(v) for m, v in g["unparsed"].items()},
                    default_unparsed=float(g["default_unparsed"]),
                    loading={str(m): tuple(float(x) for x in v) for m, v in g["loading"].items()},
                    default_loading=tuple(float(x) for x in g["default_loading"]),
                    anchors=int(g["anchors"]),
                    confidence=(float(g["confidence"][0]), float(g["confidence"][1])),
                )
                for name, g in data["groups"].items()
            }
            return cls(
                groups=groups,
                anchors={
                    str(a): (int(v[0]), int(v[1]), None if v[2] is None else str(v[2]))
                    for a, v in data["anchors"].items()
                },
                collision_strength=float(data["collision_strength"]),
                logprob=LogprobCalibration.from_json(data["logprob"]) if data.get("logprob") else None,
                report=dict(data.get("report") or {}),
            )
        except DataError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            msg = f"not a cascade calibration ({type(exc).__name__}: {exc})"
            raise DataError(msg) from None


# -- fitting ---------------------------------------------------------------------------------------------


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


def answer_cluster(grader: Grader, answer: str, answers: Sequence[str | None]) -> int | None:
    """The index of the first of ``answers`` that ``answer`` agrees with (None: a new answer)."""
    for k, other in enumerate(answers):
        if other is not None and grader.agree(answer, other):
            return k
    return None


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
