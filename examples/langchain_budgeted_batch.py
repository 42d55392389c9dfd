"""A budgeted batch: ``ScopeRouter.batch`` routes every question in one estimator call, then runs the chosen
models concurrently while a budget ledger keeps the run under a hard USD limit.

Runs offline over replays of real recorded outcomes (../shared/data/routerbench-zs). Reservations are taken
in input order, so as the budget drains later questions go to cheaper models, and questions that no longer
fit fail alone with ``BudgetExceededError`` (``return_exceptions=True``) instead of overspending. Each call
settles its reservation with the model's real token usage.

    python examples/langchain_budgeted_batch.py --questions 40 --budget 0.03
    python examples/langchain_budgeted_batch.py --embedder hashing --max-anchors 300   # quicker
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

from scope_langchain import ReplayChatModel, ScopeRouter
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
MODELS = ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "mistralai/mistral-7b-chat"]


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="a dataset folder (anchors, test, prices)")
    parser.add_argument("--questions", type=int, default=40, help="held-out questions in the batch")
    parser.add_argument("--budget", type=float, default=0.03, help="USD for the whole batch")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight at once")
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument("--max-anchors", type=int, default=None, help="load only this many anchor questions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    prices = {c.name: c for c in load_prices(args.data / "prices.csv")}
    anchors = [o for o in load_outcomes(args.data / "anchors.csv.gz") if o.model in MODELS]
    if args.max_anchors:
        keep = set(list(dict.fromkeys(o.query for o in anchors))[: args.max_anchors])
        anchors = [o for o in anchors if o.query in keep]
    test = [o for o in load_outcomes(args.data / "test.csv.gz") if o.model in MODELS]
    questions = list(dict.fromkeys(o.query for o in test))[: args.questions]

    store = AnchorStore(embedder=HashingEmbedder() if args.embedder == "hashing" else None)
    store.add(anchors, progress=False)
    engine = ScopeEngine(
        store=store,
        models=[prices[m] for m in MODELS],
        value_per_correct=None,  # accuracy first; the budget is what holds spending back
        budget=Budget(limit=args.budget),
        reserve_factor=1.25,  # hold 25% headroom: real answers run a little longer than expected
    )
    router = ScopeRouter(engine=engine, models=ReplayChatModel.from_outcomes(test, models=MODELS))

    results = router.batch(questions, {"max_concurrency": args.concurrency}, return_exceptions=True)

    picks: Counter[str] = Counter()
    over_budget = 0
    for i, result in enumerate(results):
        if isinstance(result, BudgetExceededError):
            over_budget += 1
            continue
        if isinstance(result, Exception):
            raise result
        scope = result.response_metadata["scope"]
        picks[scope["model"]] += 1
        print(f"#{i:<3} {scope['model']:<28} paid ${scope['actual_cost']:.6f}")

    assert engine.ledger is not None
    spent, held = engine.ledger.settled_total, engine.ledger.held
    print(f"answered {sum(picks.values())}, over budget {over_budget}; spent ${spent:.6f} of ${args.budget}")
    summary: dict[str, object] = {
        "questions": len(questions),
        "answered": sum(picks.values()),
        "over_budget": over_budget,
        "picks": dict(picks),
        "spent": spent,
        "held": held,
        "budget": args.budget,
    }
    print("SUMMARY " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
