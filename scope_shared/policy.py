"""Utility: which candidate is worth its cost. Pure functions; the budget itself is :mod:`scope_shared.budget`.

The trade-off knob is ``value_per_correct``: **how many US dollars a correct answer is worth to you**.
Each candidate's utility is its expected value minus its expected cost::

    utility = p_correct * value_per_correct - cost

so the router pays for a more accurate model exactly when the gain in expected accuracy is worth more than
the extra cost. ``value_per_correct=None`` (or infinity) means accuracy only (ties broken by cost);
``0`` means cheapest. Summed over many calls, maximising this utility traces the best accuracy-for-cost
curve the estimates allow (it is the Lagrangian of "maximise accuracy subject to a spend").

Hard constraints come on top: ``max_cost_per_call`` excludes candidates whose expected cost exceeds it, and
a :class:`~scope_shared.budget.BudgetLedger` excludes candidates that do not fit the remaining budget.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt

from scope_shared.errors import BudgetExceededError, ConfigError
from scope_shared.types import Estimate

__all__ = ["Choice", "OnNoFit", "choose", "utility"]

logger = logging.getLogger(__name__)

OnNoFit = Literal["raise", "cheapest"]
F = TypeVar("F", float, npt.NDArray[np.float64])


def utility(p_correct: F, cost: F, value_per_correct: float | None) -> F:
    """Expected value of a call in USD (``p * value - cost``); accuracy alone when the value is None/inf.

    Works elementwise on numpy arrays too (replay evaluation scores every query and model at once).
    """
    if value_per_correct is None or math.isinf(value_per_correct):
        return p_correct
    out: F = p_correct * value_per_correct - cost
    return out


@dataclass(frozen=True, slots=True)
class Choice:
    """The policy's pick among candidates."""

    model: str
    utilities: dict[str, float]
    excluded: dict[str, str]
    fits: bool
    reason: str


def choose(
    estimates: Mapping[str, Estimate],
    *,
    value_per_correct: float | None,
    max_cost_per_call: float | None = None,
    remaining_budget: float | None = None,
    on_no_fit: OnNoFit = "raise",
) -> Choice:
    """Pick the candidate with the highest utility among those within the cost limits.

    Raises:
        BudgetExceededError: no candidate fits and ``on_no_fit="raise"``.
    """
    if not estimates:
        msg = "no candidate models to choose from"
        raise ConfigError(msg)
    excluded: dict[str, str] = {}
    for name, est in estimates.items():
        if max_cost_per_call is not None and est.cost > max_cost_per_call:
            excluded[name] = f"expected cost ${est.cost:.6g} > max_cost_per_call ${max_cost_per_call:.6g}"
        elif remaining_budget is not None and est.cost > remaining_budget:
            excluded[name] = f"expected cost ${est.cost:.6g} > remaining budget ${remaining_budget:.6g}"
    utilities = {
        name: utility(est.p_correct, est.cost, value_per_correct)
        for name, est in estimates.items()
        if name not in excluded
    }
    if utilities:
        best = max(utilities, key=lambda n: (utilities[n], -estimates[n].cost, n))
        return Choice(best, utilities, excluded, True, _explain(best, estimates, utilities))
    cheapest = min(estimates, key=lambda n: (estimates[n].cost, n))
    limits = "; ".join(f"{n}: {why}" for n, why in excluded.items())
    if on_no_fit == "raise":
        msg = f"no candidate fits the cost limits ({limits}); raise the budget or allow a cheaper model"
        raise BudgetExceededError(msg)
    reason = f"no candidate fits the cost limits; fell back to the cheapest, {cheapest!r} ({limits})"
    return Choice(cheapest, {}, excluded, False, reason)


def _explain(best: str, estimates: Mapping[str, Estimate], utilities: Mapping[str, float]) -> str:
    est = estimates[best]
    text = f"{best}: p_correct={est.p_correct:.2f}, ~{est.output_tokens:.0f} output tokens, ${est.cost:.6f}"
    others = sorted((n for n in utilities if n != best), key=lambda n: -utilities[n])
    if others:
        ru = estimates[others[0]]
        text += (
            f"; runner-up {others[0]}: p_correct={ru.p_correct:.2f}, ${ru.cost:.6f}"
            f" (utility {utilities[best]:.6g} vs {utilities[others[0]]:.6g})"
        )
    return text
