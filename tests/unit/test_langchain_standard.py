"""LangChain's standard chat model tests (``langchain-tests``) over ``ScopeChatModel``, as LangChain's partner
packages run them: subclass the test classes, say how to build the model, and set the feature flags.

The router wraps langchain-core's ``GenericFakeChatModel`` (``UsageFake``: the same, reporting its usage when
streaming too), so the "integration" half runs offline and in-process like the unit half: both are hermetic
and live in tests/unit. The flags are those true of a router over such fakes:

- no tool calling, no structured output: the fakes cannot call a tool (``ScopeChatModel.bind_tools`` and
  ``with_structured_output`` are tested over tool-calling fakes in test_langchain_chat_model.py);
- no image, audio, PDF, JSON-mode or Anthropic-format inputs: a fake ignores its input, so a pass would
  claim nothing;
- usage metadata on invoke and stream: the fakes report it, and the router passes it through;
- model override: a per-call ``model=`` naming one of the router's models forces that model (anything else
  is refused), so ``response_metadata["model_name"]`` reflects it.

Every failure left is an ``xfail`` below with its reason.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from scope_langchain import ScopeChatModel
from scope_shared import ScopeEngine
from tests.unit.langchain_fakes import CARDS, make_engine, usage_fake


@pytest.fixture
def benchmark(benchmark: Any) -> Any:
    """``test_init_time`` times construction with pytest-benchmark (about a thousand rounds); timings belong in
    benchmarks/, so here its constructions run once."""
    benchmark.disabled = True
    return benchmark


@cache
def _engine() -> ScopeEngine:
    return make_engine()


def _params() -> dict[str, Any]:
    return {"engine": _engine(), "models": {c.name: usage_fake(c.name) for c in CARDS}, "retry_wait": 0.0}


class _Flags:
    @property
    def chat_model_class(self) -> type[ScopeChatModel]:
        return ScopeChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return _params()

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "strong"


class TestScopeChatModelUnit(_Flags, ChatModelUnitTests):
    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # ``timeout`` and ``api_key`` are settings of each wrapped model (its client's timeout, its
        # credentials): ScopeChatModel refuses them with a ConfigError saying so, rather than drop them.
        params = dict(super().standard_chat_model_params)
        del params["timeout"], params["api_key"]
        return params


class TestScopeChatModelIntegration(_Flags, ChatModelIntegrationTests):
    pass
