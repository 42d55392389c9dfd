"""scope-router core: anchor store, estimators, budgeted utility routing, replay evaluation.

This package never imports LangChain or LlamaIndex; the adapters live in ``scope_langchain`` and
``scope_llamaindex``.
"""

from scope_shared.budget import Budget, BudgetLedger, Settlement
from scope_shared.data import load_outcomes, load_prices
from scope_shared.embeddings import (
    CachedEmbedder,
    CallableEmbedder,
    Embedder,
    HashingEmbedder,
    MiniLMEmbedder,
    as_embedder,
)
from scope_shared.engine import ScopeEngine
from scope_shared.errors import (
    BudgetExceededError,
    ConfigError,
    DataError,
    EmbedderError,
    EmptyStoreError,
    EstimatorUnavailableError,
    NoAnchorDataError,
    ReplayMissError,
    ScopeError,
    StoreAccessError,
    StoreUnavailableError,
    UnknownModelError,
)
from scope_shared.escalation import Escalation
from scope_shared.estimators import AnchorStatsEstimator, Estimator, Prior
from scope_shared.policy import choose, utility
from scope_shared.store import AddReport, AnchorStore
from scope_shared.types import AnchorEvidence, Decision, Estimate, ModelCard, Outcome, RouteOptions

__version__ = "0.1.0"

__all__ = [
    "AddReport",
    "AnchorEvidence",
    "AnchorStatsEstimator",
    "AnchorStore",
    "Budget",
    "BudgetExceededError",
    "BudgetLedger",
    "CachedEmbedder",
    "CallableEmbedder",
    "ConfigError",
    "DataError",
    "Decision",
    "Embedder",
    "EmbedderError",
    "EmptyStoreError",
    "Escalation",
    "Estimate",
    "Estimator",
    "EstimatorUnavailableError",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "ModelCard",
    "NoAnchorDataError",
    "Outcome",
    "Prior",
    "ReplayMissError",
    "RouteOptions",
    "ScopeEngine",
    "ScopeError",
    "Settlement",
    "StoreAccessError",
    "StoreUnavailableError",
    "UnknownModelError",
    "__version__",
    "as_embedder",
    "choose",
    "load_outcomes",
    "load_prices",
    "utility",
]
