"""One query as a cascade sees it: its candidates' curves and costs, and how an answer moves its state.

:class:`QueryModel` is built from the engine's pre-hoc estimates for the query and the calibration; it is pure
(no engine, no I/O), so a live :class:`~scope_shared.cascade.plan.CascadePlan` and the replay evaluation share
it: both decide with a :class:`~scope_shared.cascade.planner.Planner` over its curves and move from state to
state with :meth:`QueryModel.observe`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scope_shared.cascade.checkers import Checker, ModelAnswer, Signal, signals_of
from scope_shared.cascade.parameters import CascadeCalibration
from scope_shared.cascade.planner import Node, Planner
from scope_shared.cascade.posterior import AnswerPosterior, Quadrature, correct_curves
from scope_shared.errors import ConfigError
from scope_shared.suites.graders import Grader
from scope_shared.types import Estimate

__all__ = ["Observation", "QueryModel", "answer_cluster", "neighbours_of", "shortlist"]

FloatArray = npt.NDArray[np.float64]


def neighbours_of(estimates: Mapping[str, Estimate]) -> list[tuple[str, float]]:
    """The anchors behind a query's estimates, (anchor id, similarity), each once, most similar first."""
    seen: dict[str, float] = {}
    for est in estimates.values():
        for ev in est.evidence:
            seen[ev.anchor_id] = max(seen.get(ev.anchor_id, -1.0), ev.similarity)
    return sorted(seen.items(), key=lambda kv: -kv[1])


def answer_cluster(grader: Grader, answer: str, answers: Sequence[str | None]) -> int | None:
    """The index of the first of ``answers`` that ``answer`` agrees with (None: a new answer)."""
    for k, other in enumerate(answers):
        if other is not None and grader.agree(answer, other):
            return k
    return None


def shortlist(p: Mapping[str, float], cost: Mapping[str, float], size: int) -> list[str]:
    """At most ``size`` candidates: those no cheaper model beats (cheapest first), then the most accurate rest."""
    order = sorted(p, key=lambda m: (cost[m], -p[m], m))
    front: list[str] = []
    top = -1.0
    for m in order:
        if p[m] > top:
            front.append(m)
            top = p[m]
    if len(front) > size:  # keep the cheapest and the most accurate ends of the frontier
        front = front[: size - 1] + [front[-1]]
    rest = sorted((m for m in p if m not in front), key=lambda m: (-p[m], cost[m], m))
    return sorted(front + rest[: max(size - len(front), 0)], key=lambda m: (cost[m], m))


@dataclass(frozen=True)
class Observation:
    """What one answer did to the state: the checkers' signals and where it went."""

    answer: ModelAnswer
    signals: tuple[Signal, ...]
    usable: bool
    shift: float
    cluster: int | None  # the distinct answer it agrees with (None: new, or not usable)
    node: Node


class QueryModel:
    """The cascade's view of one query (see the module docstring).

    Args:
        calibration: the fitted posterior parameters.
        grader: compares answers (its ``kind`` selects the calibration).
        estimates: the engine's pre-hoc estimates for the query, by model.
        candidates: the models the cascade may call (default: a shortlist of ``max_candidates``).
        max_candidates: the shortlist's size when ``candidates`` is not given.
        quad: the difficulty grid.
    """

    def __init__(
        self,
        *,
        calibration: CascadeCalibration,
        grader: Grader,
        estimates: Mapping[str, Estimate],
        candidates: Sequence[str] | None = None,
        max_candidates: int = 6,
        quad: Quadrature | None = None,
    ) -> None:
        if not estimates:
            msg = "no estimates: a cascade starts from the engine's estimates of the query"
            raise ConfigError(msg)
        self.calibration = calibration
        self.grader = grader
        self.kind = grader.kind
        neighbours = neighbours_of(estimates)
        #: the calibration group the query falls in (its kind, or a task of it, from the anchors behind it)
        self.group = calibration.group_for(self.kind, neighbours)
        self.quad = quad or Quadrature.of(10 if calibration.factors == 1 else 7, factors=calibration.factors)
        p_all = {m: e.p_correct for m, e in estimates.items()}
        cost_all = {m: e.cost for m, e in estimates.items()}
        if candidates is None:
            names = shortlist(p_all, cost_all, max_candidates)
        else:
            unknown = [m for m in candidates if m not in estimates]
            if unknown:
                msg = f"candidates without an estimate: {unknown}; estimated: {sorted(estimates)}"
                raise ConfigError(msg)
            names = list(dict.fromkeys(candidates))
        self.models: tuple[str, ...] = tuple(names)
        self.p = {m: float(p_all[m]) for m in names}
        self.costs = {m: float(cost_all[m]) for m in names}
        self.p_parsed = {m: calibration.parsed_p(self.group, m, self.p[m]) for m in names}
        self.unparsed = {m: calibration.unparsed(self.group, m) for m in names}
        self.loadings: dict[str, tuple[float, ...]] = {m: calibration.loading(self.group, m) for m in names}
        self.collision = calibration.collision_for(self.group, neighbours)
        curves = correct_curves(
            [self.p_parsed[m] for m in names], np.array([self.loadings[m] for m in names]), self.quad
        )
        self.curves: dict[str, FloatArray] = {m: curves[i] for i, m in enumerate(names)}

    def root(self) -> Node:
        """The state before any call."""
        return Node(posterior=AnswerPosterior(collision=self.collision, quad=self.quad))

    def confidence(self, p: float) -> float:
        """The calibrated P(correct) of an answer whose posterior probability is ``p`` (0 stays 0)."""
        return self.calibration.confidence(self.group, p) if p > 0.0 else 0.0

    def planner(self, values: FloatArray, *, depth: int, max_calls: int) -> Planner:
        return Planner(
            curves=self.curves,
            unparsed=self.unparsed,
            costs=self.costs,
            values=values,
            depth=depth,
            max_calls=max_calls,
            confidence=self.confidence,
        )

    def observe(self, node: Node, answer: ModelAnswer, checkers: Sequence[Checker]) -> Observation:
        """The state after ``answer`` (of a model not called before at ``node``)."""
        if answer.model in node.called:
            msg = f"{answer.model!r} was already called for this query"
            raise ConfigError(msg)
        if answer.model not in self.curves:
            msg = f"{answer.model!r} is not a candidate of this cascade; candidates: {list(self.models)}"
            raise ConfigError(msg)
        signals, usable, shift = signals_of(checkers, answer, kind=self.kind)
        if not usable or answer.answer is None:
            return Observation(answer, signals, False, 0.0, None, node.after(answer.model, -1, node.posterior))
        post = node.posterior
        q = self.curves[answer.model]
        if shift:
            m = answer.model
            q = correct_curves([self.p_parsed[m]], np.array([self.loadings[m]]), self.quad, shift=[shift])[0]
        cluster = answer_cluster(self.grader, answer.answer, post.answers)
        new = post.add(q, cluster, answer=answer.answer, p=self.p_parsed[answer.model])
        code = post.distinct if cluster is None else cluster
        return Observation(answer, signals, True, shift, cluster, node.after(answer.model, code, new, shift))
