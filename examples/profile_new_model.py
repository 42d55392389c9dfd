"""Bring your own model: an anchor store from the packaged suite, your model profiled on some of its anchors
through any OpenAI-compatible endpoint, then routing among it and other models.

    python examples/profile_new_model.py --base-url http://127.0.0.1:8000/v1 --model my-model --price 0.15,0.60

``--candidates`` names models already in the store (the suite's reference models) to route among with yours,
priced from ``--prices`` (default: ../shared/data/zeroeval/prices.csv). See docs/profiling.md. New questions are
embedded with MiniLM (loaded for the routing step).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from scope_shared import ModelCard, ScopeEngine, load_prices
from scope_shared.profile import OpenAIChatCall, profile
from scope_shared.suites import store_from_suite

PRICES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "zeroeval" / "prices.csv"
QUESTION = "A baker sells 14 loaves a day at $3 each. How much does she take in over a week?"


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
    args = parser.parse_args(argv)
    store_dir, base_url, name = args.store or tempfile.mkdtemp(prefix="anchors-"), args.base_url, args.model
    input_price, output_price = (float(p) for p in args.price.split(","))
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    n, max_cost = args.n, args.max_cost
    candidates = [m.strip() for m in args.candidates.split(",") if m.strip()]

    # A store from the suite, your model profiled on n of its anchors (graded answers recorded in the store):
    store = store_from_suite("default", path=store_dir)  # precomputed vectors: nothing is embedded
    card = ModelCard(name=name, input_per_mtok=input_price, output_per_mtok=output_price)
    call = OpenAIChatCall(base_url=base_url, model=name, api_key=api_key)
    report = profile(store, model=card, call=call, n=n, max_cost=max_cost)
    print("\n".join(report.lines()))

    # Routing among your model and models already in the store:
    others = [c for c in load_prices(args.prices) if c.name in candidates]
    engine = ScopeEngine(store=store, models=[card, *others])
    engine.wait_ready()  # the learned estimator's first fit, now that the store holds your model
    decision = engine.route(QUESTION)

    mine = decision.estimates[name]
    print(f"{QUESTION}\n-> {decision.model}; {name}: p_correct={mine.p_correct:.2f}, cost ${mine.cost:.6f}")
    summary = {
        "recorded": len(report.recorded),
        "spent": report.spent,
        "routed": decision.model,
        "models": 1 + len(others),
    }
    print("SUMMARY " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
