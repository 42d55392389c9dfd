"""Estimators: predict p_correct and output tokens per (query, model), behind one small protocol."""

from scope_shared.estimators.anchors import AnchorStatsEstimator, Prior
from scope_shared.estimators.base import (
    AnchorOutcome,
    AnchorRecord,
    Estimator,
    ModelStats,
    Prediction,
    QueryContext,
)

__all__ = [
    "AnchorOutcome",
    "AnchorRecord",
    "AnchorStatsEstimator",
    "Estimator",
    "ModelStats",
    "Prediction",
    "Prior",
    "QueryContext",
]
