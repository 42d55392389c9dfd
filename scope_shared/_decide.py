"""The decision step of :class:`~scope_shared.engine.ScopeEngine`: from a query's priced estimates to a decision
with its expected cost reserved, and the reservations' ends that need more than the ledger's own calls.

:func:`decide` is the one place a decision is made (``route`` and its batch and async forms, and ``redecide``):
the caller's forced model, or the policy's choice, retried while a concurrent caller takes the budget between
choosing and reserving. :func:`reserve_next` reserves another candidate of a decision (a top-n selection);
:func:`settle_expected` settles a reservation whose real usage is unknown. Private to the engine: adapters ask
the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from scope_shared.budget import BudgetLedger
from scope_shared.errors import BudgetExceededError, ConfigError
from scope_shared.policy import OnNoFit, choose
from scope_shared.types import Decision, Estimate, RouteOptions

logger = logging.getLogger(__name__)

#: Choose-and-reserve rounds before giving up under contention.
ATTEMPTS = 8


def decide(
    query: str,
    estimates: dict[str, Estimate],
    s: RouteOptions,
    reason: str,
    *,
    ledger: BudgetLedger | None,
    reserve_factor: float,
    on_no_fit: OnNoFit,
) -> Decision:
    """The decision for ``query`` among ``estimates`` under the resolved options ``s``.

    With a ``ledger``, the chosen model's expected cost x ``reserve_factor`` is reserved. ``reason`` (a
    degradation already known, e.g. the store was down) marks the decision degraded.
    """
    degraded_est = [f"{n}: {e.reason}" for n, e in estimates.items() if e.degraded]
    reason = join(reason, "; ".join(degraded_est))
    if s.force_model is not None:
        est = estimates[s.force_model]
        res = None
        if ledger is not None:
            res = ledger.try_reserve(est.cost * reserve_factor, model=s.force_model)
            if res is None:
                msg = (
                    f"forced model {s.force_model!r} (expected ${est.cost:.6g}) does not fit the "
                    f"remaining budget ${ledger.remaining:.6g}"
                )
                raise BudgetExceededError(msg)
        return Decision(
            model=s.force_model,
            query=query,
            estimates=estimates,
            utilities={},
            utility=float("nan"),
            value_per_correct=s.value_per_correct,
            degraded=bool(reason),
            reason=join("forced by the caller", reason),
            reservation_id=res.id if res else None,
            reserved_cost=res.amount if res else 0.0,
        )
    for _ in range(ATTEMPTS):  # a concurrent caller may take the budget between choosing and reserving
        remaining = ledger.remaining / reserve_factor if ledger is not None else None
        pick = choose(
            estimates,
            value_per_correct=s.value_per_correct,
            max_cost_per_call=s.max_cost_per_call,
            remaining_budget=remaining,
            on_no_fit=on_no_fit,
        )
        res = None
        if ledger is not None:
            amount = estimates[pick.model].cost * reserve_factor
            res = ledger.try_reserve(amount, model=pick.model, allow_over=not pick.fits)
            if res is None:
                continue
        degraded = bool(reason) or not pick.fits
        if not pick.fits:
            logger.warning("routing degraded: %s", pick.reason)
        return Decision(
            model=pick.model,
            query=query,
            estimates=estimates,
            utilities=pick.utilities,
            utility=pick.utilities.get(pick.model, float("nan")),
            value_per_correct=s.value_per_correct,
            excluded=pick.excluded,
            degraded=degraded,
            reason=join(pick.reason, reason),
            reservation_id=res.id if res else None,
            reserved_cost=res.amount if res else 0.0,
        )
    msg = f"could not reserve budget after {ATTEMPTS} attempts under contention"
    raise BudgetExceededError(msg)


def candidates_left(decision: Decision, exclude: Sequence[str]) -> dict[str, Estimate]:
    """``decision``'s estimates without the ``exclude``d models; :class:`ConfigError` when none is left."""
    left = {n: e for n, e in decision.estimates.items() if n not in set(exclude)}
    if not left:
        msg = f"every candidate is excluded ({sorted(exclude)}); nothing left to choose from"
        raise ConfigError(msg)
    return left


def keep_degraded(old: Decision, new: Decision) -> Decision:
    """``new``, still marked degraded when ``old`` was: a degraded estimation stays visible."""
    if old.degraded and not new.degraded:
        return new.model_copy(update={"degraded": True, "reason": join(new.reason, old.reason)})
    return new


def reserve_next(
    ledger: BudgetLedger | None, decision: Decision, model: str, *, reserve_factor: float, reason: str
) -> Decision | None:
    """``decision`` for ``model`` with its expected cost reserved; None when that does not fit the budget."""
    est = decision.estimates[model]
    res = None
    if ledger is not None:
        res = ledger.try_reserve(est.cost * reserve_factor, model=model)
        if res is None:
            return None
    return decision.switched(
        model, reason=reason, reservation_id=res.id if res else None, reserved=res.amount if res else 0.0
    )


def settle_expected(
    ledger: BudgetLedger, decision: Decision | str, model: str, *, reserve_factor: float, warned: set[str]
) -> None:
    """Settle a reservation whose real usage is unknown at its expected cost, and say so (once per model: the
    models said are added to ``warned``)."""
    expected: float | None
    if isinstance(decision, Decision):
        rid, expected = decision.reservation_id, decision.estimate.cost
    else:
        held = ledger.reservation(decision)
        rid, expected = decision, (held.amount / reserve_factor if held is not None else None)
    if rid is None or expected is None or not ledger.settle(rid, expected):
        return
    if model not in warned:
        warned.add(model)
        logger.warning(
            "outcome of %s recorded without token counts: its reservation is settled at the expected cost "
            "$%.6g (record input_tokens and output_tokens to count the real spend)",
            model,
            expected,
        )


def join(*parts: str) -> str:
    """The non-empty ``parts``, joined as one reason."""
    return "; ".join(p for p in parts if p)
