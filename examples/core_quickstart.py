"""The core without any framework: build an anchor store, route under a budget, record what happened.

Uses the real recorded outcomes in ../shared/data/routerbench-zs: the anchors teach the router how each
model does on which kind of question; held-out questions are then routed under a small budget, and each
"call" settles its real cost (from the recorded tokens) and records its outcome back into the store.

    python examples/core_quickstart.py
    python examples/core_quickstart.py --embedder hashing --max-anchors 300   # quicker
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scope_shared import (
    AnchorStore,
    Budget,
    BudgetExceededError,
    HashingEmbedder,
    ScopeEngine,
    load_outcomes,
    load_prices,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routerbench-zs"


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--budget", type=float, default=0.02, help="USD for all the questions together")
    parser.add_argument("--value", type=float, default=0.01, help="USD a correct answer is worth")
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument("--max-anchors", type=int, default=None)
    args = parser.parse_args(argv)

    anchors = load_outcomes(args.data / "anchors.csv.gz")
    if args.max_anchors:
        keep = set(list(dict.fromkeys(o.query for o in anchors))[: args.max_anchors])
        anchors = [o for o in anchors if o.query in keep]
    store = AnchorStore(embedder=HashingEmbedder() if args.embedder == "hashing" else None)
    store.add(anchors)

    engine = ScopeEngine(
        store=store,
        models=load_prices(args.data / "prices.csv"),
        value_per_correct=args.value,
        budget=Budget(limit=args.budget),
        on_no_fit="raise",
    )
    recorded = {}  # what each model "answered" on the held-out questions (replayed from the data)
    for o in load_outcomes(args.data / "test.csv.gz"):
        recorded[(o.query, o.model)] = o
    questions = list(dict.fromkeys(q for q, _ in recorded))[: args.questions]

    right = spent = 0.0
    routed = refused = 0
    for q in questions:
        try:
            decision = engine.route(q)
        except BudgetExceededError as exc:
            refused += 1
            print(f"refused: {exc}"[:120])
            continue
        outcome = recorded[(q, decision.model)]  # in production: call decision.model, grade its answer
        engine.record(outcome, decision=decision)  # settles the real cost, teaches the store
        routed += 1
        right += outcome.correct
        est = decision.estimate
        real = engine.cost_of(
            decision.model, input_tokens=outcome.input_tokens or 0, output_tokens=outcome.output_tokens or 0
        )
        print(
            f"{decision.model[:28]:28} p={est.p_correct:.2f} est ${est.cost:.5f} real ${real:.5f} "
            f"correct={outcome.correct:.0f}"
        )
    engine.close()  # outcomes are written behind (within 0.5 s): write the last ones now
    assert engine.ledger is not None
    spent = engine.ledger.spent
    print(f"\nrouted {routed}, refused {refused} (budget ${args.budget}), accuracy {right / max(routed, 1):.3f}, "
          f"spent ${spent:.5f}, anchors now {store.count()}")
    return {"routed": routed, "refused": refused, "spent": spent, "limit": args.budget, "anchors": store.count()}


if __name__ == "__main__":
    main()
