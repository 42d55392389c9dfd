"""SCOPE (Cooolder/SCOPE) as an estimator, one job per module.

* :mod:`.prompt` - the prompt templates SCOPE was trained on, building them, parsing the answers;
* :mod:`.backends` - :class:`ScopeBackend`, :class:`SamplingConfig`, :class:`Completion`;
* :mod:`.http` - :class:`HTTPBackend`, a vLLM OpenAI-compatible server (the only module that knows
  vLLM's request fields);
* :mod:`.inprocess` - :class:`InProcessBackend`, ``vllm.LLM`` in this process (imported lazily);
* :mod:`.aggregate` - combining the samples of one prompt;
* :mod:`.estimator` - :class:`ScopeLLMEstimator`, which plans the prompts, caches and builds predictions.
"""

from scope_shared.estimators.scope.aggregate import aggregate_samples
from scope_shared.estimators.scope.backends import DEFAULT_SCOPE_MODEL, Completion, SamplingConfig, ScopeBackend
from scope_shared.estimators.scope.estimator import EstimatorCounters, ScopeLLMEstimator
from scope_shared.estimators.scope.http import HTTPBackend
from scope_shared.estimators.scope.inprocess import InProcessBackend
from scope_shared.estimators.scope.prompt import (
    SCOPE_COT,
    SCOPE_NOCOT,
    AnchorExample,
    ParsedSample,
    PromptTemplate,
    build_prompt,
    parse_output,
)

__all__ = [
    "DEFAULT_SCOPE_MODEL",
    "SCOPE_COT",
    "SCOPE_NOCOT",
    "AnchorExample",
    "Completion",
    "EstimatorCounters",
    "HTTPBackend",
    "InProcessBackend",
    "ParsedSample",
    "PromptTemplate",
    "SamplingConfig",
    "ScopeBackend",
    "ScopeLLMEstimator",
    "aggregate_samples",
    "build_prompt",
    "parse_output",
]
