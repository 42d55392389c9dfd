"""Bring your own model: an anchor store from the packaged suite, your model profiled on some of its anchors
through any OpenAI-compatible endpoint, then routing among it and other models.

    python examples/profile_new_model.py --base-url http://127.0.0.1:8000/v1 --model my-model --price 0.15,0.60

``--candidates`` names models already in the store (the suite's reference models) to route among with yours,
priced from ``--prices`` (default: ../shared/data/zeroeval/prices.csv). See docs/profiling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from scope_shared import HashingEmbedder, ModelCard, ScopeEngine, load_prices
from scope_shared.profile import OpenAIChatCall, profile
from scope_shared.suites import load_suite, store_from_suite

PRICES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "zeroeval" / "prices.csv"
QUESTIONS = [
    "A baker sells 14 loaves a day at $3 each. How much does she take in over a week?",
    "What is the output of print(sorted([3, 1, 2])[::-1])?",
]


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True, help="the OpenAI-compatible endpoint serving your model")
    parser.add_argument("--model", required=True, help="your model's name (as served, and as recorded)")
    parser.add_argument("--price", required=True, help="USD per 1M input and output tokens, e.g. 0.15,0.60")
    parser.add_argument("--api-key-env", help="the env var holding the endpoint's API key")
    parser.add_argument("--n", type=int, default=50, help="anchors to profile on")
    parser.add_argument("--max-cost", type=float, default=1.0, help="USD cap on profiling")
    parser.add_argument("--store", help="store directory (default: a temporary one)")
    parser.add_argument("--prices", type=Path, default=PRICES, help="prices of the --candidates")
    parser.add_argument("--candidates", default="gpt-4o-2024-08-06,Meta-Llama-3.1-8B-Instruct")
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    args = parser.parse_args(argv)

    # 1. A store from the suite: its questions, their precomputed vectors, the reference models' outcomes.
    suite = load_suite("default")
    inner = None
    if args.embedder == "hashing":  # a quick run: recompute the suite's vectors with the hashing embedder
        inner = HashingEmbedder()
        suite = suite.with_vectors(inner)
    store = store_from_suite(suite, path=args.store or tempfile.mkdtemp(prefix="anchors-"), inner=inner)

    # 2. Profile your model: each anchor's prompt sent as is, the answer graded and recorded in the store.
    input_price, output_price = (float(p) for p in args.price.split(","))
    card = ModelCard(name=args.model, input_per_mtok=input_price, output_per_mtok=output_price)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    call = OpenAIChatCall(base_url=args.base_url, model=args.model, api_key=api_key)
    report = profile(store, model=card, call=call, n=args.n, max_cost=args.max_cost)
    print("\n".join(report.lines()))

    # 3. Route among your model and the candidates already in the store.
    wanted = [m.strip() for m in args.candidates.split(",") if m.strip()]
    cards = [card, *(c for c in load_prices(args.prices) if c.name in wanted)]
    engine = ScopeEngine(store=store, models=cards)
    engine.wait_ready()
    routed = {}
    for question in QUESTIONS:
        decision = engine.route(question, options={"reserve": False})
        routed[question] = decision.model
        mine = decision.estimates[card.name]
        print(f"{decision.model:28} <- {question[:60]}  ({card.name}: p={mine.p_correct:.2f}, ${mine.cost:.6f})")
    summary = {"recorded": len(report.recorded), "spent": report.spent, "routed": routed, "models": len(cards)}
    print("SUMMARY " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
