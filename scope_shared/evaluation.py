"""Replay evaluation: load anchors, estimate held-out queries, and measure estimation and routing.

Routing is replayed over recorded outcomes: the router picks a model per test query from its estimates,
and its accuracy and cost are what that model really scored and spent (recorded tokens x prices).
Sweeping ``value_per_correct`` traces the router's accuracy/cost curve.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from scope_shared.data import load_outcomes, load_prices
from scope_shared.engine import ScopeEngine
from scope_shared.errors import ConfigError, DataError
from scope_shared.escalation import Escalation, escalated
from scope_shared.estimators.base import Estimator
from scope_shared.holdout import hold_out, holdout_report
from scope_shared.metrics import aiq, auroc, expected_calibration_error, hull_aiq, upper_hull
from scope_shared.policy import utility
from scope_shared.store import AnchorStore
from scope_shared.types import DEFAULT_TOKENS_PER_CHAR, Estimate, ModelCard, Outcome

if TYPE_CHECKING:
    from scope_shared.cascade.replay import CascadeReplay

__all__ = [
    "DEFAULT_VALUES",
    "ReplayTable",
    "auroc",
    "evaluate",
    "expected_calibration_error",
    "plot_report",
    "replay_table",
    "routing_report",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: The value_per_correct sweep (USD per correct answer): cheapest (0) .. accuracy only (None).
DEFAULT_VALUES: tuple[float | None, ...] = (0.0, *(float(v) for v in np.logspace(-7, 2, 91)), None)


@dataclass(frozen=True)
class ReplayTable:
    """Estimates and recorded outcomes of the routing pool, as dense query x model arrays."""

    queries: list[str]
    models: list[str]
    p: FloatArray  # estimated p_correct
    est_cost: FloatArray  # estimated USD
    correct: FloatArray  # recorded grade
    cost: FloatArray  # recorded USD

    def choose(self, value_per_correct: float | None) -> npt.NDArray[np.int64]:
        """Index of the chosen model per query: :func:`~scope_shared.policy.choose`'s rule over every query at
        once (highest utility; ties to the lower estimated cost)."""
        util = utility(self.p, self.est_cost, value_per_correct)
        best = np.max(util, axis=1, keepdims=True)
        tied = np.isclose(util, best, rtol=0.0, atol=1e-12)
        cost = np.where(tied, self.est_cost, np.inf)
        picks: npt.NDArray[np.int64] = np.argmin(cost, axis=1)
        return picks

    def point(self, value_per_correct: float | None) -> dict[str, Any]:
        """The router's replayed accuracy and mean cost at one setting."""
        pick = self.choose(value_per_correct)
        rows = np.arange(len(self.queries))
        share = np.bincount(pick, minlength=len(self.models)) / max(len(pick), 1)
        return {
            "value_per_correct": value_per_correct,
            "accuracy": float(self.correct[rows, pick].mean()),
            "cost": float(self.cost[rows, pick].mean()),
            "model_share": {self.models[i]: float(s) for i, s in enumerate(share) if s > 0},
        }


def replay_table(
    test: Sequence[Outcome],
    estimates: Mapping[str, Mapping[str, Estimate]],
    cards: Mapping[str, ModelCard],
    pool: Sequence[str],
    *,
    tokens_per_char: float = DEFAULT_TOKENS_PER_CHAR,
) -> ReplayTable:
    """Dense arrays over the test queries on which every pool model has a recorded outcome."""
    by_q: dict[str, dict[str, Outcome]] = defaultdict(dict)
    for o in test:
        by_q[o.query][o.model] = o
    queries = [q for q, per in by_q.items() if q in estimates and all(m in per for m in pool)]
    n, m = len(queries), len(pool)
    p, est_cost, correct, cost = (np.zeros((n, m)) for _ in range(4))
    for i, q in enumerate(queries):
        for j, name in enumerate(pool):
            est, out = estimates[q][name], by_q[q][name]
            p[i, j], est_cost[i, j] = est.p_correct, est.cost
            correct[i, j] = out.correct
            in_tok = out.input_tokens if out.input_tokens is not None else len(q) * tokens_per_char
            out_tok = out.output_tokens if out.output_tokens is not None else 0
            cost[i, j] = cards[name].cost(in_tok, out_tok)
    return ReplayTable(queries, list(pool), p, est_cost, correct, cost)


