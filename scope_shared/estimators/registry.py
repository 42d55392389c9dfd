"""Estimators by name, for the engine's callers and the CLI."""

from __future__ import annotations

from typing import Any

from scope_shared.errors import ConfigError
from scope_shared.estimators.anchors import AnchorStatsEstimator
from scope_shared.estimators.base import Estimator

__all__ = ["DEFAULT_ESTIMATOR", "ESTIMATORS", "build_estimator"]

#: Names accepted by :func:`build_estimator` and ``scope-router evaluate --estimator``.
ESTIMATORS = ("anchors", "learned", "scope", "hybrid", "gated")

#: What the engine and the CLI use when no estimator is named.
DEFAULT_ESTIMATOR = "learned"


def build_estimator(name: str, *, k: int = 10, **options: Any) -> Estimator:
    """Build an estimator by name.

    ``anchors`` and ``learned`` need nothing else (``learned`` fits on the store the engine binds);
    ``scope``, ``hybrid`` and ``gated`` need ``base_url`` (a vLLM OpenAI-compatible server) and accept
    the :class:`ScopeLLMEstimator` options (``model``, ``api_key``, ...). ``k`` is the anchor-statistics
    side's neighbour count; the SCOPE prompt keeps its own.
    """
    if name == "anchors":
        return AnchorStatsEstimator(k=k)
    if name == "learned":
        from scope_shared.estimators.learned import LearnedEstimator

        return LearnedEstimator(k=k)
    if name in ("scope", "hybrid", "gated"):
        from scope_shared.estimators.scope import ScopeLLMEstimator

        if not options.get("base_url"):
            msg = f"estimator {name!r} needs a vLLM server: pass --vllm-url (base_url=...)"
            raise ConfigError(msg)
        scope = ScopeLLMEstimator(**options)  # SCOPE was trained on 5 anchors a prompt: keep its default
        if name == "scope":
            return scope
        from scope_shared.estimators.hybrid import GatedEstimator, HybridEstimator

        anchors = AnchorStatsEstimator(k=k)
        if name == "hybrid":
            return HybridEstimator(anchors=anchors, scope=scope)
        return GatedEstimator(anchors=anchors, scope=scope)
    msg = f"unknown estimator {name!r}; known: {list(ESTIMATORS)}"
    raise ConfigError(msg)
