"""Every offline estimator on the shared routing datasets: estimation, routing, unseen models, latency.

For each dataset (``anchors.csv.gz`` into a fresh in-memory store, ``test.csv.gz`` held out) and each
estimator, runs :func:`scope_shared.evaluation.evaluate` and prints one markdown table row; then the
held-out-model runs (``--holdout-models``: those models keep outcomes on ``--holdout-anchors`` random
anchors) next to the same models' AUROC with all anchors; then the per-decision latency of
``ScopeEngine.route`` (one MiniLM embedding of the query, one vector search, the estimator, the policy).
The SCOPE estimators need a vLLM server and are left out here.

    python -m benchmarks.estimators_table                         # both datasets, ~15 min on 2 cores
    python -m benchmarks.estimators_table --datasets routerbench-zs --out out/estimators.md

Each text is embedded once per dataset (MiniLM behind a cache shared by the runs); the latency runs
bypass the cache so that every decision pays for its own embedding.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import emit
from scope_shared import AnchorStore, MiniLMEmbedder, ScopeEngine, load_outcomes, load_prices
from scope_shared.embeddings import Matrix
from scope_shared.evaluation import evaluate
from scope_shared.routing import build_routing

OFFLINE = ("anchors", "learned")
#: Held out per dataset: the best single model and a cheaper strong one.
HOLDOUT = {
    "routerbench-zs": ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"),
    "zeroeval": ("o1-mini-2024-09-12", "gpt-4o-mini-2024-07-18"),
}


class SwitchableCache:
    """MiniLM with an exact-text cache that can be turned off (for latency runs)."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner
        self.caching = True
        self._cache: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.inner.name

    def embed(self, texts: Sequence[str]) -> Matrix:
        if not self.caching:
            return self.inner.embed(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, self.inner.embed(missing), strict=True))
        return np.stack([self._cache[t] for t in texts]).astype(np.float32)


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def run(
    data: Path, estimators: Sequence[str], holdout_anchors: int, latency_queries: int, k: int
) -> tuple[list[str], list[str], list[str]]:
    """The estimator rows, the held-out-model rows and the latency rows of one dataset."""
    name = data.name
    files = [data / "anchors.csv.gz", data / "test.csv.gz", data / "prices.csv"]
    embedder = SwitchableCache(MiniLMEmbedder())
    rows, holdout_rows = [], []
    full_auroc: dict[str, dict[str, float]] = {}
    store = AnchorStore(embedder=embedder)
    for est_name in estimators:
        t0 = time.perf_counter()
        store = AnchorStore(embedder=embedder)
        rep = evaluate(*files, embedder=embedder, store=store, **build_routing(est_name, k=k)._asdict(), k=k)
        e, r = rep["estimation"], rep["routing"]
        full_auroc[est_name] = e["auroc_per_model"]
        cm = r["router_cost_to_match_best_single"]
        rows.append(
            f"| {name} | {est_name} | {fmt(e['auroc_within_model'])} | {fmt(e['ece'])} | {fmt(e['brier'])} | "
            f"{fmt(e['length_log_mae'])} | {'never' if cm is None else fmt(cm)} | {fmt(r['router_max_accuracy'])} "
            f"(best single {fmt(r['best_single']['accuracy'])}) | {fmt(r['aiq'])} |"
        )
        print(rows[-1], f"  [{time.perf_counter() - t0:.0f}s]", file=sys.stderr, flush=True)
    latency_rows = latency(name, estimators, store, files[1], files[2], embedder, latency_queries, k)
    print("\n".join(latency_rows), file=sys.stderr, flush=True)
    held = HOLDOUT.get(name, ())
    for est_name in estimators if held else ():
        rep = evaluate(
            *files,
            embedder=embedder,
            **build_routing(est_name, k=k)._asdict(),
            k=k,
            holdout_models=held,
            holdout_anchors=holdout_anchors,
        )
        ho, r = rep["holdout"], rep["routing"]
        for m in held:
            a_few, a_all = ho["auroc_per_model"].get(m), full_auroc[est_name].get(m)
            gap = None if a_few is None or a_all is None else a_all - a_few
            holdout_rows.append(
                f"| {name} | {est_name} | {m} | {ho['anchors_kept'][m]} | {fmt(a_few)} | {fmt(a_all)} | {fmt(gap)} | "
                f"{fmt(ho['mean_share_over_curve'][m])} | {fmt(r['router_max_accuracy'])} | {fmt(r['aiq'])} |"
            )
            print(holdout_rows[-1], file=sys.stderr, flush=True)
    return rows, holdout_rows, latency_rows


