"""The side-by-side report of a cascade replay: pre-hoc router, cascade, single models' hull and oracle on the
same queries and pool (AIQ, lift over singles, accuracy at the best single model's cost, cost to match it)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scope_shared.cascade.exact import ReplayItem, replay_cascade
from scope_shared.cascade.plan import Cascade
from scope_shared.errors import DataError
from scope_shared.metrics import aiq, hull_aiq, upper_hull
from scope_shared.suites.graders import Grader

__all__ = ["cascade_report", "summary_lines"]


def _curve_summary(
    curve: Sequence[Mapping[str, Any]], singles: Mapping[str, Mapping[str, float]], steps: int
) -> dict[str, Any]:
    """The figures of :func:`~scope_shared.evaluation.routing_report` for any accuracy/cost curve."""
    best = max(singles, key=lambda m: (singles[m]["accuracy"], -singles[m]["cost"]))
    cheap = min(singles, key=lambda m: (singles[m]["cost"], -singles[m]["accuracy"]))
    best_acc, best_cost = singles[best]["accuracy"], singles[best]["cost"]
    lo = singles[cheap]["cost"]
    points = [(pt["cost"], pt["accuracy"]) for pt in curve]
    within = [a for c, a in points if c <= best_cost + 1e-15]
    matched = [c for c, a in points if a >= best_acc - 1e-12]
    router = aiq(points, lo, best_cost, steps=steps)
    hull = hull_aiq([(s["cost"], s["accuracy"]) for s in singles.values()], lo, best_cost, steps=steps)
    return {
        "aiq": router,
        "hull_aiq": hull,
        "lift_over_singles": None if router is None or hull is None else router - hull,
        "acc_at_best_single_cost": max(within, default=None),
        "cost_to_match_best_single": (min(matched) / best_cost) if matched and best_cost else None,
        "max_accuracy": max((a for _, a in points), default=None),
    }


def cascade_report(
    items: Sequence[ReplayItem],
    cascade: Cascade,
    *,
    values: Sequence[float | None],
    graders: Mapping[str, Grader] | None = None,
    aiq_steps: int = 200,
) -> dict[str, Any]:
    """Pre-hoc router, cascade, single models' hull and oracle on the same queries and pool, side by side."""
    from scope_shared.evaluation import ReplayTable, routing_report

    if not items:
        msg = "no test query has a reference and a recorded response of every pool model; nothing to replay"
        raise DataError(msg)
    pool = list(items[0].estimates)
    table = ReplayTable(
        queries=[it.query for it in items],
        models=pool,
        p=np.array([[it.estimates[m].p_correct for m in pool] for it in items]),
        est_cost=np.array([[it.estimates[m].cost for m in pool] for it in items]),
        correct=np.array([[it.correct[m] for m in pool] for it in items]),
        cost=np.array([[it.costs[m] for m in pool] for it in items]),
    )
    t0 = time.perf_counter()
    prehoc = routing_report(table, values=values, aiq_steps=aiq_steps)
    curve = replay_cascade(items, cascade, values, graders=graders)
    seconds = time.perf_counter() - t0
    singles = prehoc["singles"]
    return {
        "pool": pool,
        "queries": len(items),
        "kinds": dict(sorted(_count(it.kind for it in items).items())),
        "settings": {
            "max_calls": cascade.max_calls,
            "depth": cascade.depth,
            "max_candidates": cascade.max_candidates,
            "checkers": [c.name for c in cascade.checkers],
        },
        "singles": singles,
        "singles_hull": [
            {"cost": c, "accuracy": a} for c, a in upper_hull([(s["cost"], s["accuracy"]) for s in singles.values()])
        ],
        "best_single": prehoc["best_single"],
        "cheapest": prehoc["cheapest"],
        "oracle": prehoc["oracle"],
        "prehoc": {
            "aiq": prehoc["aiq"],
            "hull_aiq": prehoc["hull_aiq"],
            "lift_over_singles": prehoc["lift_over_singles"],
            "acc_at_best_single_cost": prehoc["router_acc_at_best_single_cost"],
            "cost_to_match_best_single": prehoc["router_cost_to_match_best_single"],
            "max_accuracy": prehoc["router_max_accuracy"],
            "curve": prehoc["curve"],
        },
        "cascade": {**_curve_summary(curve, singles, aiq_steps), "curve": curve},
        "calibration": dict(cascade.calibration.report),
        "replay_s": round(seconds, 2),
    }


def _count(kinds: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for k in kinds:
        out[k] += 1
    return dict(out)


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The side-by-side table of a :func:`cascade_report`, as text lines."""

    def fmt(x: float | None, spec: str = ".4f") -> str:
        return "n/a" if x is None else format(x, spec)

    best = report["best_single"]
    oracle = report["oracle"]
    rows = [("pre-hoc router", report["prehoc"]), ("cascade", report["cascade"])]
    lines = [
        f"side by side on {report['queries']} test queries with references, {len(report['pool'])} models with "
        f"recorded responses; best single {best['model']} (accuracy {best['accuracy']:.3f}, ${best['cost']:.6f})",
        f"{'':16} {'AIQ':>7} {'lift over singles':>18} {'acc at best cost':>17} {'cost to match best':>19}",
    ]
    for name, r in rows:
        match = r["cost_to_match_best_single"]
        lines.append(
            f"{name:16} {fmt(r['aiq']):>7} {fmt(r['lift_over_singles'], '+.4f'):>18} "
            f"{fmt(r['acc_at_best_single_cost'], '.3f'):>17} {('never' if match is None else f'{match:.2f}x'):>19}"
        )
    hull = fmt(report["cascade"]["hull_aiq"])
    lines.append(f"{'singles hull':16} {hull:>7} {'+0.0000':>18} {best['accuracy']:>17.3f} {'1.00x':>19}")
    lines.append(
        f"{'oracle':16} {'':>7} {'':>18} {oracle['accuracy']:>17.3f} "
        f"{oracle['cost'] / best['cost'] if best['cost'] else float('nan'):>18.2f}x"
    )
    return lines
