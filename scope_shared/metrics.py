"""Metrics with one implementation each, used by estimator fits, replay evaluation and benchmarks.

- :func:`auroc` and :func:`expected_calibration_error` score estimated probabilities against graded labels;
- :func:`aiq` scores an accuracy/cost curve: the mean accuracy reachable over a range of spend;
- :func:`upper_hull` is the best that mixing fixed choices at random can do (the convex hull of their
  (cost, accuracy) points), and :func:`hull_aiq` its AIQ: a router is worth its estimates only by what it
  adds above that (``lift_over_singles``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["aiq", "auroc", "expected_calibration_error", "hull_accuracy", "hull_aiq", "upper_hull"]

FloatArray = npt.NDArray[np.float64]
Point = tuple[float, float]


def auroc(scores: Sequence[float] | FloatArray, labels: Sequence[float] | FloatArray) -> float | None:
    """Area under the ROC curve (ties averaged); labels >= 0.5 are positive. None if one class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64) >= 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(
    probs: Sequence[float] | FloatArray, labels: Sequence[float] | FloatArray, *, bins: int = 10
) -> float:
    """ECE of probabilities against graded labels, over ``bins`` equal-width bins (nan when empty)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += float(mask.sum() * abs(p[mask].mean() - y[mask].mean()))
    return total / len(p)


def aiq(points: Iterable[Point], lo: float, hi: float, *, steps: int = 200) -> float | None:
    """Mean best accuracy reachable at each of ``steps`` even costs in ``[lo, hi]`` (None if ``hi <= lo``).

    ``points`` are (cost, accuracy) settings of one router; at a cost, the best setting that costs no more
    counts (a step function). Below the cheapest setting, its accuracy is used (the curve extends flat).
    """
    pts = sorted((float(c), float(a)) for c, a in points)
    if not pts or hi <= lo:
        return None
    costs = np.array([c for c, _ in pts])
    best_so_far = np.maximum.accumulate(np.array([a for _, a in pts]))
    grid = np.linspace(lo, hi, steps)
    idx = np.searchsorted(costs, grid, side="right") - 1
    return float(np.where(idx >= 0, best_so_far[np.maximum(idx, 0)], best_so_far[0]).mean())


def upper_hull(points: Iterable[Point]) -> list[Point]:
    """The upper-left convex hull of (cost, accuracy) points, cheapest first: what random mixtures reach.

    Sending a share of queries to one choice and the rest to another reaches every point on the segment
    between them; the hull keeps the vertices of the best such mixtures, each more accurate than the last.
    """
    pts = sorted({(float(c), float(a)) for c, a in points}, key=lambda p: (p[0], -p[1]))
    hull: list[Point] = []
    for c, a in pts:
        if hull and a <= hull[-1][1]:
            continue  # no more accurate than a cheaper vertex: never on the upper-left hull
        while len(hull) >= 2:
            (c1, a1), (c2, a2) = hull[-2], hull[-1]
            if (a2 - a1) * (c - c1) <= (a - a1) * (c2 - c1):  # the middle vertex lies on or under the chord
                hull.pop()
            else:
                break
        hull.append((c, a))
    return hull


def hull_accuracy(hull: Sequence[Point], cost: float | FloatArray) -> FloatArray:
    """Accuracy of the best random mixture of the hull's vertices at ``cost`` (flat outside them)."""
    costs = np.array([c for c, _ in hull], dtype=np.float64)
    accs = np.array([a for _, a in hull], dtype=np.float64)
    out: FloatArray = np.interp(np.asarray(cost, dtype=np.float64), costs, accs)
    return out


def hull_aiq(points: Iterable[Point], lo: float, hi: float, *, steps: int = 200) -> float | None:
    """AIQ of the convex hull of ``points`` over the same grid as :func:`aiq` (None if ``hi <= lo``)."""
    hull = upper_hull(points)
    if not hull or hi <= lo:
        return None
    return float(hull_accuracy(hull, np.linspace(lo, hi, steps)).mean())
