"""Which anchors a new model should be profiled on: informative selection against random, by replay.

For each dataset, some models are treated as new (``evaluate(holdout_models=...)``): they keep outcomes on
``N`` anchors only, chosen at random (``holdout_select="random"``, one draw per seed) or by
:func:`scope_shared.suites.selection.select_anchors` (``"informative"`` or a strategy by name, one run per
seed: the seed moves its clustering and its sample's start). Each run reports, per held-out model, its
AUROC within model on the test split, its mean share of the router's picks over the value sweep and the
accuracy its anchors give it (the estimator's ``model`` feature) against its accuracy on the test split;
and the router's AIQ. The same models with all their anchors (no holdout) are the reference.

A second, cheap table needs no replay: every model of the dataset in turn plays the new model (selection
sees only the others' outcomes), and the table gives the error of its accuracy on the selected anchors
against its accuracy on all candidates.

    python -m benchmarks.anchor_selection                      # both datasets, N 25/50/100, 5 seeds
    python -m benchmarks.anchor_selection --datasets routerbench-zs --sizes 50 --seeds 2 --selects random,informative

Every text is embedded once (MiniLM behind one cache for all runs; ``--vectors FILE`` keeps the vectors
between invocations). Progress goes to stderr with timestamps; the tables to stdout; all figures as JSON
to ``--json`` (default ``out/anchor_selection.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import emit
from scope_shared import AnchorStore, ModelCard, ScopeEngine, load_outcomes, load_prices
from scope_shared.embeddings import Embedder, Matrix, embedder_named
from scope_shared.estimators.learned import LearnedEstimator
from scope_shared.evaluation import auroc, evaluate
from scope_shared.suites.selection import DEFAULT_STRATEGY, select_anchors
from scope_shared.types import Outcome

#: Held out per dataset: the best or a strong model, a cheaper strong one, a weak one; on zeroeval all three
#: answered both GSM8K and CRUXEval (the routing pool is the models with an outcome on every test query).
HOLDOUT = {
    "routerbench-zs": ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "meta/llama-2-70b-chat"),
    "zeroeval": ("o1-mini-2024-09-12", "gpt-4o-mini-2024-07-18", "Meta-Llama-3-8B-Instruct"),
}

K = 10
#: Outcomes per store write: the anchors are sorted by query, so a batch writes whole anchors (5x faster
#: loads than the default 512 on zeroeval's 59 models; the store's content is the same).
LOAD_BATCH = 8192
#: At most this many models play the new model in the every-model-new table (evenly spread by accuracy).
LOO_MODELS = 12
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


class VectorCache:
    """An exact-text cache in front of an embedder, optionally loaded from and saved to an ``.npz`` file."""

    def __init__(self, inner: Embedder, path: Path | None = None) -> None:
        self.inner = inner
        self.path = path
        self._cache: dict[str, np.ndarray] = {}
        self.embedded = 0
        self._logged = time.perf_counter()
        if path is not None and path.exists():
            data = np.load(path)
            if str(data["name"]) == inner.name:
                self._cache = dict(zip(data["texts"].tolist(), data["vectors"], strict=True))
                log(f"loaded {len(self._cache)} vectors from {path}")

    @property
    def name(self) -> str:
        return self.inner.name

    def embed(self, texts: Sequence[str]) -> Matrix:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            t0 = time.perf_counter()
            self._cache.update(zip(missing, np.asarray(self.inner.embed(missing), dtype=np.float32), strict=True))
            self.embedded += len(missing)
            if len(missing) >= 200 or time.perf_counter() - self._logged > 60:
                log(f"embedded {self.embedded} texts so far ({len(missing)} in {time.perf_counter() - t0:.0f}s)")
                self._logged = time.perf_counter()
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def save(self) -> None:
        if self.path is None or not self._cache:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self._cache)
        vectors = np.stack([self._cache[t] for t in texts])
        np.savez_compressed(self.path, name=self.inner.name, texts=np.array(texts), vectors=vectors)


@dataclass(frozen=True)
class Dataset:
    name: str
    anchors: list[Outcome]  # sorted by query: each anchor is written once (the store merges either way)
    test: list[Outcome]
    cards: list[ModelCard]
    held: tuple[str, ...]

    @classmethod
    def load(cls, folder: Path) -> Dataset:
        anchors = sorted(load_outcomes(folder / "anchors.csv.gz"), key=lambda o: o.query)
        test = load_outcomes(folder / "test.csv.gz")
        return cls(folder.name, anchors, test, load_prices(folder / "prices.csv"), HOLDOUT[folder.name])

    def test_accuracy(self, model: str) -> float:
        return float(np.mean([o.correct for o in self.test if o.model == model]))


def replay(data: Dataset, emb: VectorCache, n: int | None, select: str, seed: int) -> dict[str, Any]:
    """One evaluate run (``n`` None: no holdout) and what it says about the held-out models."""
    held = data.held
    store = AnchorStore(embedder=emb, batch_size=LOAD_BATCH)
    hold: dict[str, Any] = {}
    if n is not None:
        hold = {"holdout_models": held, "holdout_anchors": n, "holdout_seed": seed, "holdout_select": select}
    est = LearnedEstimator(k=K)
    rep = evaluate(data.anchors, data.test, data.cards, embedder=emb, store=store, estimator=est, k=K, **hold)
    stats = store.model_stats()
    share = {m: float(np.mean([pt["model_share"].get(m, 0.0) for pt in rep["routing"]["curve"]])) for m in held}
    own = own_neighbours(data, store, est)
    return {
        "n": n,
        "select": select if n is not None else "all",
        "seed": seed,
        "aiq": rep["routing"]["aiq"],
        "router_max_accuracy": rep["routing"]["router_max_accuracy"],
        "auroc_within_model_all_models": rep["estimation"]["auroc_within_model"],
        "models": {
            m: {
                "auroc": rep["estimation"]["auroc_per_model"].get(m),
                "share": share[m],
                "anchors": stats[m].n,
                "anchor_accuracy": stats[m].p_correct,
                **own[m],
            }
            for m in held
        },
    }


def own_neighbours(data: Dataset, store: AnchorStore, est: LearnedEstimator) -> dict[str, dict[str, float | None]]:
    """Per held-out model: its own outcomes among each test query's retrieved anchors, and its AUROC within
    model when those are removed from the retrieved anchors (what its estimate owes to its own neighbours)."""
    engine = ScopeEngine(store=store, models=data.cards, estimator=est, k=K)
    truth: dict[str, dict[str, float]] = defaultdict(dict)
    for o in data.test:
        truth[o.model][o.query] = o.correct
    queries = sorted({q for m in data.held for q in truth[m]})
    ctxs, _ = engine.contexts(queries)
    stripped = [
        dataclasses.replace(
            c,
            anchors=tuple(
                dataclasses.replace(a, outcomes={m: v for m, v in a.outcomes.items() if m not in data.held})
                for a in c.anchors
            ),
        )
        for c in ctxs
    ]
    cards = [c for c in data.cards if c.name in data.held]
    with_own, without = est.estimate(ctxs, cards), est.estimate(stripped, cards)
    out: dict[str, dict[str, float | None]] = {}
    for m in data.held:
        idx = [i for i, q in enumerate(queries) if q in truth[m]]
        y = [truth[m][queries[i]] for i in idx]
        hits = [sum(1 for a in ctxs[i].anchors if m in a.outcomes) for i in idx]
        out[m] = {
            "own_neighbours_per_query": float(np.mean(hits)),
            "queries_with_own_neighbour": float(np.mean([h > 0 for h in hits])),
            "auroc_replayed": auroc([with_own[i][m].p_correct for i in idx], y),
            "auroc_without_own_neighbours": auroc([without[i][m].p_correct for i in idx], y),
        }
    return out


def loo_accuracy_error(
    rows: Sequence[Outcome], emb: VectorCache, sizes: Sequence[int], seeds: int, selects: Sequence[str]
) -> dict[str, Any]:
    """Models in turn are new: mean |accuracy on the selected anchors - accuracy on all its anchors|."""
    store = AnchorStore(embedder=emb)  # only for its embedding of texts (the tail it embeds)
    by_model: dict[str, dict[str, float]] = defaultdict(dict)
    for o in rows:
        by_model[o.model][o.query] = o.correct
    all_models = sorted(by_model, key=lambda m: (float(np.mean(list(by_model[m].values()))), m))
    new_models = [all_models[int(i)] for i in np.unique(np.linspace(0, len(all_models) - 1, LOO_MODELS).round())]
    out: dict[str, Any] = {}
    for select in selects:
        for n in sizes:
            errs: list[float] = []
            for j, model in enumerate(new_models):
                queries = sorted(by_model[model])
                if len(queries) <= n:
                    continue
                refs = [m for m in all_models if m != model]
                outcomes = np.array([[by_model[r].get(q, np.nan) for r in refs] for q in queries])
                truth = float(np.mean([by_model[model][q] for q in queries]))
                vectors = np.asarray(store.embed(queries), dtype=np.float64)
                for seed in range(seeds):
                    if select == "random":
                        rng = np.random.default_rng([seed, j])
                        picked = [queries[i] for i in rng.choice(len(queries), size=n, replace=False)]
                    else:
                        strategy: Any = DEFAULT_STRATEGY if select == "informative" else select
                        picked = select_anchors(queries, vectors, outcomes, n=n, seed=[seed, j], strategy=strategy)
                    errs.append(abs(float(np.mean([by_model[model][q] for q in picked])) - truth))
            out[f"{select}/{n}"] = {
                "mean_abs_error": float(np.mean(errs)),
                "rmse": float(np.sqrt(np.mean(np.square(errs)))),
                "runs": len(errs),
            }
            log(f"  loo accuracy error {select:>14} N={n:<4} mean {out[f'{select}/{n}']['mean_abs_error']:.4f}")
    return out


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def spread(values: Sequence[float]) -> str:
    """Mean ± standard deviation (over seeds), or the value alone."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt(values[0])
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _runs(res: Mapping[str, Any], n: int, select: str) -> list[dict[str, Any]]:
    return [r for r in res["runs"] if r["n"] == n and r["select"] == select]


