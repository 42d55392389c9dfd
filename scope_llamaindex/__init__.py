"""LlamaIndex adapter: SCOPE as a router selector, an LLM face over several LLMs, and an outcome recorder.

A thin translation layer over :class:`scope_shared.ScopeEngine`; it never talks to Chroma or vLLM itself.

- :class:`ScopeSelector` - a ``BaseSelector`` for ``RouterQueryEngine`` / ``RouterRetriever``;
- :class:`ScopeLLM` - an ``LLM`` that routes every call to one of several LLMs;
- :class:`ScopeEventHandler` - an instrumentation event handler that records real outcomes;
- :class:`ReplayLLM` - a ``CustomLLM`` that answers from recorded outcomes, for offline runs;
- :func:`profile_call` - an LLM as the ``call`` that profiles it on an anchor suite.
"""

from scope_llamaindex._responses import usage_of
from scope_llamaindex.events import ScopeCallEvent, ScopeEventHandler
from scope_llamaindex.llm import ScopeLLM
from scope_llamaindex.profile import profile_call
from scope_llamaindex.replay import ReplayLLM
from scope_llamaindex.selector import ScopeSelection, ScopeSelector, explain
from scope_shared.errors import ReplayMissError
from scope_shared.feedback import Grader
from scope_shared.replay import replay_grader

__all__ = [
    "Grader",
    "ReplayLLM",
    "ReplayMissError",
    "ScopeCallEvent",
    "ScopeEventHandler",
    "ScopeLLM",
    "ScopeSelection",
    "ScopeSelector",
    "explain",
    "profile_call",
    "replay_grader",
    "usage_of",
]
