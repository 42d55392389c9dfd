"""The public surface is pinned: a change here is a deliberate API change."""

from __future__ import annotations

import subprocess
import sys

import scope_shared

CORE = {
    "AddReport", "AnchorEvidence", "AnchorStatsEstimator", "AnchorStore", "Budget", "BudgetExceededError",
    "BudgetLedger", "CachedEmbedder", "CallableEmbedder", "ConfigError", "DataError", "Decision", "Embedder",
    "EmbedderError", "EmptyStoreError", "Escalation", "Estimate", "Estimator", "EstimatorUnavailableError", "HashingEmbedder",
    "MiniLMEmbedder", "ModelCard", "NoAnchorDataError", "Outcome", "Prior", "ReplayMissError", "RouteOptions",
    "ScopeEngine", "ScopeError", "Settlement",
    "StoreAccessError", "StoreUnavailableError", "UnknownModelError", "__version__", "as_embedder", "choose", "load_outcomes",
    "load_prices", "utility",
}


def test_core_all_is_pinned() -> None:
    assert set(scope_shared.__all__) == CORE
    for name in scope_shared.__all__:
        assert hasattr(scope_shared, name), name


def test_errors_subclass_builtins() -> None:
    assert issubclass(scope_shared.ConfigError, ValueError)
    assert issubclass(scope_shared.UnknownModelError, KeyError)
    assert issubclass(scope_shared.StoreUnavailableError, ConnectionError)
    assert issubclass(scope_shared.BudgetExceededError, scope_shared.ScopeError)


def test_core_imports_no_framework_and_loads_nothing() -> None:
    code = (
        "import sys, scope_shared, scope_shared.cli, scope_shared.evaluation;"
        "bad = [m for m in sys.modules if m.split('.')[0] in"
        " ('langchain_core', 'langchain', 'llama_index', 'torch', 'sentence_transformers', 'chromadb', 'vllm', 'openai')];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
