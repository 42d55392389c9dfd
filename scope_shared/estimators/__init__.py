"""Estimators: predict p_correct and output tokens per (query, model), behind one small protocol."""

from scope_shared.estimators.anchors import AnchorStatsEstimator, Prior
from scope_shared.estimators.base import (
    AnchorOutcome,
    AnchorRecord,
    AnchorSource,
    Estimator,
    ModelStats,
    Prediction,
    QueryContext,
)
from scope_shared.estimators.hybrid import HybridEstimator
from scope_shared.estimators.learned import FitReport, LearnedEstimator
from scope_shared.estimators.scope import (
    SCOPE_COT,
    SCOPE_NOCOT,
    HTTPBackend,
    InProcessBackend,
    PromptTemplate,
    SamplingConfig,
    ScopeBackend,
    ScopeLLMEstimator,
)

__all__ = [
    "AnchorOutcome",
    "AnchorRecord",
    "AnchorSource",
    "AnchorStatsEstimator",
    "Estimator",
    "FitReport",
    "HTTPBackend",
    "HybridEstimator",
    "InProcessBackend",
    "LearnedEstimator",
    "ModelStats",
    "Prediction",
    "Prior",
    "PromptTemplate",
    "QueryContext",
    "SCOPE_COT",
    "SCOPE_NOCOT",
    "SamplingConfig",
    "ScopeBackend",
    "ScopeLLMEstimator",
]
