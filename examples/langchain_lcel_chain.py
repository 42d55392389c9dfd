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

import logging
from collections import Counter

from _data import MODELS, anchor_store, embedder, load, parser, report, shown
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from scope_langchain import ReplayChatModel, ScopeRouter
from scope_shared import ScopeEngine


def main(argv: list[str] | None = None) -> dict[str, object]:
    cli = parser(__doc__)
    cli.add_argument("--questions", type=int, default=10, help="held-out questions to ask")
    cli.add_argument("--value", type=float, default=0.01, help="USD a correct answer is worth")
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    data = load(args, MODELS)
    questions = data.questions(args.questions)
    store = anchor_store(data.anchors, embedder(args.embedder))
    engine = ScopeEngine(store=store, models=data.models(MODELS), value_per_correct=args.value)

    # The chat models: replays here; any LangChain chat model in production.
    chat_models = ReplayChatModel.from_outcomes(data.test, models=MODELS)
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
    report(summary)
    return summary


if __name__ == "__main__":
    main()
