"""Estimators (and the escalation stage) by name, for the engine's callers and the CLI."""

from __future__ import annotations

from typing import Any, NamedTuple

from scope_shared.errors import ConfigError
from scope_shared.escalation import Escalation
from scope_shared.estimators.anchors import AnchorStatsEstimator
from scope_shared.estimators.base import Estimator

__all__ = ["DEFAULT_ESTIMATOR", "ESTIMATORS", "Routing", "build_routing"]

#: Names accepted by :func:`build_estimator` and ``scope-router evaluate --estimator``.
ESTIMATORS = ("anchors", "learned", "scope", "hybrid", "gated")

#: What the engine and the CLI use when no estimator is named.
DEFAULT_ESTIMATOR = "learned"


class Routing(NamedTuple):
    """What the engine is built with: an estimator, and optionally an escalation stage."""

    estimator: Estimator
    escalation: Escalation | None = None


def build_routing(name: str, *, k: int = 10, **options: Any) -> Routing:
    """Build the estimator (and escalation) that ``name`` stands for.

    ``anchors`` and ``learned`` need nothing else (``learned`` fits on the store the engine binds);
    ``scope``, ``hybrid`` and ``gated`` need ``base_url`` (a vLLM OpenAI-compatible server) and accept
    the :class:`ScopeLLMEstimator` options (``model``, ``api_key``, ...). ``gated`` is anchor statistics
    with an :class:`Escalation` to SCOPE where the best candidates are close. ``k`` is the
    anchor-statistics side's neighbour count; the SCOPE prompt keeps its own.
    """
    if name == "anchors":
        return Routing(AnchorStatsEstimator(k=k))
    if name == "learned":
        from scope_shared.estimators.learned import LearnedEstimator

        return Routing(LearnedEstimator(k=k))
    if name in ("scope", "hybrid", "gated"):
        from scope_shared.estimators.scope import ScopeLLMEstimator

        if not options.get("base_url"):
            msg = f"estimator {name!r} needs a vLLM server: pass --vllm-url (base_url=...)"
            raise ConfigError(msg)
        scope = ScopeLLMEstimator(**options)  # SCOPE was trained on 5 anchors a prompt: keep its default
        if name == "scope":
            return Routing(scope)
        from scope_shared.estimators.hybrid import HybridEstimator

        anchors = AnchorStatsEstimator(k=k)
        if name == "hybrid":
            return Routing(HybridEstimator(anchors=anchors, scope=scope))
        return Routing(anchors, Escalation(scope))
    msg = f"unknown estimator {name!r}; known: {list(ESTIMATORS)}"
    raise ConfigError(msg)
