"""Bring your own model, measured: a held-out model profiled through the replay server on N anchors, then routing
its dataset's test split, against the same model with all its suite anchors.

For each held-out model (``dataset:model``):

- **all**: a store from the whole packaged suite, the model's suite outcomes in it under its own name (no
  holdout); the dataset's test queries of the suite's tasks routed by replay;
- **profiled**: :func:`scope_shared.demo.run_journey`, what ``scope-router demo`` runs: the model's outcomes
  left out of the store, the model served under a new name by the replay server (real HTTP, the ``openai``
  client, ``profile()``), profiled on ``N`` of the suite's questions of its dataset chosen by ``select``
  (``informative`` at each ``--sizes``, ``random`` at each ``--random-sizes``; one run per seed), then the same
  test queries routed with it in the pool under its new name.

Each run gives the model's AUROC within model on the test split, its accuracy on its profiled anchors (what
the learned estimator reads for a model under ``min_own_coverage``) against its test accuracy, its mean share
of the router's picks over the value sweep, and the router's AIQ and ``lift_over_singles``.

    python -m benchmarks.byom                                   # six models, N 25/50/100 + random 50, 5 seeds
    python -m benchmarks.byom --models zeroeval:gpt-4o-mini-2024-07-18 --seeds 1

MiniLM embeds each test query once for all runs (one cache); the suite's questions come with its vectors.
Progress goes to stderr; the table to stdout (and ``--out``); every figure to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import emit
from scope_shared.demo import DemoData, route_test, run_journey, suite_store
from scope_shared.embeddings import CachedEmbedder, Embedder, embedder_named
from scope_shared.estimators.learned import LearnedEstimator
from scope_shared.suites import AnchorSuite, load_suite

DEFAULT_MODELS = (
    "routerbench-zs:gpt-4-1106-preview",
    "routerbench-zs:mistralai/mixtral-8x7b-chat",
    "routerbench-zs:meta/llama-2-70b-chat",
    "zeroeval:o1-mini-2024-09-12",
    "zeroeval:gpt-4o-mini-2024-07-18",
    "zeroeval:Meta-Llama-3.1-8B-Instruct",
)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GOAL = 0.01
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def _share(report: dict[str, Any], name: str) -> float:
    curve = report["routing"]["curve"]
    return float(np.mean([pt["model_share"].get(name, 0.0) for pt in curve]))


def _figures(report: dict[str, Any], name: str) -> dict[str, Any]:
    rt = report["routing"]
    return {
        "auroc": report["estimation"]["auroc_per_model"].get(name),
        "aiq": rt["aiq"],
        "lift": rt["lift_over_singles"],
        "share": _share(report, name),
        "test_accuracy": rt["singles"][name]["accuracy"],
    }


def reference(data: DemoData, suite: AnchorSuite, model: str, inner: Embedder, k: int) -> dict[str, Any]:
    """The model with all its suite anchors, under its own name."""
    t0 = time.perf_counter()
    tasks = sorted({q.task for q in suite if q.source == data.source})
    store = suite_store(suite, inner)
    report = route_test(store, data=data, tasks=tasks, estimator=LearnedEstimator(k=k), k=k)
    anchors = sum(1 for q in suite if q.source == data.source and model in q.outcomes)
    accuracy = [q.outcomes[model].correct for q in suite if q.source == data.source and model in q.outcomes]
    return {
        "select": "all",
        "n": anchors,
        "seed": None,
        "anchor_accuracy": float(np.mean(accuracy)),
        "seconds": round(time.perf_counter() - t0, 1),
        **_figures(report, model),
    }


def profiled(
    data: DemoData, suite: AnchorSuite, model: str, inner: Embedder, k: int, n: int, select: str, seed: int
) -> dict[str, Any]:
    """The model left out, profiled through the replay server on ``n`` anchors, routed under its new name."""
    estimator = LearnedEstimator(k=k)
    trip = run_journey(
        data=data, suite=suite, model=model, inner=inner, n=n, select=select, seed=seed, estimator=estimator, k=k
    )
    graded = [e.correct for e in trip.profile.recorded if e.correct is not None]
    if len(graded) != n:
        msg = f"{model}: {len(graded)} of {n} anchors recorded ({trip.profile.stopped or 'refused anchors'})"
        raise RuntimeError(msg)
    return {
        "select": select,
        "n": n,
        "seed": seed,
        "anchor_accuracy": float(np.mean(graded)),
        "seconds": trip.seconds["total"],
        **_figures(trip.report, trip.name),
    }


def _mean_sd(xs: Sequence[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def table(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The markdown table: one row per (model, selection, N), mean ± sd over seeds."""
    lines = [
        "| dataset | held-out model | anchors | selection | AUROC | gap | AIQ | lift over singles | share "
        "| acc error |",
        "| --- | --- | ---: | --- | --- | ---: | --- | --- | --- | --- |",
    ]
    verdicts = []
    for key, runs in results.items():
        dataset, model = key.split(":", 1)
        ref = next(r for r in runs if r["select"] == "all")
        groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in runs:
            groups.setdefault((r["select"], r["n"]), []).append(r)
        order = sorted(groups, key=lambda g: (g[0] == "all", g[0] == "random", g[1]))
        for select, n in order:
            rs = groups[(select, n)]
            aurocs = [r["auroc"] for r in rs]
            gap = ref["auroc"] - statistics.fmean(aurocs)
            err = [abs(r["anchor_accuracy"] - r["test_accuracy"]) for r in rs]
            lines.append(
                f"| {dataset} | {model} | {n} | {select} | {_mean_sd(aurocs)} | "
                f"{'' if select == 'all' else f'{gap:+.3f}'} | {_mean_sd([r['aiq'] for r in rs])} | "
                f"{_mean_sd([r['lift'] for r in rs])} | {_mean_sd([r['share'] for r in rs])} | {_mean_sd(err)} |"
            )
        main50 = groups.get(("informative", 50))
        if main50:
            gap = ref["auroc"] - statistics.fmean(r["auroc"] for r in main50)
            verdict = "meets" if gap <= GOAL else "misses"
            verdicts.append(f"- {model}: informative N=50 gap {gap:+.3f}: {verdict} the {GOAL} goal")
    return [*lines, "", *verdicts]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--data", type=Path, default=DATA, help="the folder of dataset folders (../shared/data)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated dataset:model")
    p.add_argument("--sizes", default="25,50,100", help="N for the informative selection")
    p.add_argument("--random-sizes", default="50", help="N for the random selection")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", default="out/byom.json")
    p.add_argument("--out", help="also write the table here")
    args = p.parse_args(argv)
    plan = [("informative", int(n)) for n in args.sizes.split(",") if n] + [
        ("random", int(n)) for n in args.random_sizes.split(",") if n
    ]
    inner = CachedEmbedder(embedder_named("minilm"), maxsize=100_000)
    suite = load_suite("default")
    data: dict[str, DemoData] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    for key in [m.strip() for m in args.models.split(",") if m.strip()]:
        dataset, model = key.split(":", 1)
        if dataset not in data:
            data[dataset] = DemoData.load(args.data / dataset)
        runs = [reference(data[dataset], suite, model, inner, args.k)]
        log(f"{key}: all anchors ({runs[0]['n']}): auroc {runs[0]['auroc']:.3f} in {runs[0]['seconds']} s")
        for select, n in plan:
            for seed in range(args.seeds):
                r = profiled(data[dataset], suite, model, inner, args.k, n, select, seed)
                runs.append(r)
                log(f"{key}: {select} {n} seed {seed}: auroc {r['auroc']:.3f} aiq {r['aiq']:.3f} in {r['seconds']} s")
        results[key] = runs
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"k": args.k, "seeds": args.seeds, "results": results}, indent=2))
    lines = [
        f"byom: {len(results)} held-out models, profiled through the replay server; {args.seeds} seed(s); "
        f"learned estimator, k={args.k}, MiniLM; {time.perf_counter() - T0:.0f} s",
        "",
        *table(results),
    ]
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
