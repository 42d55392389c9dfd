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

import argparse
import json
import logging
from pathlib import Path

from langchain_core.prompts import ChatPromptTemplate

from scope_langchain import ReplayChatModel, ScopeOutcomeHandler, ScopeRouter
from scope_shared import AnchorStore, Budget, HashingEmbedder, ScopeEngine, load_outcomes, load_prices

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routerbench-zs"
MODELS = ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "mistralai/mistral-7b-chat"]


def shown(question: str) -> str:
    """The question a few-shot prompt ends with (RouterBench prompts open with worked examples), shortened."""
    line = question.strip().split("\n\n")[-1].split("\n")[0]
    return line[:60]


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="a dataset folder (anchors, test, prices)")
    parser.add_argument("--questions", type=int, default=12, help="held-out questions to ask")
    parser.add_argument("--value", type=float, default=0.01, help="USD a correct answer is worth")
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument("--max-anchors", type=int, default=None, help="load only this many anchor questions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    prices = {c.name: c for c in load_prices(args.data / "prices.csv")}
    anchors = [o for o in load_outcomes(args.data / "anchors.csv.gz") if o.model in MODELS]
    if args.max_anchors:
        keep = set(list(dict.fromkeys(o.query for o in anchors))[: args.max_anchors])
        anchors = [o for o in anchors if o.query in keep]
    test = [o for o in load_outcomes(args.data / "test.csv.gz") if o.model in MODELS]
    questions = list(dict.fromkeys(o.query for o in test))[: args.questions]

    store = AnchorStore(embedder=HashingEmbedder() if args.embedder == "hashing" else None)
    store.add(anchors, progress=False)
    anchors_before = store.count()
    engine = ScopeEngine(
        store=store, models=[prices[m] for m in MODELS], value_per_correct=args.value, budget=Budget(limit=1.0)
    )
    handler = ScopeOutcomeHandler(engine=engine)  # no grader: correctness arrives later, as feedback
    router = ScopeRouter(engine=engine, models=ReplayChatModel.from_outcomes(test, models=MODELS))
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | router.with_config(callbacks=[handler])

    error_before = error_after = 0.0
    for question in questions:
        message = chain.invoke({"question": question})
        scope = message.response_metadata["scope"]
        model = scope["model"]
        p_before = scope["candidates"][model]["p_correct"]
        truth = message.response_metadata["replay"]["correct"]  # in production: the user's feedback
        handler.record_feedback(message, truth)
        p_after = router.route(question).decision.estimates[model].p_correct
        error_before += abs(p_before - truth)
        error_after += abs(p_after - truth)
        head = shown(question)[:50]
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
    print("SUMMARY " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
