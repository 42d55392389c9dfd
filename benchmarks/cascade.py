"""Cascade routing against the pre-hoc router, the single models' hull and the oracle, replayed exactly.

For each dataset: the anchors go into a fresh in-memory store (MiniLM, one cache shared by every store of the
process), the learned estimator estimates the held-out queries, the cascade's posterior is calibrated on the
anchors with cross-fitted estimates (never on the test split), and cascades are replayed on the test queries
that have a reference and a recorded response of every pool model: each call answers with the model's real
recorded response, read by the query's grader, and costs its recorded tokens x prices. Prints, per dataset:

- the side-by-side table (AIQ, lift over the singles' hull, accuracy at the best single model's cost, cost to
  match the best single model), for each cascade setting;
- for orientation, fixed agreement rules ("accept when A and B agree, else call C") on the same queries: the
  issue's rule, and the hull of every such rule chosen on the test split itself (an optimistic ceiling);
- the calibration of the posterior on the anchors;
- latency: one engine decision (``route``: embedding, search, estimator; embedding uncached) against the
  cascade's own decisions (the first step's plan, and each later step after an answer), with instant fake
  models answering from the recorded responses.

    python -m benchmarks.cascade                                   # both datasets, ~25 min on 2 busy cores
    python -m benchmarks.cascade --datasets zeroeval --settings 4,3,8 3,3,6 --factors 1 2 --out out/cascade.md
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import emit
from benchmarks.estimators_table import SwitchableCache
from scope_shared import AnchorStore, MiniLMEmbedder, ScopeEngine, load_outcomes, load_prices
from scope_shared.cascade import Cascade, CascadeStep
from scope_shared.cascade.calibration import fit_calibration
from scope_shared.cascade.replay import (
    RecordedAnswers,
    ReplayItem,
    calibration_rows,
    cascade_report,
    crossfit_estimates,
    replay_items,
    with_answers,
)
from scope_shared.evaluation import DEFAULT_VALUES
from scope_shared.metrics import hull_aiq
from scope_shared.suites.graders import grader_named
from scope_shared.types import Outcome

#: The issue's fixed rule, per dataset: accept when the first two agree, else call the third.
ISSUE_RULES = {
    "routerbench-zs": ("mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat", "gpt-4-1106-preview"),
}


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def rule_point(items: Sequence[ReplayItem], first: str, second: str, then: str) -> tuple[float, float]:
    """(mean cost, accuracy) of: call ``first`` and ``second``; keep their answer when it agrees, else ``then``."""
    acc = cost = 0.0
    for it in items:
        g = grader_named(it.kind)
        a, b = g.extract(it.texts[first]), g.extract(it.texts[second])
        cost += it.costs[first] + it.costs[second]
        if a is not None and g.agree(a, b):
            acc += it.correct[first]
        else:
            cost += it.costs[then]
            acc += it.correct[then]
    return cost / len(items), acc / len(items)


def rule_hull_lift(items: Sequence[ReplayItem], singles: Mapping[str, Mapping[str, float]]) -> float | None:
    """Lift over the singles' hull of the hull of every fixed agreement rule and single model, chosen on the
    replayed queries themselves (an optimistic ceiling for fixed rules)."""
    models = list(singles)
    points = [(s["cost"], s["accuracy"]) for s in singles.values()]
    for a, b in itertools.combinations(models, 2):
        for c in models:
            if c not in (a, b):
                points.append(rule_point(items, a, b, c))
    best = max(singles.values(), key=lambda s: (s["accuracy"], -s["cost"]))
    lo = min(s["cost"] for s in singles.values())
    rules = hull_aiq(points, lo, best["cost"])
    base = hull_aiq([(s["cost"], s["accuracy"]) for s in singles.values()], lo, best["cost"])
    return None if rules is None or base is None else rules - base


def latency(
    engine: ScopeEngine,
    cascade: Cascade,
    embedder: SwitchableCache,
    items: Sequence[ReplayItem],
    n: int,
) -> dict[str, list[float]]:
    """Seconds of one ``route`` (embedding uncached), the first cascade decision, and each later one."""
    out: dict[str, list[float]] = {"route": [], "first": [], "step": [], "calls": []}
    for it in items[:n]:
        embedder.caching = False
        t0 = time.perf_counter()
        decision = engine.route(it.query, options={"reserve": False})
        out["route"].append(time.perf_counter() - t0)
        embedder.caching = True
        t0 = time.perf_counter()
        plan = cascade.plan(engine, decision)
        out["first"].append(time.perf_counter() - t0)
        step: Any = plan.first
        calls = 0
        while isinstance(step, CascadeStep):
            calls += 1
            text = it.texts.get(step.model, "")
            t0 = time.perf_counter()
            step = plan.observe(step.model, text, input_tokens=100, output_tokens=100)
            out["step"].append(time.perf_counter() - t0)
        out["calls"].append(float(calls))
    return out


def times(x: float | None) -> str:
    return "never" if x is None else f"{x:.2f}x"


def ms(values: Sequence[float], q: float | None = None) -> str:
    if not values:
        return "-"
    v = statistics.median(values) if q is None else float(np.percentile(values, q))
    return f"{1000 * v:.1f}"


#: The issue's goals: a cascade lift over singles on routerbench-zs, and the best single model's accuracy at a
#: share of its cost on at least one dataset.
GOAL_LIFT = ("routerbench-zs", 0.03)
GOAL_COST = 0.5


def run(
    data: Path,
    settings: Sequence[tuple[int, int, int]],
    factors: Sequence[int],
    k: int,
    n_latency: int,
    found: dict[str, list[tuple[float | None, float | None]]] | None = None,
) -> list[str]:
    name = data.name
    t0 = time.perf_counter()
    embedder = SwitchableCache(MiniLMEmbedder())
    anchors = load_outcomes(data / "anchors.csv.gz")
    test = load_outcomes(data / "test.csv.gz")
    cards = {c.name: c for c in load_prices(data / "prices.csv")}
    recorded = RecordedAnswers.load(data / "responses.csv.gz", data / "references.csv.gz")
    known = sorted({o.model for o in anchors} & cards.keys())
    store = AnchorStore(embedder=embedder)
    store.add(with_answers([o for o in anchors if o.model in cards], recorded), progress=False)
    engine = ScopeEngine(store=store, models=[cards[m] for m in known], k=k, unsent=None)
    engine.wait_ready()
    queries = list(dict.fromkeys(o.query for o in test))
    in_tok: dict[str, float] = {}
    for o in test:
        if o.input_tokens is not None:
            in_tok.setdefault(o.query, float(o.input_tokens))
    estimates = {}
    for start in range(0, len(queries), 256):
        chunk = queries[start : start + 256]
        rows, _ = engine.estimate(chunk, input_tokens=[in_tok.get(q) for q in chunk])
        estimates.update(zip(chunk, rows, strict=True))
    qids = {o.query_id for o in test if o.query_id in recorded.references}
    pool = [m for m in known if all((q, m) in recorded.responses for q in qids)]
    items = replay_items(test, estimates, recorded, cards, pool, tokens_per_char=store.tokens_per_char)
    print(
        f"[{name}] {len(items)} replayable queries, pool {len(pool)}; estimated in {time.perf_counter() - t0:.0f}s",
        file=sys.stderr,
        flush=True,
    )
    rows_with = with_answers(anchors, recorded)
    oof = crossfit_estimates(rows_with, list(cards.values()), embedder=embedder, k=k)

    def kind_of(o: Outcome) -> str | None:
        ref = recorded.references.get(o.query_id) if o.query_id is not None else None
        return ref.kind if ref is not None else None

    cal_rows = calibration_rows(rows_with, oof, kind_of)
    print(f"[{name}] cross-fitted {len(oof)} anchors at {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    lines = [f"### {name}: {len(items)} test queries with references, {len(pool)} models with recorded responses", ""]
    table = [
        "| router | setting | AIQ | lift over singles | acc at best single's cost | cost to match best single | calls "
        "(at that cost) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    cal_lines: list[str] = []
    report: dict[str, Any] = {}
    lat: dict[str, list[float]] = {}
    for f in factors:
        calibration = fit_calibration(cal_rows, graders=recorded.graders, factors=f)
        check = calibration.report["posterior_check"]
        cal_lines.append(
            f"| {name} | {f} | {', '.join(sorted(calibration.groups))} | {fmt(check['independent']['ece'], '.3f')} | "
            f"{fmt(check['fitted']['ece'], '.3f')} | {fmt(check['recalibrated']['ece'], '.3f')} | "
            f"{fmt(check['recalibrated']['top_mean_p'], '.3f')} / {fmt(check['recalibrated']['top_accuracy'], '.3f')} |"
        )
        for calls, depth, cands in settings:
            cascade = Cascade(
                calibration=calibration,
                grader=recorded.grader(items[0].kind),
                max_calls=calls,
                depth=depth,
                max_candidates=cands,
            )
            t1 = time.perf_counter()
            report = cascade_report(items, cascade, values=DEFAULT_VALUES, graders=recorded.graders)
            r = report["cascade"]
            best_cost = report["best_single"]["cost"]
            near = [pt for pt in r["curve"] if pt["cost"] <= best_cost + 1e-15]
            calls_at = max(near, key=lambda pt: pt["accuracy"])["calls"] if near else None
            if found is not None:
                found.setdefault(name, []).append((r["lift_over_singles"], r["cost_to_match_best_single"]))
            table.append(
                f"| cascade | {calls} calls, depth {depth}, {cands} candidates, {f} factor(s) | {fmt(r['aiq'])} | "
                f"{fmt(r['lift_over_singles'], '+.4f')} | {fmt(r['acc_at_best_single_cost'], '.3f')} | "
                f"{times(r['cost_to_match_best_single'])}"
                f" | {fmt(calls_at, '.2f')} |"
            )
            print(table[-1], f"[{time.perf_counter() - t1:.0f}s]", file=sys.stderr, flush=True)
            if not lat and n_latency:
                lat = latency(engine, cascade, embedder, items, n_latency)
    p = report["prehoc"]
    best = report["best_single"]
    oracle = report["oracle"]
    table[2:2] = [
        f"| pre-hoc router | learned estimator | {fmt(p['aiq'])} | {fmt(p['lift_over_singles'], '+.4f')} | "
        f"{fmt(p['acc_at_best_single_cost'], '.3f')} | "
        f"{times(p['cost_to_match_best_single'])} | 1 |",
        f"| singles hull | random mixtures of single models | {fmt(report['cascade']['hull_aiq'])} | +0.0000 | "
        f"{best['accuracy']:.3f} ({best['model']}) | 1.00x | 1 |",
        f"| oracle | cheapest correct model | - | - | {oracle['accuracy']:.3f} | {oracle['cost'] / best['cost']:.2f}x "
        "(its cost) | 1 |",
    ]
    lines += table
    rule = ISSUE_RULES.get(name)
    lines += ["", "Fixed agreement rules on the same queries, for orientation:", ""]
    if rule is not None and all(m in pool for m in rule):
        c, a = rule_point(items, *rule)
        lines.append(
            f"- the issue's rule (accept when {rule[0]} and {rule[1]} agree, else {rule[2]}): accuracy {a:.3f} at "
            f"{c / best['cost']:.2f}x the best single's cost"
        )
    lines.append(
        "- the hull of every rule 'accept when A and B agree, else C' and every single model, chosen on these test "
        f"queries (optimistic): lift over singles {fmt(rule_hull_lift(items, report['singles']), '+.4f')}"
    )
    lines += [
        "",
        "| dataset | factors | calibration groups | ECE independent | ECE fitted | ECE recalibrated | "
        "P >= 0.95: mean P / accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *cal_lines,
    ]
    if lat:
        lines += [
            "",
            "| dataset | queries | route (ms, median / p90) | first cascade decision | each later decision | calls "
            "per query |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {name} | {len(lat['route'])} | {ms(lat['route'])} / {ms(lat['route'], 90)} | {ms(lat['first'])} / "
            f"{ms(lat['first'], 90)} | {ms(lat['step'])} / {ms(lat['step'], 90)} | "
            f"{statistics.mean(lat['calls']):.2f} |",
        ]
    lines += ["", f"wall time {time.perf_counter() - t0:.0f}s", ""]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--data", default="../shared/data", help="folder holding the dataset folders")
    p.add_argument("--datasets", default="routerbench-zs,zeroeval")
    p.add_argument("--settings", nargs="+", default=["4,3,8"], help="cascade settings: max_calls,depth,max_candidates")
    p.add_argument("--factors", nargs="+", type=int, default=[1], help="latent difficulty factors to calibrate")
    p.add_argument("--latency-queries", type=int, default=30)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", help="also write the markdown here")
    args = p.parse_args(argv)
    settings = [tuple(int(x) for x in s.split(",")) for s in args.settings]
    lines = [
        "Cascade routing, replayed exactly from recorded responses (value_per_correct swept over "
        f"{len(DEFAULT_VALUES)} settings; costs are recorded tokens x prices of every model called).",
        "",
    ]
    found: dict[str, list[tuple[float | None, float | None]]] = {}
    for ds in [d for d in args.datasets.split(",") if d]:
        lines += run(Path(args.data) / ds, settings, args.factors, args.k, args.latency_queries, found)  # type: ignore[arg-type]
    return emit(lines + goals(found), args.out)


def goals(found: Mapping[str, Sequence[tuple[float | None, float | None]]]) -> list[str]:
    """The issue's two goals against the best cascade setting measured (a line each: the figure, met or not)."""
    out = ["Goals (best setting measured):"]
    ds, target = GOAL_LIFT
    lifts = [lift for lift, _ in found.get(ds, []) if lift is not None]
    if lifts:
        verdict = "met" if max(lifts) >= target else "not met"
        out.append(f"- cascade lift_over_singles >= +{target:.2f} on {ds}: {max(lifts):+.4f} ({verdict})")
    costs = {name: min(c for _, c in rows if c is not None) for name, rows in found.items() if any(c for _, c in rows)}
    shown = ", ".join(f"{name} {c:.2f}x" for name, c in costs.items()) or "never"
    verdict = "met" if any(c <= GOAL_COST for c in costs.values()) else "not met"
    out.append(f"- the best single model's accuracy at <= {GOAL_COST}x its cost on a dataset: {shown} ({verdict})")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
