"""Which suite questions a new model is profiled on: one pluggable step.

A selector is a function ``(ids, embeddings, outcomes, n, seed) -> ids``: the suite's question ids, their
vectors (one row per id, or None when the suite has none), the reference models' outcomes (one row per id, one
column per reference model, NaN where a model has none) and how many to choose. Built in:

- ``"random"``: a seeded permutation's first ``n`` (a larger ``n`` with the same seed extends a smaller one,
  so a re-run with more anchors calls only the new ones);
- ``"all"``: every question;
- ``"informative"``: ``scope_shared.suites.selection.select_anchors`` (anchors chosen to tell models apart).

A callable with the selector's signature is used as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from scope_shared.errors import ConfigError
from scope_shared.suites import AnchorSuite
from scope_shared.suites.selection import select_anchors

__all__ = ["SELECTIONS", "Selector", "choose_anchors", "outcome_matrix"]

Selector = Callable[
    [Sequence[str], "npt.NDArray[np.float32] | None", "npt.NDArray[np.float64]", int, int], Sequence[str]
]

SELECTIONS = ("random", "informative", "all")


def _random(ids: Sequence[str], embeddings: Any, outcomes: Any, n: int, seed: int) -> list[str]:
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order[:n]]


def _all(ids: Sequence[str], embeddings: Any, outcomes: Any, n: int, seed: int) -> list[str]:
    return list(ids)


def _informative(ids: Sequence[str], embeddings: Any, outcomes: Any, n: int, seed: int) -> list[str]:
    if embeddings is None:
        msg = "select='informative' needs the suite's vectors (suite.with_vectors()); use select='random' without them"
        raise ConfigError(msg)
    return select_anchors(ids, embeddings, outcomes, n=n, seed=seed)


def outcome_matrix(suite: AnchorSuite) -> npt.NDArray[np.float64]:
    """The reference models' recorded correctness: one row per question, one column per :attr:`suite.models`."""
    models = suite.models
    col = {m: j for j, m in enumerate(models)}
    matrix = np.full((len(suite), len(models)), np.nan)
    for i, q in enumerate(suite):
        for m, rec in q.outcomes.items():
            matrix[i, col[m]] = rec.correct
    return matrix


def choose_anchors(suite: AnchorSuite, *, n: int | None, select: str | Selector, seed: int) -> list[str]:
    """The ids of the questions to profile on, in the order they are called.

    Args:
        suite: the suite.
        n: how many (None or at least the suite's size: all of them).
        select: ``"random"``, ``"informative"``, ``"all"`` or a selector function.
        seed: passed to the selector.

    Raises:
        ConfigError: an unknown selection, or a selector that returned ids not in the suite, repeats, or more
            than ``n``.
    """
    ids = suite.ids
    count = len(ids) if n is None else min(n, len(ids))
    if callable(select):
        selector: Selector = select
    elif select == "random":
        selector = _random
    elif select == "all":
        return ids
    elif select == "informative":
        selector = _informative
    else:
        msg = f"unknown selection {select!r}; choose one of {list(SELECTIONS)} or pass a selector function"
        raise ConfigError(msg)
    chosen = list(selector(ids, suite.vectors, outcome_matrix(suite), count, seed))
    known = set(ids)
    bad = [i for i in chosen if i not in known]
    if bad or len(set(chosen)) != len(chosen) or len(chosen) > count:
        name = getattr(selector, "__name__", repr(selector))
        msg = (
            f"selector {name} returned {len(chosen)} id(s) ({len(set(chosen))} distinct, {len(bad)} not in suite "
            f"{suite.name!r}, e.g. {bad[:3]}); it must return at most {count} distinct suite ids"
        )
        raise ConfigError(msg)
    return chosen
