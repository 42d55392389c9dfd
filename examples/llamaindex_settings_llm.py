"""ScopeLLM as LlamaIndex's ``Settings.llm``: every call the app makes is routed by SCOPE under a budget.

Runs offline: the wrapped LLMs are replays of real recorded outcomes (RouterBench zero-shot, in
../shared/data/routerbench-zs); grades come from the record. Shows ``complete``, ``chat``, streaming and
async calls, the decision attached to each response, the budget settled with real token usage, and a
ScopeEventHandler recording graded outcomes into a separate store (so the routing store stays as loaded).

    python examples/llamaindex_settings_llm.py --queries 20
    python examples/llamaindex_settings_llm.py --embedder hashing --max-anchors 500   # quicker
"""

from __future__ import annotations

import asyncio
import logging

from _data import anchor_store, embedder, load, parser, report
from llama_index.core import Settings
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.embeddings import MockEmbedding

from scope_llamaindex import ReplayLLM, ScopeEventHandler, ScopeLLM, replay_grader
from scope_shared import AnchorStore, Budget, ScopeEngine


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--queries", type=int, default=20, help="held-out questions to send")
    cli.add_argument("--value", type=float, default=0.01, help="USD a correct answer is worth")
    cli.add_argument("--budget", type=float, default=0.01, help="USD budget for the whole run")
    args = cli.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data = load(args)
    cards, test, questions = data.cards, data.test, data.questions(args.queries)
    emb = embedder(args.embedder)
    store = anchor_store(data.anchors, emb)
    engine = ScopeEngine(
        store=store, models=cards, value_per_correct=args.value, budget=Budget(limit=args.budget), reserve_factor=1.25
    )
    # Graded outcomes go to a second store, so every question is routed on the same anchors.
    feedback = ScopeEngine(store=AnchorStore(embedder=emb), models=cards)

    # LlamaIndex's defaults need the network: set both explicitly.
    Settings.embed_model = MockEmbedding(embed_dim=16)
    Settings.llm = ScopeLLM(engine=engine, llms=ReplayLLM.from_outcomes(test))

    graded: list[float] = []

    recorded = replay_grader(test)

    def grader(question: str, answer: str) -> float | None:
        grade = recorded(question, answer)
        if grade is not None:
            graded.append(grade)
        return grade

    async def ask_async(q: str) -> tuple[str, float]:
        scope = (await Settings.llm.acomplete(q)).additional_kwargs["scope"]
        return scope["model"], scope["cost"]

    with ScopeEventHandler(engine=feedback, grader=grader) as handler:
        for i, q in enumerate(questions):
            if i % 4 == 0:
                response = Settings.llm.complete(q)
                model, cost = response.additional_kwargs["scope"]["model"], response.additional_kwargs["scope"]["cost"]
                form = "complete"
            elif i % 4 == 1:
                chat = Settings.llm.chat([ChatMessage(role="user", content=q)])
                model, cost = chat.additional_kwargs["scope"]["model"], chat.additional_kwargs["scope"]["cost"]
                form = "chat"
            elif i % 4 == 2:
                *_, last = Settings.llm.stream_complete(q)
                model, cost = last.additional_kwargs["scope"]["model"], last.additional_kwargs["scope"]["cost"]
                form = "stream"
            else:
                model, cost = asyncio.run(ask_async(q))
                form = "async"
            print(f"{form:<8} -> {model:<34} ${cost:.6f}")
    feedback.flush()  # outcomes are written behind (within 0.5 s): write the last ones before counting
    assert engine.ledger is not None
    summary = {
        "queries": len(questions),
        "accuracy": sum(graded) / max(len(graded), 1),
        "spent": engine.ledger.spent,
        "budget": args.budget,
        "held": engine.ledger.held,
        "recorded": handler.recorded,
        "routing_anchors": store.count(),
        "feedback_anchors": feedback.store.count(),
    }
    report(summary)


if __name__ == "__main__":
    main()
