"""SCOPE estimator throughput against a real vLLM server serving the tiny CPU model.

Starts ``python -m vllm.entrypoints.openai.api_server`` on a free 127.0.0.1 port (the environment from
``scripts/vllm_env.sh``), builds real prompts from ``../shared/data/routerbench-zs`` anchors, and for each
concurrency level sends a batch of distinct (query, model) prompts through
:meth:`ScopeLLMEstimator.aestimate` with the cache off. Prints requests/s (one request = one prompt with
``n`` samples), samples/s and generated tokens/s.

The answers are forced short with ``structured_outputs`` (~25 tokens a sample), so this measures the
estimator, HTTP and prefill path on 2 CPU cores, not the ~1k-token chain of thought of the real model on
a GPU.

    .venv/bin/python -m benchmarks.bench_vllm [--requests 32] [--levels 1 8 32] [--samples 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scope_shared import AnchorStore, HashingEmbedder, ScopeEngine, load_outcomes, load_prices  # noqa: E402
from scope_shared.estimators import ScopeLLMEstimator  # noqa: E402
from scope_shared.estimators.base import QueryContext  # noqa: E402
from tests.integration.vllm_server import SERVED_NAME, VLLMServer  # noqa: E402

MODELS = ["gpt-4-1106-preview", "mistralai/mistral-7b-chat", "claude-instant-v1", "gpt-3.5-turbo-1106"]
REGEX = r"Analysis: [a-z ]{4,24}\nPredicted Performance: \{len: (50|300|900), correct: (yes|no)\}"


def build_contexts(data: Path, n_queries: int) -> list[QueryContext]:
    anchors = load_outcomes(data / "anchors.csv.gz")
    keep = set(sorted({o.query_id for o in anchors if o.query_id})[:200])
    store = AnchorStore(embedder=HashingEmbedder())
    store.add([o for o in anchors if o.query_id in keep], progress=False)
    queries = sorted({o.query for o in load_outcomes(data / "test.csv.gz")})[:n_queries]
    cards = [c for c in load_prices(data / "prices.csv") if c.name in MODELS]
    ctxs, _ = ScopeEngine(store=store, models=cards).contexts(queries)
    return ctxs


async def run_level(
    server: VLLMServer, ctxs: list[QueryContext], concurrency: int, samples: int
) -> tuple[float, int, int, int]:
    est = ScopeLLMEstimator(
        base_url=server.base_url,
        model=SERVED_NAME,
        samples=samples,
        max_tokens=64,
        structured_outputs={"regex": REGEX},
        cache_size=0,
        max_concurrency=concurrency,
    )
    started = time.perf_counter()
    rows = await est._apredict(ctxs, MODELS)
    wall = time.perf_counter() - started
    n = sum(len(r) for r in rows)
    return wall, n, est.counters.samples, est.counters.generated_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description="SCOPE estimator requests/s against a tiny vLLM server")
    parser.add_argument("--python", default=os.environ.get("SCOPE_VLLM_PYTHON", str(ROOT / ".venv-vllm/bin/python")))
    parser.add_argument("--model", default=os.environ.get("SCOPE_TINY_MODEL", str(ROOT / ".tiny-model")))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "routerbench-zs")
    parser.add_argument("--requests", type=int, default=32, help="prompts per level (rounded to whole queries)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()

    per_level = max(1, args.requests // len(MODELS))
    ctxs = build_contexts(args.data, per_level * (len(args.levels) + 1))
    with tempfile.TemporaryDirectory() as tmp, VLLMServer(args.python, args.model, Path(tmp) / "server.log") as srv:
        print(f"vLLM server up at {srv.base_url} ({args.model}); {len(MODELS)} models x {per_level} queries a level")
        asyncio.run(run_level(srv, ctxs[:per_level], 4, args.samples))  # warm-up
        print(f"{'concurrency':>11} {'requests':>8} {'wall s':>7} {'requests/s':>10} {'samples/s':>9} {'gen tok/s':>9}")
        for i, level in enumerate(args.levels, start=1):
            batch = ctxs[i * per_level : (i + 1) * per_level]
            wall, n, samples, tokens = asyncio.run(run_level(srv, batch, level, args.samples))
            print(f"{level:>11} {n:>8} {wall:>7.2f} {n / wall:>10.2f} {samples / wall:>9.1f} {tokens / wall:>9.1f}")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average {load} on {os.cpu_count()} CPUs (the server and this client share them)")


if __name__ == "__main__":
    main()
