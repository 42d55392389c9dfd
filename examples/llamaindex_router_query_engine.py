"""A LlamaIndex RouterQueryEngine whose selector is SCOPE: one index, served by three LLMs.

Runs offline: the three LLMs are replays of real recorded outcomes (RouterBench zero-shot, in
../shared/data/routerbench-zs), the index uses LlamaIndex's MockEmbedding, and outcomes are graded from the
record. Each held-out question goes to the tool whose model has the best expected utility
(``p_correct * value_per_correct - cost``); a ScopeEventHandler settles the budget with the real token usage
and records each graded outcome back into the anchor store.

    python examples/llamaindex_router_query_engine.py --queries 20
    python examples/llamaindex_router_query_engine.py --embedder hashing --max-anchors 500   # quicker
"""

from __future__ import annotations

import logging

from _data import MODELS, anchor_store, embedder, load, parser, report, shown
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.tools import QueryEngineTool, ToolMetadata

from scope_llamaindex import ReplayLLM, ScopeEventHandler, ScopeSelection, ScopeSelector, replay_grader
from scope_shared import Budget, ScopeEngine


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--queries", type=int, default=20, help="held-out questions to route")
    cli.add_argument("--value", type=float, default=0.01, help="USD a correct answer is worth")
    cli.add_argument("--budget", type=float, default=1.0, help="USD budget for the whole run")
    args = cli.parse_args()
    logging.basicConfig(level=logging.WARNING)

    # LlamaIndex's defaults need the network: set both explicitly.
    Settings.embed_model = MockEmbedding(embed_dim=16)

    data = load(args, MODELS)
    test, questions = data.test, data.questions(args.queries)
    store = anchor_store(data.anchors, embedder(args.embedder))
    engine = ScopeEngine(
        store=store,
        models=data.models(MODELS),
        value_per_correct=args.value,
        budget=Budget(limit=args.budget),
        reserve_factor=1.25,  # hold 25% headroom: real answers run a little longer than expected
    )

    llms = ReplayLLM.from_outcomes(test)
    Settings.llm = llms["mistralai/mistral-7b-chat"]
    index = VectorStoreIndex.from_documents(
        [Document(text="Answer the question as asked: science questions, coding tasks and pronoun puzzles.")]
    )
    tools = [
        QueryEngineTool(
            query_engine=index.as_query_engine(llm=llms[name]),
            metadata=ToolMetadata(name=name, description=f"the index, answered by {name}"),
        )
        for name in MODELS
    ]
    router = RouterQueryEngine(selector=ScopeSelector(engine=engine), query_engine_tools=tools)

    correct, share = 0.0, {m: 0 for m in MODELS}
    with ScopeEventHandler(engine=engine, grader=replay_grader(test)) as handler:
        for q in questions:
            response = router.query(q)
            sel = response.metadata["selector_result"].selections[0]
            assert isinstance(sel, ScopeSelection)
            share[sel.model] += 1
            correct += next(o.correct for o in test if o.query == q and o.model == sel.model)
            print(f"{sel.model:<28} ${sel.cost:.6f}  {shown(q, more='...')!r}")
            print(f"    {sel.reason}")
    assert engine.ledger is not None
    engine.flush()  # outcomes are written behind (within 0.5 s): write the last ones before counting
    summary = {
        "queries": len(questions),
        "accuracy": correct / len(questions),
        "spent": engine.ledger.spent,
        "budget": args.budget,
        "held": engine.ledger.held,
        "share": share,
        "recorded": handler.recorded,
        "anchors": store.count(),
    }
    report(summary)


if __name__ == "__main__":
    main()
