"""An LCEL chain, ``prompt | ScopeRouter | parser``, over three chat models.

Runs offline: the three chat models replay real recorded outcomes (RouterBench zero-shot, in
../shared/data/routerbench-zs) with their real token counts, so the router spends what those models spent.
Each held-out question goes to the model with the best expected utility ``p_correct * value - cost``; the
decision rides along in ``response_metadata["scope"]``. To go live, replace the replay models with real
chat models named after the same price-table entries (e.g. ``ChatOpenAI(model="gpt-4-1106-preview")``).

    python examples/langchain_lcel_chain.py --questions 10
    python examples/langchain_lcel_chain.py --embedder hashing --max-anchors 300   # quicker
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from scope_langchain import ReplayChatModel, ScopeRouter
from scope_shared import AnchorStore, HashingEmbedder, ScopeEngine, load_outcomes, load_prices

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routerbench-zs"
MODELS = ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "mistralai/mistral-7b-chat"]


def shown(question: str) -> str:
    """The question a few-shot prompt ends with (RouterBench prompts open with worked examples), shortened."""
    line = question.strip().split("\n\n")[-1].split("\n")[0]
    return line[:60]


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="a dataset folder (anchors, test, prices)")
    parser.add_argument("--questions", type=int, default=10, help="held-out questions to ask")
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
    engine = ScopeEngine(store=store, models=[prices[m] for m in MODELS], value_per_correct=args.value)

    # The chat models: replays here; any LangChain chat model in production.
    chat_models = ReplayChatModel.from_outcomes(test, models=MODELS)
    router = ScopeRouter(engine=engine, models=chat_models)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer the question; end with the final answer."), ("human", "{question}")]
    )
    chain = prompt | router  # the router returns the chosen model's AIMessage
    text_chain = chain | StrOutputParser()  # or plain text

    picks: Counter[str] = Counter()
    correct = cost = 0.0
    for question in questions:
        message = chain.invoke({"question": question})
        scope = message.response_metadata["scope"]
        chosen = scope["candidates"][scope["model"]]
        picks[scope["model"]] += 1
        correct += message.response_metadata["replay"]["correct"]
        cost += scope["actual_cost"]
        head = shown(question)
        print(
            f"{head:<60}  -> {scope['model']:<28} p={chosen['p_correct']:.2f} "
            f"expected ${chosen['cost']:.6f}  paid ${scope['actual_cost']:.6f}"
        )

    # Per call, the LangChain way: a high-stakes question may pay for accuracy.
    careful = text_chain.with_config(configurable={"value_per_correct": None})
    print("accuracy-only answer:", careful.invoke({"question": questions[0]}))

    summary: dict[str, object] = {
        "questions": len(questions),
        "picks": dict(picks),
        "accuracy": correct / len(questions),
        "mean_cost": cost / len(questions),
        "anchors": store.count(),
    }
    print("SUMMARY " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
