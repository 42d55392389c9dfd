"""What a cascade asks for and what it did: the step a plan asks the caller to make, the record of each call
made, and the result (whose answer to return, how sure it is, why it stopped), with the summaries adapters attach
to their responses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scope_shared.cascade.checkers import Signal
from scope_shared.cascade.planner import Node
from scope_shared.cascade.state import QueryModel
from scope_shared.types import Decision

__all__ = ["SUMMARY_CHARS", "CascadeResult", "CascadeStep", "StepRecord", "final_answer", "summary_of"]

#: Characters of a response kept in a step's summary.
SUMMARY_CHARS = 200


@dataclass(frozen=True)
class CascadeStep:
    """A call the plan asks for: ``model``, with its expected cost reserved in ``decision``.

    Attributes:
        index: 0 for the first call.
        model: the model to call.
        decision: the engine's decision for it (its reservation is settled by :meth:`CascadePlan.observe`).
        reason: why this call, in expected-utility terms.
        p_best: P(the best answer so far is correct) before the call (0 before any answer).
        expected_cost: the call's expected USD cost.
        excluded: models left out of this choice, and why (the budget, the per-call cap, a failed call).
        decide_s: seconds the plan took to choose this step.
    """

    index: int
    model: str
    decision: Decision
    reason: str
    p_best: float
    expected_cost: float
    excluded: Mapping[str, str] = field(default_factory=dict)
    decide_s: float = 0.0


@dataclass(frozen=True)
class StepRecord:
    """A call that was made, and what its answer did."""

    index: int
    model: str
    reason: str
    answer: str | None
    summary: str
    usable: bool
    signals: tuple[Signal, ...]
    p_prehoc: float
    p_answer: float  # P(this model's answer is correct) right after it answered (0 when it is not usable)
    p_best: float  # P(the best answer so far is correct) right after it answered
    cost: float
    cost_estimated: bool
    input_tokens: float | None = None
    output_tokens: float | None = None
    error: str = ""

    def summary_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "model": self.model,
            "reason": self.reason,
            "answer": self.answer,
            "summary": self.summary,
            "usable": self.usable,
            "evidence": [s.summary() for s in self.signals],
            "p_prehoc": self.p_prehoc,
            "p_answer": self.p_answer,
            "p_best": self.p_best,
            "cost": self.cost,
            "cost_estimated": self.cost_estimated,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "error": self.error or None,
        }


@dataclass(frozen=True)
class CascadeResult:
    """How a cascade ended: whose answer to return, how sure it is, why it stopped, and every step.

    Attributes:
        model: the model whose response to return (None when no call succeeded).
        text: that response (empty when none).
        answer: its extracted answer (None when no answer could be read).
        p_correct: the posterior P(that answer is correct).
        stop_reason: why the cascade stopped.
        steps: every call made, in order.
        cost: USD spent on them (real where token counts were given, expected otherwise).
    """

    model: str | None
    text: str
    answer: str | None
    p_correct: float
    stop_reason: str
    steps: tuple[StepRecord, ...]
    cost: float

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary, as attached to adapter responses."""
        return {
            "cascade": True,
            "model": self.model,
            "answer": self.answer,
            "p_correct": self.p_correct,
            "stop_reason": self.stop_reason,
            "cost": self.cost,
            "calls": len(self.steps),
            "steps": [s.summary_dict() for s in self.steps],
        }


def final_answer(qm: QueryModel, node: Node) -> tuple[str | None, int | None, float]:
    """The answer to return at ``node``: (model whose response it is, its distinct answer, P(correct)).

    The most probable distinct answer, given by the member with the highest P(correct | parsed); with no
    usable answer, the last model called (P 0); before any call, None.
    """
    cluster, p = node.posterior.best()
    if cluster is None:
        return (node.called[-1] if node.called else None), None, 0.0
    members = [m for m, code, _ in node.key if code == cluster]
    return max(members, key=lambda m: (qm.p_parsed.get(m, 0.0), m)), cluster, qm.confidence(p)


def summary_of(text: str) -> str:
    """``text`` on one line, cut to :data:`SUMMARY_CHARS` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= SUMMARY_CHARS else flat[: SUMMARY_CHARS - 3] + "..."
