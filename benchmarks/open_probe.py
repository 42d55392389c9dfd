"""Open a persistent anchor store in a fresh process, route a few queries, report times and peak RSS.

Run by :mod:`benchmarks.scale` as ``python -m benchmarks.open_probe SPEC.json``; prints one JSON line.
The spec names the store path and collection, the embedder, the estimator, the candidate models and the
queries. Nothing is imported before the clock starts except the standard library. ``import_s`` is Python
start-up (scope_shared and chromadb, ~1 s of which is chromadb); ``open_s`` opens the store (client,
collection, anchor count) and builds the engine.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def peak_rss_kib() -> int:
    """This process's peak resident set (KiB): VmHWM where /proc has it.

    ``ru_maxrss`` is not used on Linux: a child started by fork or vfork and exec inherits its parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(spec_path: str) -> dict[str, float | int | str]:
    spec = json.loads(open(spec_path, encoding="utf-8").read())  # noqa: SIM115
    t0 = time.perf_counter()
    import chromadb  # noqa: F401  (the store imports it lazily; counted here as start-up, not as opening)

    from benchmarks.scale import make_engine
    from scope_shared import AnchorStore, ModelCard
    from scope_shared.embeddings import embedder_named

    t_import = time.perf_counter()
    store = AnchorStore(path=spec["path"], collection=spec["collection"], embedder=embedder_named(spec["embedder"]))
    cards = [ModelCard(**c) for c in spec["models"]]
    engine = make_engine(store, cards, spec["estimator"], k=spec["k"], value=spec["value"])
    anchors = store.count()
    t_open = time.perf_counter()
    rss_open = peak_rss_kib()
    store.embed(["load the embedding model"])
    t_embedder = time.perf_counter()
    rss_embedder = peak_rss_kib()
    queries = spec["queries"]
    engine.route(queries[0])
    t_first = time.perf_counter()
    times = []
    for q in queries[1:]:
        s = time.perf_counter()
        engine.route(q)
        times.append(time.perf_counter() - s)
    times.sort()
    rss_kib = peak_rss_kib()
    return {
        "anchors": anchors,
        "estimator": engine.estimator.name,
        "import_s": t_import - t0,
        "open_s": t_open - t_import,
        "embedder_load_s": t_embedder - t_open,
        "first_route_s": t_first - t_embedder,
        "open_to_first_decision_s": t_first - t_import,
        "routes": len(queries),
        "route_p50_ms": 1e3 * times[len(times) // 2] if times else float("nan"),
        "peak_rss_mb": rss_kib / 1024,
        "peak_rss_after_open_mb": rss_open / 1024,
        "peak_rss_after_embedder_load_mb": rss_embedder / 1024,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
