"""The next step of a cascade by expected utility, looking a few calls ahead; for many values at once.

At a state (the answers so far, as an :class:`~.posterior.AnswerPosterior`), stopping is worth
``value_per_correct x P(best answer correct)``. Calling model ``m`` is worth ``-cost_m`` plus the expectation,
over every answer ``m`` may give (unparseable, agreeing with one of the answers so far, or new; their
probabilities come from the posterior), of the best that can be done afterwards: stop, or call another model.
The lookahead is ``depth`` calls deep and considers the next calls in ascending expected cost (a cascade goes
from cheap to dear), at most ``max_calls`` calls in all. The step taken is the best now; after its answer the
plan is made again from the new state, so the lookahead only has to see far enough to value a check: a second
cheap model is worth calling for what agreement would tell, before paying for a stronger one.

A :class:`Planner` serves one query. It keeps every state it has computed (posteriors do not depend on the
value of a correct answer), so a replay sweeping many values, or a plan re-planning after each answer, computes
each state once; values are a numpy vector, so a whole sweep decides in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scope_shared.cascade.posterior import AnswerPosterior
from scope_shared.errors import ConfigError

__all__ = ["ACCURACY_ONLY", "Node", "Planner", "StepValues", "value_array"]

FloatArray = npt.NDArray[np.float64]

#: USD per correct answer standing for "accuracy only" (``value_per_correct=None``): costs then only break ties.
ACCURACY_ONLY = 1e6


def value_array(values: Iterable[float | None]) -> FloatArray:
    """Values of a correct answer as a float vector, None and infinity read as :data:`ACCURACY_ONLY`."""
    return np.array([ACCURACY_ONLY if v is None or math.isinf(v) else float(v) for v in values], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Node:
    """A state of a cascade: who was called (in order) and the posterior over their answers.

    ``key`` identifies the state: the models called and which distinct answer each gave (-1: unparseable),
    plus any post-hoc log-odds shift, so a real state and the hypothetical one the lookahead expected share
    their computations.
    """

    posterior: AnswerPosterior
    called: tuple[str, ...] = ()
    key: tuple[tuple[str, int, float], ...] = ()

    def after(self, model: str, code: int, posterior: AnswerPosterior, shift: float = 0.0) -> Node:
        return Node(posterior=posterior, called=(*self.called, model), key=(*self.key, (model, code, round(shift, 6))))


@dataclass(frozen=True)
class StepValues:
    """The planner's verdict at one state, for each value of a correct answer.

    Attributes:
        stop: expected utility of stopping now (-inf where no answer has been given yet).
        proceed: model -> expected utility of calling it now and continuing as well as possible.
        choice: index into ``models`` of the best step per value, -1 for stopping.
        models: the candidates that were considered, in the order of ``choice``.
    """

    stop: FloatArray
    proceed: Mapping[str, FloatArray]
    choice: npt.NDArray[np.int64]
    models: tuple[str, ...]


class Planner:
    """Expected-utility lookahead for one query.

    Args:
        curves: model -> its correctness curve on the difficulty grid (:func:`~.posterior.correct_curves`).
        unparsed: model -> P(its answer cannot be read).
        costs: model -> expected USD cost of calling it on this query.
        values: USD per correct answer, one entry per setting decided at once.
        depth: calls the lookahead looks ahead.
        max_calls: calls a cascade makes at most.
        confidence: maps the posterior's P(best answer correct) to a calibrated one (default: as it is).
    """

    def __init__(
        self,
        *,
        curves: Mapping[str, FloatArray],
        unparsed: Mapping[str, float],
        costs: Mapping[str, float],
        values: FloatArray,
        depth: int = 3,
        max_calls: int = 3,
        confidence: Callable[[float], float] | None = None,
    ) -> None:
        if depth < 1:
            msg = f"depth must be >= 1, got {depth}"
            raise ConfigError(msg)
        if max_calls < 1:
            msg = f"max_calls must be >= 1, got {max_calls}"
            raise ConfigError(msg)
        missing = [m for m in curves if m not in costs or m not in unparsed]
        if missing:
            msg = f"models without a cost or an unparsed rate: {missing}"
            raise ConfigError(msg)
        self.curves = dict(curves)
        self.unparsed = dict(unparsed)
        self.costs = {m: float(costs[m]) for m in curves}
        self.values = np.asarray(values, dtype=np.float64)
        self.depth = depth
        self.max_calls = max_calls
        self.confidence = confidence or _same
        self._branches: dict[tuple[object, ...], list[tuple[float, Node]]] = {}
        self._worth: dict[tuple[object, ...], FloatArray] = {}
        self._allowed: frozenset[str] = frozenset(curves)

    def _set_allowed(self, allowed: frozenset[str]) -> None:
        if allowed != self._allowed:
            self._allowed = allowed
            self._worth.clear()  # values depend on which models may still be called; posteriors do not

    def candidates(self, node: Node) -> list[str]:
        """Models that may be called next: allowed, not called yet, not cheaper than the last one called."""
        floor = self.costs[node.called[-1]] if node.called and node.called[-1] in self.costs else -math.inf
        return sorted(
            (m for m in self._allowed if m not in node.called and self.costs[m] >= floor),
            key=lambda m: (self.costs[m], m),
        )

    def branches(self, node: Node, model: str) -> list[tuple[float, Node]]:
        """Each answer ``model`` may give at ``node``, with its probability and the state after it."""
        key = (node.key, model)
        found = self._branches.get(key)
        if found is not None:
            return found
        none_p = self.unparsed[model]
        out: list[tuple[float, Node]] = [(none_p, node.after(model, -1, node.posterior))]
        for prob, cluster, post in node.posterior.branches(self.curves[model]):
            code = node.posterior.distinct if cluster is None else cluster
            out.append(((1.0 - none_p) * prob, node.after(model, code, post)))
        self._branches[key] = out
        return out

    def _stop(self, node: Node) -> FloatArray:
        if not node.called:
            return np.full(len(self.values), -np.inf)
        _, p = node.posterior.best()
        out: FloatArray = self.values * self._sure(p)
        return out

    def worth(self, node: Node, depth: int) -> FloatArray:
        """The expected utility of the best policy from ``node`` looking ``depth`` calls ahead."""
        key = (node.key, depth)
        found = self._worth.get(key)
        if found is not None:
            return found
        best = self._stop(node)
        if depth > 0 and len(node.called) < self.max_calls:
            for m in self.candidates(node):
                best = np.maximum(best, self._proceed(node, m, depth))
        self._worth[key] = best
        return best

    def _proceed(self, node: Node, model: str, depth: int) -> FloatArray:
        if depth == 1 or len(node.called) + 1 >= self.max_calls:  # the answer ends the lookahead: stop after it
            none_p = self.unparsed[model]
            _, now = node.posterior.best()
            expected = none_p * self._sure(now)
            for prob, best in node.posterior.leaf_best(self.curves[model]):
                expected += (1.0 - none_p) * prob * self._sure(best)
            out: FloatArray = self.values * expected - self.costs[model]
            return out
        total = np.full(len(self.values), -self.costs[model])
        for prob, child in self.branches(node, model):
            if prob > 0.0:
                total = total + prob * self.worth(child, depth - 1)
        return total

    def _sure(self, p: float) -> float:
        return self.confidence(p) if p > 0.0 else 0.0

    def decide(self, node: Node, *, allowed: Iterable[str] | None = None) -> StepValues:
        """The best step at ``node`` for each value: stop, or which model to call next."""
        self._set_allowed(frozenset(self.curves if allowed is None else allowed) & frozenset(self.curves))
        stop = self._stop(node)
        models: tuple[str, ...] = ()
        proceed: dict[str, FloatArray] = {}
        if len(node.called) < self.max_calls:
            models = tuple(self.candidates(node))
            proceed = {m: self._proceed(node, m, self.depth) for m in models}
        if not models:
            return StepValues(stop=stop, proceed={}, choice=np.full(len(self.values), -1, dtype=np.int64), models=())
        table = np.vstack([stop, *(proceed[m] for m in models)])
        choice = np.argmax(table, axis=0) - 1  # ties go to stopping, then to the cheaper model (the first maximum)
        return StepValues(stop=stop, proceed=proceed, choice=choice.astype(np.int64), models=models)


def _same(p: float) -> float:
    return p