def routing_report(
    table: ReplayTable, *, values: Sequence[float | None] = DEFAULT_VALUES, aiq_steps: int = 200
) -> dict[str, Any]:
    """Single models, oracle and the router's curve over ``values``, with the summary metrics."""
    if not table.queries:
        msg = "no test query has an outcome for every pool model; nothing to route"
        raise DataError(msg)
    acc = table.correct.mean(axis=0)
    cost = table.cost.mean(axis=0)
    singles = {
        name: {"accuracy": float(acc[j]), "cost": float(cost[j])} for j, name in enumerate(table.models)
    }
    best_j = max(range(len(table.models)), key=lambda j: (acc[j], -cost[j]))
    cheap_j = min(range(len(table.models)), key=lambda j: (cost[j], -acc[j]))
    # oracle: the cheapest model that is correct; the cheapest model when none is
    ok = table.correct >= 0.5
    masked = np.where(ok, table.cost, np.inf)
    o_pick = np.where(ok.any(axis=1), np.argmin(masked, axis=1), cheap_j)
    rows = np.arange(len(table.queries))
    oracle = {
        "accuracy": float(table.correct[rows, o_pick].mean()),
        "cost": float(table.cost[rows, o_pick].mean()),
    }
    curve = [table.point(v) for v in values]
    best_name, cheap_name = table.models[best_j], table.models[cheap_j]
    best_acc, best_cost = float(acc[best_j]), float(cost[best_j])
    best: dict[str, Any] = {"model": best_name, **singles[best_name]}
    cheapest: dict[str, Any] = {"model": cheap_name, **singles[cheap_name]}
    within = [pt for pt in curve if pt["cost"] <= best_cost + 1e-15]
    matched = [pt["cost"] for pt in curve if pt["accuracy"] >= best_acc - 1e-12]
    return {
        "pool": list(table.models),
        "queries": len(table.queries),
        "singles": singles,
        "best_single": best,
        "cheapest": cheapest,
        "oracle": oracle,
        "curve": curve,
        "router_acc_at_best_single_cost": max((pt["accuracy"] for pt in within), default=None),
        "router_cost_to_match_best_single": (min(matched) / best_cost) if matched and best_cost else None,
        "router_max_accuracy": max(pt["accuracy"] for pt in curve),
        **_lift(curve, singles, float(cost[cheap_j]), best_cost, aiq_steps),
    }


def _lift(
    curve: Sequence[Mapping[str, Any]], singles: Mapping[str, Mapping[str, float]], lo: float, hi: float, steps: int
) -> dict[str, Any]:
    """The router's AIQ, the single models' convex hull (random mixtures) and its AIQ over the same costs, and
    ``lift_over_singles``: how much the router's estimates add above simply mixing single models."""
    router = aiq(((pt["cost"], pt["accuracy"]) for pt in curve), lo, hi, steps=steps)
    points = [(s["cost"], s["accuracy"]) for s in singles.values()]
    hull = hull_aiq(points, lo, hi, steps=steps)
    return {
        "aiq": router,
        "singles_hull": [{"cost": c, "accuracy": a} for c, a in upper_hull(points)],
        "hull_aiq": hull,
        "lift_over_singles": None if router is None or hull is None else router - hull,
    }


def _estimation_metrics(
    test: Sequence[Outcome], estimates: Mapping[str, Mapping[str, Estimate]]
) -> dict[str, Any]:
    ps, ys, models, pred_len, true_len = [], [], [], [], []
    for o in test:
        est = estimates.get(o.query, {}).get(o.model)
        if est is None:
            continue
        ps.append(est.p_correct)
        ys.append(o.correct)
        models.append(o.model)
        if o.output_tokens is not None:
            pred_len.append(est.output_tokens)
            true_len.append(o.output_tokens)
    p, y = np.array(ps), np.array(ys)
    per_model: dict[str, float] = {}
    by_model: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(models):
        by_model[name].append(i)
    for name, idx in by_model.items():
        a = auroc(p[idx], y[idx])
        if a is not None:
            per_model[name] = a
    pl, tl = np.array(pred_len, dtype=np.float64), np.array(true_len, dtype=np.float64)
    return {
        "pairs": len(ps),
        "auroc_pooled": auroc(p, y),
        "auroc_within_model": float(np.mean(list(per_model.values()))) if per_model else None,
        "auroc_per_model": per_model,
        "brier": float(np.mean((p - y) ** 2)) if len(p) else None,
        "ece": expected_calibration_error(p, y) if len(p) else None,
        "length_pairs": len(pl),
        "length_mae": float(np.mean(np.abs(pl - tl))) if len(pl) else None,
        "length_log_mae": float(np.mean(np.abs(np.log1p(pl) - np.log1p(tl)))) if len(pl) else None,
    }


