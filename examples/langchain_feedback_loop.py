"""The callback handler learning from feedback: each answer's real outcome goes back into the anchor store.

Runs offline over replays of real recorded outcomes (../shared/data/routerbench-zs). A
``ScopeOutcomeHandler`` rides on the chain's callbacks: when a call ends it settles the budget with the real
token usage and keeps the call waiting for feedback; ``handler.record_feedback(message, correct)`` (a user's
thumbs up/down, here the recorded grade) writes the outcome through ``engine.record``. Asked again, the
router estimates each question from its own recorded outcome, so the estimate moves toward the truth.

    python examples/langchain_feedback_loop.py --questions 12
    python examples/langchain_feedback_loop.py --embedder hashing --max-anchors 300   # quicker
"""

from __future__ import annotations

import logging

from _data import MODELS, anchor_store, embedder, load, parser, report, shown
from langchain_core.prompts import ChatPromptTemplate

from scope_langchain import ReplayChatModel, ScopeOutcomeHandler, ScopeRouter
from scope_shared import Budget, ScopeEngine


def main(argv: list[str] | None = None) -> dict[str, object]:
    cli = parser(__doc__)
    cli.add_argument("--questions", type=int, default=12, help="held-out questions to ask")
    cli.add_argument("--value", type=float, default=0.01, help="USD a correct answer is worth")
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    data = load(args, MODELS)
    questions = data.questions(args.questions)
    store = anchor_store(data.anchors, embedder(args.embedder))
    anchors_before = store.count()
    engine = ScopeEngine(
        store=store, models=data.models(MODELS), value_per_correct=args.value, budget=Budget(limit=1.0)
    )
    handler = ScopeOutcomeHandler(engine=engine)  # no grader: correctness arrives later, as feedback
    router = ScopeRouter(engine=engine, models=ReplayChatModel.from_outcomes(data.test, models=MODELS))
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | router.with_config(callbacks=[handler])

    error_before = error_after = 0.0
    for question in questions:
        message = chain.invoke({"question": question})
        scope = message.response_metadata["scope"]
        model = scope["model"]
        p_before = scope["candidates"][model]["p_correct"]
        truth = message.response_metadata["replay"]["correct"]  # in production: the user's feedback
        handler.record_feedback(message, truth)
        engine.flush()  # outcomes are written behind (within 0.5 s); write this one now for the next decision
        p_after = router.route(question).decision.estimates[model].p_correct
        error_before += abs(p_before - truth)
        error_after += abs(p_after - truth)
        head = shown(question, 50)
        print(f"{head:<50} {model:<28} correct={truth:g}  p_correct {p_before:.2f} -> {p_after:.2f}")

    assert engine.ledger is not None
    summary: dict[str, object] = {
        "questions": len(questions),
        "recorded": handler.recorded,
        "pending": handler.pending,
        "anchors_before": anchors_before,
        "anchors_after": store.count(),
        "mean_abs_error_before": error_before / len(questions),
        "mean_abs_error_after": error_after / len(questions),
        "spent": engine.ledger.settled_total,
        "held": engine.ledger.held,
    }
    report(summary)
    return summary


if __name__ == "__main__":
    main()
