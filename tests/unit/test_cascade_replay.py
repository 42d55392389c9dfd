"""Replay on a tiny synthetic dataset: the vectorised replay does exactly what live plans do, step by step."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from scope_shared.cascade import Cascade, CascadeResult, CascadeStep
from scope_shared.cascade.replay import RecordedAnswers, ReplayItem, cascade_report, replay_cascade, with_answers
from scope_shared.types import NO_ANSWER, Outcome
from tests.unit.cascade_fixtures import CARDS, COST, calibration, decision, engine

VALUES = [0.0, 3e-5, 3e-4, 1e-3, 3e-3, 1e-2, 0.1, None]


def synthetic_items(n: int, seed: int) -> list[ReplayItem]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        gold = "ABCD"[int(rng.integers(4))]
        p = {"tiny": float(rng.uniform(0.4, 0.8)), "mid": float(rng.uniform(0.5, 0.85)), "strong": 0.93}
        texts, correct, costs = {}, {}, {}
        for c in CARDS:
            roll = rng.random()
            if roll < 0.05:
                texts[c.name] = "I cannot tell."
            elif roll < 0.05 + p[c.name]:
                texts[c.name] = f"The answer is ({gold})."
            else:
                texts[c.name] = f"The answer is ({'ABCD'[('ABCD'.index(gold) + 1 + int(rng.integers(2))) % 4]})."
            correct[c.name] = 1.0 if f"({gold})" in texts[c.name] else 0.0
            costs[c.name] = COST[c.name] * float(rng.uniform(0.5, 1.5))  # recorded, not expected, costs are paid
        est = decision(p, value=None).estimates
        items.append(
            ReplayItem(
                query=f"q{i}", query_id=f"q{i}", kind="choice", estimates=est, texts=texts, correct=correct, costs=costs
            )
        )
    return items


def live(item: ReplayItem, cascade: Cascade, value: float | None) -> tuple[float, float, int]:
    """One query driven through a real CascadePlan, answering with the item's recorded texts."""
    plan = cascade.plan(engine(), decision({m: e.p_correct for m, e in item.estimates.items()}, value=value))
    step: CascadeStep | CascadeResult = plan.first
    paid = 0.0
    calls = 0
    while isinstance(step, CascadeStep):
        paid += item.costs[step.model]
        calls += 1
        step = plan.observe(step.model, item.texts[step.model], input_tokens=100, output_tokens=100)
    assert step.model is not None
    return item.correct[step.model], paid, calls


def test_replay_matches_live_plans_exactly() -> None:
    items = synthetic_items(25, seed=0)
    cascade = Cascade(calibration=calibration(collision=0.4, loading=1.0), grader="choice")
    curve = replay_cascade(items, cascade, VALUES)
    for v, point in zip(VALUES, curve, strict=True):
        runs = [live(it, cascade, v) for it in items]
        assert point["accuracy"] == pytest.approx(np.mean([r[0] for r in runs]))
        assert point["cost"] == pytest.approx(np.mean([r[1] for r in runs]))
        assert point["calls"] == pytest.approx(np.mean([r[2] for r in runs]))
    assert curve[0]["calls"] == 1.0  # value 0: one call, the cheapest
    assert curve[0]["cost"] == pytest.approx(np.mean([it.costs["tiny"] for it in items]))
    # accuracy only: a call is made whenever its answer could change the answer returned
    assert curve[-1]["calls"] == max(pt["calls"] for pt in curve) > 2.5


def test_report_puts_the_routers_side_by_side() -> None:
    items = synthetic_items(40, seed=1)
    cascade = Cascade(calibration=calibration(collision=0.4, loading=1.0), grader="choice")
    report = cascade_report(items, cascade, values=VALUES)
    assert report["queries"] == 40 and report["pool"] == ["tiny", "mid", "strong"]
    for name in ("prehoc", "cascade"):
        r = report[name]
        assert r["lift_over_singles"] == pytest.approx(r["aiq"] - r["hull_aiq"])
    assert report["cascade"]["hull_aiq"] == pytest.approx(report["prehoc"]["hull_aiq"])
    singles = report["singles"]
    assert singles["strong"]["accuracy"] == pytest.approx(np.mean([it.correct["strong"] for it in items]))
    assert report["oracle"]["accuracy"] >= max(s["accuracy"] for s in singles.values())


def test_recorded_answers_load_and_attach(tmp_path: Path) -> None:
    responses = tmp_path / "responses.csv.gz"
    references = tmp_path / "references.csv.gz"
    with gzip.open(responses, "wt", encoding="utf-8") as fh:
        fh.write('query_id,model,response\nq1,tiny,"The answer is (B)."\nq1,mid,NA\nq2,tiny,"18"\n')
    with gzip.open(references, "wt", encoding="utf-8") as fh:
        fh.write("query_id,task,reference,grader\nq1,arc,B,choice\nq2,gsm,18,number\n")
    rec = RecordedAnswers.load(responses, references)
    rows = [
        Outcome(query="one", query_id="q1", model="tiny", correct=1.0),
        Outcome(query="one", query_id="q1", model="mid", correct=0.0),
        Outcome(query="two", query_id="q2", model="tiny", correct=1.0),
        Outcome(query="three", query_id="q3", model="tiny", correct=1.0),
    ]
    got = [o.answer for o in with_answers(rows, rec)]
    assert got == ["B", NO_ANSWER, "18", None]  # "NA" is text, and reads as no option letter