def tables(results: Mapping[str, Any]) -> list[str]:
    """The markdown tables of a run's (or a saved run's) results."""
    lines = [
        "Per held-out model: mean ± standard deviation over seeds. AUROC = within model on the test split; "
        "gap = AUROC with all anchors minus the mean; w/o own = the same estimates with the model's own "
        "outcomes removed from each query's retrieved anchors; own/q = its outcomes among a query's 30 retrieved "
        "anchors; share = mean share of the router's picks over the value sweep; acc error = |its accuracy on "
        "its anchors (the estimator's `model` feature) - its accuracy on the test split|.",
        "",
        "| dataset | held-out model | N | selection | AUROC | gap | w/o own | own/q | share | acc error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    meets: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for ds, res in results.items():
        if "all" not in res:
            continue
        full = res["all"]
        for m in res["held"]:
            a_all = full["models"][m]["auroc"]
            truth = res["test_accuracy"][m]
            f = full["models"][m]
            lines.append(
                f"| {ds} | {m} | all | - | {fmt(a_all)} | - | {fmt(f.get('auroc_without_own_neighbours'))} | "
                f"{fmt(f.get('own_neighbours_per_query'), 1)} | {fmt(f['share'])} | "
                f"{fmt(abs(f['anchor_accuracy'] - truth))} |"
            )
            for n in res["sizes"]:
                for select in res["selects"]:
                    runs = [r["models"][m] for r in _runs(res, n, select)]
                    au = [r["auroc"] for r in runs if r["auroc"] is not None]
                    gap = a_all - statistics.mean(au) if au and a_all is not None else None
                    if gap is not None:
                        meets[(select, n)].append(gap <= (0.01 if n >= 50 else 0.02))
                    without = [r["auroc_without_own_neighbours"] for r in runs if r["auroc_without_own_neighbours"]]
                    lines.append(
                        f"| {ds} | {m} | {n} | {select} | {spread(au)} | {fmt(gap)} | {spread(without)} | "
                        f"{statistics.mean(r['own_neighbours_per_query'] for r in runs):.1f} | "
                        f"{spread([r['share'] for r in runs])} | "
                        f"{spread([abs(r['anchor_accuracy'] - truth) for r in runs])} |"
                    )
    lines += ["", "Models within the goal (mean AUROC over seeds within 0.01 of all anchors at N >= 50, 0.02 at N=25):"]
    lines += [f"- {sel} N={n}: {sum(v)} of {len(v)}" for (sel, n), v in sorted(meets.items())]
    lines += ["", "Routing with the held-out models in the pool (mean ± sd over seeds):", ""]
    lines += ["| dataset | N | selection | AIQ | router max accuracy | AUROC within model, all models |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for ds, res in results.items():
        if "all" not in res:
            continue
        full = res["all"]
        lines.append(
            f"| {ds} | all | - | {fmt(full['aiq'])} | {fmt(full['router_max_accuracy'])} | "
            f"{fmt(full['auroc_within_model_all_models'])} |"
        )
        for n in res["sizes"]:
            for select in res["selects"]:
                runs = _runs(res, n, select)
                lines.append(
                    f"| {ds} | {n} | {select} | {spread([r['aiq'] for r in runs])} | "
                    f"{spread([r['router_max_accuracy'] for r in runs])} | "
                    f"{spread([r['auroc_within_model_all_models'] for r in runs])} |"
                )
    lines += ["", "Accuracy on the selected anchors against accuracy on all candidates, models in turn new:", ""]
    lines += ["| dataset | selection | N | mean abs error | RMSE | runs |", "| --- | --- | --- | --- | --- | --- |"]
    for ds, res in results.items():
        for key, v in res.get("loo", {}).items():
            select, n = key.split("/")
            lines.append(f"| {ds} | {select} | {n} | {v['mean_abs_error']:.4f} | {v['rmse']:.4f} | {v['runs']} |")
    return lines


def run_dataset(
    folder: Path,
    emb: VectorCache,
    sizes: Sequence[int],
    seeds: int,
    selects: Sequence[str],
    *,
    loo: bool = True,
    replays: bool = True,
) -> dict[str, Any]:
    data = Dataset.load(folder)
    res: dict[str, Any] = {
        "held": list(data.held),
        "sizes": list(sizes),
        "selects": list(selects),
        "test_accuracy": {m: data.test_accuracy(m) for m in data.held},
        "runs": [],
    }
    if replays:
        log(f"{data.name}: all anchors")
        res["all"] = replay(data, emb, None, "all", 0)
        log(
            f"{data.name}: all anchors: " + ", ".join(f"{m}={fmt(v['auroc'])}" for m, v in res["all"]["models"].items())
        )
        emb.save()
    for n in sizes if replays else ():
        for select in selects:
            for seed in range(seeds):
                t0 = time.perf_counter()
                r = replay(data, emb, n, select, seed)
                res["runs"].append(r)
                log(
                    f"{data.name} N={n} {select} seed={seed}: "
                    + ", ".join(f"{m.split('/')[-1]}={fmt(v['auroc'])}" for m, v in r["models"].items())
                    + f" aiq={fmt(r['aiq'])} [{time.perf_counter() - t0:.0f}s]"
                )
    if loo:
        res["loo"] = loo_accuracy_error(data.anchors, emb, sizes, seeds, selects)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--data", default="../shared/data", help="folder holding the dataset folders")
    p.add_argument("--datasets", default="routerbench-zs,zeroeval")
    p.add_argument("--sizes", default="25,50,100", help="anchors each held-out model keeps")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--selects", default="random,informative", help="random, informative or strategy names")
    p.add_argument("--no-loo", action="store_true", help="skip the every-model-new accuracy error table")
    p.add_argument("--loo-only", action="store_true", help="only the every-model-new table (no replay)")
    p.add_argument("--embedder", default="minilm")
    p.add_argument("--vectors", help="load and save embedding vectors here (.npz), e.g. out/vectors.npz")
    p.add_argument("--json", default="out/anchor_selection.json")
    p.add_argument("--out", help="also write the markdown here")
    p.add_argument("--render", help="print the tables of a saved --json file instead of running")
    args = p.parse_args(argv)
    if args.render:
        return emit(tables(json.loads(Path(args.render).read_text())), args.out)
    emb = VectorCache(embedder_named(args.embedder), Path(args.vectors) if args.vectors else None)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    selects = [s for s in args.selects.split(",") if s]
    results: dict[str, Any] = {}
    for ds in [d for d in args.datasets.split(",") if d]:
        results[ds] = run_dataset(
            Path(args.data) / ds, emb, sizes, args.seeds, selects, loo=not args.no_loo, replays=not args.loo_only
        )
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    emb.save()
    log(f"done; figures in {args.json}")
    return emit(tables(results), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
