"""Which of the answers seen so far is correct: a Dawid-Skene posterior with one latent difficulty per query.

The generative model behind :class:`AnswerPosterior`, for one query:

- the query has a latent difficulty ``d``: one or two independent standard normal factors (a second one lets
  some models share errors that others avoid), integrated out on a Gauss-Hermite grid (:class:`Quadrature`);
- model ``i`` answers correctly with probability ``q_i(d) = sigmoid(b_i + loading_i . d + shift_i)``, where
  ``loading_i`` (how strongly its errors go with the others') is fitted on the anchors, ``b_i`` is set so
  that the average of ``q_i`` over ``d`` is the model's pre-hoc P(correct | parsed answer) for this query
  (:func:`correct_curves`), and ``shift_i`` is the log-odds its own post-hoc signals add (e.g. log-probabilities);
- a wrong answer equals one given wrong answer with probability ``collision`` (fitted on the anchors, per query),
  else it is a value nobody gave yet; with ``J`` distinct wrong answers on the table each is hit with probability
  ``min(collision, 1 / J)``;
- an unparseable answer has the same likelihood under every hypothesis, so it carries no agreement weight.

The hypotheses are ``Z = k``: the k-th distinct answer is the correct one, or ``Z = 0``: none of them is. The
posterior is the joint table over ``Z`` and the difficulty grid, so agreement of two models raises the
probability of their answer, disagreement lowers both, and what the answers say about the query's difficulty
carries over to the models not called yet (:meth:`AnswerPosterior.branches`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scope_shared.errors import ConfigError

__all__ = ["P_CLIP", "AnswerPosterior", "Quadrature", "correct_curves"]

FloatArray = npt.NDArray[np.float64]

#: Pre-hoc probabilities are held inside [P_CLIP, 1 - P_CLIP]: a certainty would make evidence meaningless.
P_CLIP = 1e-3


@dataclass(frozen=True)
class Quadrature:
    """Gauss-Hermite nodes (nodes x factors) and weights (summing to 1) for independent standard normals."""

    nodes: FloatArray
    weights: FloatArray

    @property
    def factors(self) -> int:
        return int(self.nodes.shape[1])

    @classmethod
    def of(cls, points: int = 10, *, factors: int = 1) -> Quadrature:
        """A product grid of ``points`` nodes per factor."""
        if not 1 <= points <= 64:
            msg = f"quadrature points must be in 1..64, got {points}"
            raise ConfigError(msg)
        if factors not in (1, 2):
            msg = f"factors must be 1 or 2, got {factors}"
            raise ConfigError(msg)
        x, w = np.polynomial.hermite.hermgauss(points)
        x, w = np.sqrt(2.0) * x, w / math.sqrt(math.pi)
        if factors == 1:
            return cls(nodes=x[:, None], weights=w)
        grid = np.stack(np.meshgrid(x, x, indexing="ij"), axis=-1).reshape(-1, 2)
        return cls(nodes=grid, weights=np.outer(w, w).ravel())


#: Correctness curves are held inside [Q_CLIP, 1 - Q_CLIP], so no evidence is ever taken as certain.
Q_CLIP = 1e-9


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))
    return out


def correct_curves(
    p: Sequence[float] | FloatArray,
    loading: Sequence[float] | FloatArray,
    quad: Quadrature,
    shift: Sequence[float] | FloatArray | None = None,
) -> FloatArray:
    """``q_i(d)`` on the quadrature grid (models x nodes): P(correct) at each difficulty, averaging to ``p_i``.

    ``loading`` is one value per model (one factor) or one row of ``quad.factors`` values per model. ``b_i`` is
    solved by Newton's method so that ``sum_g w_g sigmoid(b_i + loading_i . d_g) = p_i`` exactly on the grid;
    ``shift`` (log-odds) is added afterwards, so a model's own signals move its whole curve.
    """
    pa = np.clip(np.asarray(p, dtype=np.float64), P_CLIP, 1.0 - P_CLIP)
    lam = np.asarray(loading, dtype=np.float64).reshape(len(pa), -1)
    if lam.shape[1] != quad.factors:
        msg = f"loadings have {lam.shape[1]} factors; the grid has {quad.factors}"
        raise ConfigError(msg)
    spread = lam @ quad.nodes.T
    scale = np.sqrt(1.0 + math.pi * (lam**2).sum(axis=1) / 8.0)
    b = np.log(pa / (1.0 - pa)) * scale  # the probit approximation, refined below
    for _ in range(8):
        s = _sigmoid(b[:, None] + spread)
        f = s @ quad.weights - pa
        grad = (s * (1.0 - s)) @ quad.weights
        b = b - f / np.maximum(grad, 1e-12)
    if shift is not None:
        b = b + np.asarray(shift, dtype=np.float64)
    out: FloatArray = np.clip(_sigmoid(b[:, None] + spread), Q_CLIP, 1.0 - Q_CLIP)
    return out


class AnswerPosterior:
    """The posterior over which distinct answer is correct, jointly with the query's latent difficulty.

    Immutable: :meth:`add` returns a new posterior. Row 0 of the table is "none of the answers is correct",
    row ``k`` the k-th distinct answer (in the order first given).

    Args:
        collision: P(a wrong answer equals one particular wrong answer already given), in (0, 1).
        quad: the difficulty grid.
    """

    __slots__ = ("_quad", "_table", "answers", "collision", "support")

    def __init__(self, *, collision: float, quad: Quadrature) -> None:
        if not 0.0 < collision < 1.0:
            msg = f"collision must be in (0, 1), got {collision}"
            raise ConfigError(msg)
        self.collision = float(collision)
        self._quad = quad
        self._table: FloatArray = quad.weights[None, :].copy()
        #: the representative extracted answer of each distinct answer (None for a hypothetical one)
        self.answers: tuple[str | None, ...] = ()
        #: the highest pre-hoc P(correct) among the models that gave each answer (breaks ties between answers)
        self.support: tuple[float, ...] = ()

    @property
    def distinct(self) -> int:
        """How many distinct parsed answers have been seen."""
        return len(self.answers)

    def _copy(self, table: FloatArray, answers: tuple[str | None, ...], support: tuple[float, ...]) -> AnswerPosterior:
        new = object.__new__(AnswerPosterior)
        new.collision = self.collision
        new._quad = self._quad
        new._table = table
        new.answers = answers
        new.support = support
        return new

    def probabilities(self) -> FloatArray:
        """P(the k-th distinct answer is correct), for each distinct answer (the rest: none is)."""
        rows: FloatArray = self._table.sum(axis=1)
        out: FloatArray = rows[1:] / rows.sum()
        return out

    def best(self) -> tuple[int | None, float]:
        """The most probable answer's index and probability; ``(None, 0.0)`` before any parsed answer."""
        if not self.answers:
            return None, 0.0
        probs = self.probabilities()
        top = float(probs.max())
        tied = [k for k in range(len(probs)) if probs[k] >= top - 1e-12]
        k = max(tied, key=lambda i: self.support[i])
        return k, float(probs[k])

    def _wrong_counts(self) -> FloatArray:
        """Distinct wrong answers under each hypothesis: all of them under Z=0, all but one otherwise."""
        k = len(self.answers)
        return np.array([k] + [k - 1] * k, dtype=np.float64)

    def _join_factors(self, q: FloatArray, cluster: int) -> FloatArray:
        wrong = self._wrong_counts()
        hit = np.minimum(self.collision, 1.0 / np.maximum(wrong, 1.0))
        factors: FloatArray = (1.0 - q)[None, :] * hit[:, None]
        factors[cluster + 1] = q
        return factors

    def _new_factors(self, q: FloatArray) -> FloatArray:
        fresh = np.maximum(1.0 - self._wrong_counts() * self.collision, 0.0)
        out: FloatArray = (1.0 - q)[None, :] * fresh[:, None]
        return out

    def add(self, q: FloatArray, cluster: int | None, *, answer: str | None = None, p: float = 0.0) -> AnswerPosterior:
        """The posterior after a model with correctness curve ``q`` gave a parsed answer.

        Args:
            q: the model's P(correct) on the difficulty grid (a row of :func:`correct_curves`).
            cluster: the index of the distinct answer it agrees with, or None for a new answer.
            answer: the extracted answer (kept as the representative of a new distinct answer).
            p: the model's pre-hoc P(correct), kept to break ties between answers.
        """
        table, _ = self._outcome(q, cluster)
        if cluster is None:
            return self._copy(table / table.sum(), (*self.answers, answer), (*self.support, p))
        support = tuple(max(s, p) if i == cluster else s for i, s in enumerate(self.support))
        return self._copy(table / table.sum(), self.answers, support)

    def _outcome(self, q: FloatArray, cluster: int | None) -> tuple[FloatArray, float]:
        if cluster is None:
            table = np.vstack([self._table * self._new_factors(q), (self._table[0] * q)[None, :]])
        else:
            if not 0 <= cluster < len(self.answers):
                msg = f"cluster {cluster} out of range: {len(self.answers)} distinct answers"
                raise ConfigError(msg)
            table = self._table * self._join_factors(q, cluster)
        return table, float(table.sum())

    def branches(self, q: FloatArray) -> list[tuple[float, int | None, AnswerPosterior]]:
        """Every answer a model with curve ``q`` may give, if it gives a parsed one: (probability, the distinct
        answer it agrees with or None for a new one, the posterior after it). Probabilities sum to 1."""
        out: list[tuple[float, int | None, AnswerPosterior]] = []
        for cluster in [*range(len(self.answers)), None]:
            table, mass = self._outcome(q, cluster)
            if mass <= 0.0:
                continue
            answers = (*self.answers, None) if cluster is None else self.answers
            support = (*self.support, 0.0) if cluster is None else self.support
            out.append((mass, cluster, self._copy(table / mass, answers, support)))
        total = sum(m for m, _, _ in out)
        return [(m / total, c, post) for m, c, post in out]

    def leaf_best(self, q: FloatArray) -> list[tuple[float, float]]:
        """For each parsed answer a model with curve ``q`` may give: (its probability, P(the best answer is
        correct) after it). What :meth:`branches` gives, without building the posteriors (the lookahead's
        last level needs no more)."""
        table = self._table
        a = table @ q  # per hypothesis: mass where the model is right
        b = table @ (1.0 - q)  # ... and where it is wrong
        wrong = self._wrong_counts()
        hit = b * np.minimum(self.collision, 1.0 / np.maximum(wrong, 1.0))
        out: list[tuple[float, float]] = []
        for k in range(len(self.answers)):
            rows = hit.copy()
            rows[k + 1] = a[k + 1]
            mass = float(rows.sum())
            if mass > 0.0:
                out.append((mass, float(rows[1:].max()) / mass))
        fresh = b * np.maximum(1.0 - wrong * self.collision, 0.0)
        mass = float(fresh.sum() + a[0])
        if mass > 0.0:
            top = max(float(fresh[1:].max()) if len(fresh) > 1 else 0.0, float(a[0]))
            out.append((mass, top / mass))
        total = sum(m for m, _ in out)
        return [(m / total, p) for m, p in out]

    def p_correct(self, q: FloatArray) -> float:
        """P(a model with curve ``q`` answers correctly), given what has been seen (its difficulty included)."""
        return float((self._table.sum(axis=0) @ q) / self._table.sum())