def evaluate(
    anchors: str | Path | Sequence[Outcome] | None,
    test: str | Path | Sequence[Outcome],
    prices: str | Path | Sequence[ModelCard],
    *,
    embedder: Any = None,
    estimator: Estimator | None = None,
    escalation: Escalation | None = None,
    store: AnchorStore | None = None,
    k: int = 10,
    values: Sequence[float | None] = DEFAULT_VALUES,
    pool: Sequence[str] | None = None,
    batch_size: int = 256,
    holdout_models: Sequence[str] = (),
    holdout_anchors: int = 50,
    holdout_seed: int = 0,
    cascade: CascadeReplay | None = None,
    holdout_select: str = "random",
) -> dict[str, Any]:
    """Replay-evaluate an estimator: load ``anchors`` into a fresh store, estimate ``test``, report.

    Args:
        anchors, test: outcome files (or outcomes); test queries are held out of the store. ``anchors=None``
            loads nothing and routes over ``store`` as it is (e.g. seeded from a suite, new models profiled
            into it): the models it holds outcomes of are the known ones.
        prices: a price table (or model cards); only priced models are estimated and routed.
        embedder: the store's embedder (default all-MiniLM-L6-v2).
        estimator: default the engine's (the learned estimator).
        escalation: an optional second estimation stage (see :class:`~scope_shared.escalation.Escalation`).
        store: an empty store to load into (default: a fresh in-memory one), or with ``anchors=None`` the
            store to route over.
        pool: models to route over (default: priced models with an outcome on every test query).
        holdout_models: models treated as newly added: their anchor outcomes are cut down to
            ``holdout_anchors`` random anchors (seeded by ``holdout_seed``) before loading; the report's
            ``holdout`` section gives their AUROC within model and their share of the router's picks.
        cascade: also replay cascades from the recorded responses (:class:`~scope_shared.cascade.replay.
            CascadeReplay`); the report's ``cascade`` section puts them beside the pre-hoc router.
        holdout_select: how those anchors are chosen: ``random`` (uniformly), ``informative``
            (:func:`~scope_shared.suites.selection.select_anchors` from the store's embeddings and the other
            models' outcomes, never the held-out models'), or one of its strategies by name.
    """
    t0 = time.perf_counter()
    if anchors is None:
        if store is None or holdout_models:
            msg = "anchors=None routes over an existing store: pass store=, and no holdout_models (nothing is loaded)"
            raise ConfigError(msg)
        if cascade is not None:
            msg = "cascade replay calibrates on the anchors: pass anchors="
            raise ConfigError(msg)
        anchor_rows: list[Outcome] = []
        recorded = {m for m, st in store.model_stats().items() if st.n > 0}
    else:
        anchor_rows = load_outcomes(anchors) if isinstance(anchors, str | Path) else list(anchors)
        recorded = {o.model for o in anchor_rows}
    test_rows = load_outcomes(test) if isinstance(test, str | Path) else list(test)
    cards_list = load_prices(prices) if isinstance(prices, str | Path) else list(prices)
    cards = {c.name: c for c in cards_list}
    known = recorded & cards.keys()
    test_rows = [o for o in test_rows if o.model in known]
    if not test_rows:
        msg = "no test outcome of a priced model that also has anchor outcomes"
        raise DataError(msg)
    if store is None:
        # a selection embeds the candidates before the load: keep every vector so that the load reuses them
        texts = 0 if holdout_select == "random" else len({o.query for o in anchor_rows})
        store = AnchorStore(embedder=embedder, embed_cache=max(1024, texts))
    anchor_rows, kept = hold_out(
        anchor_rows, holdout_models, holdout_anchors, holdout_seed, known, select=holdout_select, embed=store.embed
    )
    if anchors is not None:
        store.add([o for o in anchor_rows if o.model in known])
    t_load = time.perf_counter() - t0
    engine = ScopeEngine(
        store=store, models=[cards[m] for m in sorted(known)], estimator=estimator, escalation=escalation, k=k
    )
    queries = list(dict.fromkeys(o.query for o in test_rows))
    in_tok: dict[str, float] = {}
    for o in test_rows:
        if o.input_tokens is not None:
            in_tok.setdefault(o.query, float(o.input_tokens))
    estimates: dict[str, dict[str, Estimate]] = {}
    degraded: list[str] = []
    t1 = time.perf_counter()
    engine.wait_ready()  # estimate with the fit started at construction, not the fallback
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        rows, reason = engine.estimate(chunk, input_tokens=[in_tok.get(q) for q in chunk])
        if reason:
            degraded.append(reason)
        estimates.update(zip(chunk, rows, strict=True))
    t_est = time.perf_counter() - t1
    if pool is None:
        covered: dict[str, set[str]] = defaultdict(set)
        for o in test_rows:
            covered[o.model].add(o.query)
        pool = sorted(m for m, qs in covered.items() if len(qs) == len(queries))
    unknown = [m for m in pool if m not in known]
    if unknown:
        msg = f"pool models without prices or anchor outcomes: {unknown}"
        raise ConfigError(msg)
    table = replay_table(test_rows, estimates, cards, pool, tokens_per_char=store.tokens_per_char)
    est_tokens = sum(e.estimator_tokens for per in estimates.values() for e in per.values())
    estimation = _estimation_metrics(test_rows, estimates)
    routing = routing_report(table, values=values)
    report: dict[str, Any] = {
        "estimator": engine.estimator.name,
        "embedder": store.embedder.name,
        "k": k,
        "anchors": store.count(),
        "test_queries": len(queries),
        "estimation": estimation,
        "routing": routing,
        "estimator_cost": {
            "estimator_tokens": est_tokens,
            "degraded_batches": len(degraded),
            "degraded_reasons": sorted(set(degraded))[:5],
            "escalated_share": _escalated_share(estimates),
        },
        "timing_s": {"load": round(t_load, 2), "estimate": round(t_est, 2)},
    }
    if holdout_models:
        report["holdout"] = holdout_report(kept, holdout_seed, estimation, routing) | {"select": holdout_select}
    if cascade is not None:
        report["cascade"] = cascade.run(
            anchors=anchor_rows,
            test=test_rows,
            estimates=estimates,
            cards=cards,
            pool=pool,
            embedder=store.embedder,
            k=k,
            values=values,
            tokens_per_char=store.tokens_per_char,
        )
    return report


