"""Profiling a new model: run it over a suite's anchor questions, grade its answers, record them in the store.

``profile(store, model=ModelCard(...), call=fn)`` where ``fn`` is any function from a prompt to
``(text, usage)``; :class:`OpenAIChatCall` makes one for any OpenAI-compatible endpoint, and the adapters make one
from a LangChain chat model (``scope_langchain.profile_call``) or a LlamaIndex LLM
(``scope_llamaindex.profile_call``). See docs/profiling.md.
"""

from scope_shared.profile.calls import Call, CallResult, Usage, as_usage, classify, is_transient
from scope_shared.profile.costs import TokenGuess, guess_tokens
from scope_shared.profile.openai_chat import MalformedResponseError, OpenAIChatCall
from scope_shared.profile.report import ProfileEntry, ProfileReport, TaskSummary
from scope_shared.profile.run import TEMPLATE_FIELDS, check_template, profile, render
from scope_shared.profile.select import SELECTIONS, Selector, choose_anchors, outcome_matrix

__all__ = [
    "SELECTIONS",
    "TEMPLATE_FIELDS",
    "Call",
    "CallResult",
    "MalformedResponseError",
    "OpenAIChatCall",
    "ProfileEntry",
    "ProfileReport",
    "Selector",
    "TaskSummary",
    "TokenGuess",
    "Usage",
    "as_usage",
    "check_template",
    "choose_anchors",
    "classify",
    "guess_tokens",
    "is_transient",
    "outcome_matrix",
    "profile",
    "render",
]
