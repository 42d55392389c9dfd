"""``scope-router route``: decide which model should answer a query, and show why."""

from __future__ import annotations

import argparse
import json

from scope_shared.commands._common import echo, fmt_value, open_store, routing_kwargs

__all__ = ["cmd_route"]


def cmd_route(args: argparse.Namespace) -> int:
    from scope_shared.data import load_prices
    from scope_shared.engine import ScopeEngine

    store = open_store(args, must_exist=True)
    engine = ScopeEngine(
        store=store,
        models=load_prices(args.prices),
        **routing_kwargs(args),
        k=args.k,
        value_per_correct=args.value,
        max_cost_per_call=args.max_cost,
    )
    engine.wait_ready()  # a one-off decision: load the saved fit (or fit) rather than answer from the fallback
    decision = engine.route(args.query, options={"reserve": False})
    if args.json:
        echo(json.dumps(decision.model_dump(mode="json"), indent=2))
        return 0
    echo(f"chosen: {decision.model}   (value per correct: {fmt_value(decision.value_per_correct)})")
    echo(f"why:    {decision.reason}")
    echo("")
    echo(f"{'model':40} {'p_correct':>9} {'out_tok':>8} {'cost $':>11} {'utility':>11}  note")
    for name in decision.ranking():
        est = decision.estimates[name]
        u = decision.utilities.get(name)
        note = decision.excluded.get(name, "<- chosen" if name == decision.model else "")
        echo(
            f"{name[:40]:40} {est.p_correct:9.3f} {est.output_tokens:8.0f} {est.cost:11.6f} "
            f"{'' if u is None else f'{u:11.6g}':>11}  {note}"
        )
    ev = decision.estimate.evidence
    if ev:
        echo("")
        echo(f"anchors behind {decision.model}:")
        docs = store.get([e.anchor_id for e in ev])
        for e in ev:
            text = docs[e.anchor_id].question if e.anchor_id in docs else ""
            text = " ".join(text.split())[:90]
            echo(f"  sim={e.similarity:.3f} correct={e.correct:.0f} tokens={e.output_tokens}  {text}")
    return 0