def _escalated_share(estimates: Mapping[str, Mapping[str, Estimate]]) -> float | None:
    flags = [escalated(per) for per in estimates.values()]
    return float(np.mean(flags)) if flags else None


def plot_report(report: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Plot the router's accuracy/cost curve, each single model, their convex hull (what mixing them reaches)
    and the oracle; returns the path. A report with a ``cascade`` section (``evaluate --cascade``) also gets
    ``<name>_cascade.png`` beside it: the pre-hoc router and the cascade on the queries the cascade replays."""
    routing = report["routing"]
    out = _plot(
        [("scope-router", routing["curve"], routing["lift_over_singles"])],
        routing,
        path,
        title or f"{report.get('estimator', '')} estimator, {routing['queries']} held-out queries",
    )
    cascade = report.get("cascade")
    if cascade:
        prehoc, steps = cascade["prehoc"], cascade["cascade"]
        _plot(
            [
                ("pre-hoc router", prehoc["curve"], prehoc["lift_over_singles"]),
                ("cascade", steps["curve"], steps["lift_over_singles"]),
            ],
            cascade,
            out.with_name(f"{out.stem}_cascade{out.suffix}"),
            f"cascade and pre-hoc router, {cascade['queries']} queries with recorded responses",
        )
    return out


def _plot(
    curves: Sequence[tuple[str, Sequence[Mapping[str, float]], float | None]],
    field: Mapping[str, Any],
    path: str | Path,
    title: str,
) -> Path:
    """Curves (label, points, lift over singles) over ``field``'s single models, their hull and the oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, points, lift in curves:
        curve = sorted(points, key=lambda pt: pt["cost"])
        lifted = f" (lift over mixing {lift:+.3f} AIQ)" if lift is not None else ""
        ax.plot([pt["cost"] for pt in curve], [pt["accuracy"] for pt in curve], "-o", ms=3, label=label + lifted)
    for name, s in field["singles"].items():
        ax.scatter(s["cost"], s["accuracy"], marker="s", s=25)
        xy = (s["cost"], s["accuracy"])
        ax.annotate(name.split("/")[-1], xy, fontsize=7, xytext=(3, 3), textcoords="offset points")
    hull = field.get("singles_hull") or []
    if len(hull) > 1:
        t = np.linspace(0.0, 1.0, 50)  # mixtures are linear in cost: drawn as curves on the log axis
        xs = np.concatenate([u["cost"] + t * (v["cost"] - u["cost"]) for u, v in itertools.pairwise(hull)])
        ys = np.concatenate([u["accuracy"] + t * (v["accuracy"] - u["accuracy"]) for u, v in itertools.pairwise(hull)])
        ax.plot(xs, ys, "--", c="grey", label="mixing single models (their convex hull)")
    oracle = field["oracle"]
    ax.scatter(oracle["cost"], oracle["accuracy"], marker="*", s=150, c="gold", edgecolors="k", label="oracle")
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (USD, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
