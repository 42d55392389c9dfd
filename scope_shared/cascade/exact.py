"""Exact replay of cascades over held-out queries: each model called answers with its real recorded response.

:func:`replay_items` gathers each test query's estimates, recorded responses, grades and costs;
:func:`replay_cascade` walks every query's cascade once for all values of a correct answer (the planner decides
for each value at once, and the walk splits where their choices differ).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scope_shared.cascade.checkers import ModelAnswer
from scope_shared.cascade.plan import Cascade
from scope_shared.cascade.planner import value_array
from scope_shared.cascade.recorded import RecordedAnswers
from scope_shared.cascade.steps import final_answer
from scope_shared.suites.graders import Grader, grader_named
from scope_shared.types import DEFAULT_TOKENS_PER_CHAR, Estimate, ModelCard, Outcome

__all__ = ["ReplayItem", "replay_cascade", "replay_items"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ReplayItem:
    """One held-out query with everything its replay needs."""

    query: str
    query_id: str
    kind: str
    estimates: Mapping[str, Estimate]
    texts: Mapping[str, str]
    correct: Mapping[str, float]
    costs: Mapping[str, float]


def replay_items(
    test: Sequence[Outcome],
    estimates: Mapping[str, Mapping[str, Estimate]],
    recorded: RecordedAnswers,
    cards: Mapping[str, ModelCard],
    pool: Sequence[str],
    *,
    tokens_per_char: float = DEFAULT_TOKENS_PER_CHAR,
) -> list[ReplayItem]:
    """The test queries with a reference, an estimate and a recorded response of every ``pool`` model.

    Each response is graded by the query's grader against its reference; costs are the recorded tokens x prices.
    """
    by_q: dict[str, dict[str, Outcome]] = defaultdict(dict)
    for o in test:
        by_q[o.query][o.model] = o
    items = []
    for q, per in by_q.items():
        if q not in estimates or not all(m in per for m in pool):
            continue
        qid = per[pool[0]].query_id
        ref = recorded.references.get(qid) if qid is not None else None
        if ref is None or qid is None or not all((qid, m) in recorded.responses for m in pool):
            continue
        grader = recorded.grader(ref.kind)
        texts = {m: recorded.responses[(qid, m)] for m in pool}
        costs = {}
        for m in pool:
            o = per[m]
            in_tok = o.input_tokens if o.input_tokens is not None else len(q) * tokens_per_char
            costs[m] = cards[m].cost(in_tok, o.output_tokens or 0)
        items.append(
            ReplayItem(
                query=q,
                query_id=qid,
                kind=ref.kind,
                estimates={m: estimates[q][m] for m in pool},
                texts=texts,
                correct={m: grader.grade(texts[m], ref.reference) for m in pool},
                costs=costs,
            )
        )
    return items


def _replay_one(
    cascade: Cascade, item: ReplayItem, values: FloatArray, graders: Mapping[str, Grader] | None
) -> tuple[FloatArray, FloatArray, FloatArray, list[dict[str, int]]]:
    grader = cascade.grader if cascade.grader.kind == item.kind else grader_named(item.kind, extra=graders)
    qm = cascade.query_model(item.estimates, grader=grader)
    planner = qm.planner(values, depth=cascade.depth, max_calls=cascade.max_calls)
    n = len(values)
    acc, cost, calls = np.zeros(n), np.zeros(n), np.zeros(n)
    answered: list[dict[str, int]] = [{} for _ in range(n)]
    extracted = {m: (grader.extract(t) if t.strip() else None) for m, t in item.texts.items()}

    def go(node: Any, idx: npt.NDArray[np.int64]) -> None:
        verdict = planner.decide(node)
        picks = verdict.choice[idx]
        for c in np.unique(picks):
            sub = idx[picks == c]
            if c < 0:
                model, _, _ = final_answer(qm, node)
                acc[sub] = item.correct[model] if model is not None else 0.0
                cost[sub] = sum(item.costs[m] for m in node.called)
                calls[sub] = len(node.called)
                if model is not None:
                    for i in sub:
                        answered[i][model] = 1
                continue
            m = verdict.models[int(c)]
            obs = qm.observe(node, ModelAnswer(model=m, text=item.texts[m], answer=extracted[m]), cascade.checkers)
            go(obs.node, sub)

    go(qm.root(), np.arange(n))
    return acc, cost, calls, answered


def replay_cascade(
    items: Sequence[ReplayItem],
    cascade: Cascade,
    values: Sequence[float | None],
    *,
    graders: Mapping[str, Grader] | None = None,
) -> list[dict[str, Any]]:
    """The cascade's replayed accuracy, mean cost and mean calls at each value of a correct answer.

    Each item is read by the grader of its kind (``cascade.grader`` for its own kind, else a built-in one or one
    of ``graders``).
    """
    vals = value_array(values)
    acc, cost, calls = np.zeros(len(vals)), np.zeros(len(vals)), np.zeros(len(vals))
    share: list[dict[str, float]] = [defaultdict(float) for _ in vals]
    for item in items:
        a, c, k, answered = _replay_one(cascade, item, vals, graders)
        acc += a
        cost += c
        calls += k
        for i, per in enumerate(answered):
            for m in per:
                share[i][m] += 1.0
    n = max(len(items), 1)
    return [
        {
            "value_per_correct": v,
            "accuracy": float(acc[i] / n),
            "cost": float(cost[i] / n),
            "calls": float(calls[i] / n),
            "answer_share": {m: s / n for m, s in sorted(share[i].items())},
        }
        for i, v in enumerate(values)
    ]