def latency(
    name: str,
    estimators: Sequence[str],
    store: AnchorStore,
    test: Path,
    prices: Path,
    embedder: SwitchableCache,
    n: int,
    k: int,
) -> list[str]:
    """Per-decision ``route`` time of each estimator, interleaved query by query so load drifts hit all alike.

    ``route`` embeds each query afresh (the cache is off); the estimator-only column times the estimator
    on the already retrieved context.
    """
    queries = list(dict.fromkeys(o.query for o in load_outcomes(test)))[:n]
    known = set(store.model_stats())
    cards = [c for c in load_prices(prices) if c.name in known]
    engines = {e: ScopeEngine(store=store, models=cards, **build_routing(e, k=k)._asdict(), k=k) for e in estimators}
    for engine in engines.values():
        engine.wait_ready()  # the learned estimator fits in the background from construction: time it ready
        engine.route(queries[0], options={"reserve": False})
    route: dict[str, list[float]] = {e: [] for e in estimators}
    only: dict[str, list[float]] = {e: [] for e in estimators}
    embed: list[float] = []
    for q in queries:
        embedder.caching = True
        ctxs, _ = next(iter(engines.values())).contexts([q])
        embedder.caching = False
        t0 = time.perf_counter()
        store.embed([q])
        embed.append(time.perf_counter() - t0)
        for e, engine in engines.items():
            t0 = time.perf_counter()
            engine.route(q, options={"reserve": False})
            t1 = time.perf_counter()
            engine.estimator.estimate(ctxs, cards)
            t2 = time.perf_counter()
            route[e].append(t1 - t0)
            only[e].append(t2 - t1)
    embedder.caching = True
    out = []
    for e, engine in engines.items():
        fit = getattr(engine.estimator, "report", None)
        out.append(
            f"| {name} | {e} | {len(cards)} | {ms(statistics.median(route[e]))} | "
            f"{ms(float(np.percentile(route[e], 90)))} | {ms(statistics.median(only[e]))} | "
            f"{ms(statistics.median(embed))} | {f'{fit.seconds:.2f}' if fit is not None else '-'} |"
        )
    return out


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--data", default="../shared/data", help="folder holding the dataset folders")
    p.add_argument("--datasets", default="routerbench-zs,zeroeval")
    p.add_argument("--estimators", default=",".join(OFFLINE))
    p.add_argument("--holdout-anchors", type=int, default=50)
    p.add_argument("--latency-queries", type=int, default=50)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", help="also write the markdown here")
    args = p.parse_args(argv)
    estimators = [e for e in args.estimators.split(",") if e]
    est_rows: list[str] = []
    hold_rows: list[str] = []
    lat_rows: list[str] = []
    for ds in [d for d in args.datasets.split(",") if d]:
        e, h, lat = run(Path(args.data) / ds, estimators, args.holdout_anchors, args.latency_queries, args.k)
        est_rows += e
        hold_rows += h
        lat_rows += lat
    lines = [
        "| dataset | estimator | AUROC within model | ECE | Brier | length log-MAE | router cost to match best "
        "single | router max accuracy | AIQ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *est_rows,
        "",
        f"Unseen models: each held-out model keeps outcomes on {args.holdout_anchors} random anchors (seed 0); "
        "AUROC within model against the same model's AUROC with all its anchors; share = mean share of the "
        "router's picks over the value sweep.",
        "",
        "| dataset | estimator | held-out model | anchors kept | AUROC (few) | AUROC (all) | gap | share | "
        "router max accuracy | AIQ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *hold_rows,
        "",
        "Per-decision latency of `ScopeEngine.route` (one MiniLM embedding, one vector search, the estimator, "
        f"the policy) over {args.latency_queries} held-out queries on CPU, estimators interleaved query by query; "
        "estimator only = the estimator on the retrieved context; fit = one-off seconds of the learned "
        "estimator's fit on first use.",
        "",
        "| dataset | estimator | candidates | route p50 ms | route p90 ms | estimator only p50 ms | "
        "embedding alone p50 ms | fit s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *lat_rows,
    ]
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
