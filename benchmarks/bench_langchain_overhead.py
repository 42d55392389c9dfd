"""Routing overhead of ``ScopeRouter.invoke`` over a direct ``invoke`` of the model it chose.

For each held-out routerbench-zs question the router is invoked (retrieval, estimation, policy, dispatch,
metadata, budget settling) and then the chosen chat model is invoked directly with the same input; the
overhead is the paired difference. The chat models are replays (no network), so the numbers are the
router's own cost, not a provider's latency. Prints p50/p90/p99 and, for comparison, the per-question
routing cost of ``ScopeRouter.batch`` (one estimator call for the whole batch).

    python benchmarks/bench_langchain_overhead.py                      # hashing embedder, 200 calls
    python benchmarks/bench_langchain_overhead.py --embedder minilm    # the default sentence embedder
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from scope_langchain import ReplayChatModel, ScopeRouter
from scope_shared import AnchorStore, Budget, HashingEmbedder, ScopeEngine, load_outcomes, load_prices

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routerbench-zs"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(values: list[float]) -> dict[str, float]:
    return {f"p{int(q * 100)}": round(_pct(values, q) * 1e3, 3) for q in (0.5, 0.9, 0.99)}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--calls", type=int, default=200, help="measured invoke pairs")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--value", type=float, default=1e-3, help="USD per correct answer")
    parser.add_argument("--embedder", choices=["hashing", "minilm"], default="hashing")
    parser.add_argument("--max-anchors", type=int, default=None, help="load only this many anchor questions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    prices = load_prices(args.data / "prices.csv")
    anchors = load_outcomes(args.data / "anchors.csv.gz")
    if args.max_anchors:
        keep = set(list(dict.fromkeys(o.query for o in anchors))[: args.max_anchors])
        anchors = [o for o in anchors if o.query in keep]
    test = load_outcomes(args.data / "test.csv.gz")
    names = sorted({o.model for o in anchors} & {c.name for c in prices})
    store = AnchorStore(embedder=HashingEmbedder() if args.embedder == "hashing" else None)
    t0 = time.perf_counter()
    store.add(anchors, progress=False)
    load_s = time.perf_counter() - t0
    engine = ScopeEngine(
        store=store,
        models=[c for c in prices if c.name in names],
        value_per_correct=args.value,
        budget=Budget(limit=1e6),
    )
    models = ReplayChatModel.from_outcomes(test, models=names)
    router = ScopeRouter(engine=engine, models=models)
    questions = list(dict.fromkeys(o.query for o in test))
    total = args.warmup + args.calls
    asked = [questions[i % len(questions)] for i in range(total)]

    routed: list[float] = []
    direct: list[float] = []
    overhead: list[float] = []
    for i, question in enumerate(asked):
        t0 = time.perf_counter()
        message = router.invoke(question)
        t1 = time.perf_counter()
        models[message.response_metadata["scope"]["model"]].invoke(question)
        t2 = time.perf_counter()
        if i >= args.warmup:
            routed.append(t1 - t0)
            direct.append(t2 - t1)
            overhead.append((t1 - t0) - (t2 - t1))

    batch = asked[args.warmup :]
    t0 = time.perf_counter()
    router.batch(batch, {"max_concurrency": 1})
    batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for question in batch:
        models[router.route(question).model].invoke(question)
    route_each_s = time.perf_counter() - t0

    result: dict[str, object] = {
        "embedder": store.embedder.name,
        "anchors": store.count(),
        "models": len(names),
        "calls": len(overhead),
        "load_s": round(load_s, 1),
        "overhead_ms": _ms(overhead),
        "router_invoke_ms": _ms(routed),
        "direct_invoke_ms": _ms(direct),
        "overhead_mean_ms": round(statistics.fmean(overhead) * 1e3, 3),
        "batch_per_call_ms": round(batch_s / len(batch) * 1e3, 3),
        "route_then_invoke_per_call_ms": round(route_each_s / len(batch) * 1e3, 3),
    }
    print(
        f"ScopeRouter.invoke overhead over a direct invoke ({result['calls']} calls, {result['models']} models, "
        f"{result['anchors']} anchors, {result['embedder']}): "
        f"p50 {result['overhead_ms']['p50']} ms, p99 {result['overhead_ms']['p99']} ms"  # type: ignore[index]
    )
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
