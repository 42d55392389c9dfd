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

import logging
from collections import Counter

from _data import MODELS, anchor_store, embedder, load, parser, report

from scope_langchain import ReplayChatModel, ScopeRouter
from scope_shared import Budget, BudgetExceededError, ScopeEngine


def main(argv: list[str] | None = None) -> dict[str, object]:
    cli = parser(__doc__)
    cli.add_argument("--questions", type=int, default=40, help="held-out questions in the batch")
    cli.add_argument("--budget", type=float, default=0.03, help="USD for the whole batch")
    cli.add_argument("--concurrency", type=int, default=8, help="calls in flight at once")
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    data = load(args, MODELS)
    questions = data.questions(args.questions)
    engine = ScopeEngine(
        store=anchor_store(data.anchors, embedder(args.embedder)),
        models=data.models(MODELS),
        value_per_correct=None,  # accuracy first; the budget is what holds spending back
        budget=Budget(limit=args.budget),
        reserve_factor=1.25,  # hold 25% headroom: real answers run a little longer than expected
    )
    router = ScopeRouter(engine=engine, models=ReplayChatModel.from_outcomes(data.test, models=MODELS))

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
    report(summary)
    return summary


if __name__ == "__main__":
    main()
