"""LangChain adapter for scope-router: a thin translation layer over :class:`scope_shared.ScopeEngine`.

- :class:`ScopeRouter` - a runnable that routes each call to one of several chat models and calls it;
- :class:`ScopeChatModel` - the same routing as a ``BaseChatModel``;
- :class:`ScopeOutcomeHandler` - a callback handler that records real outcomes back into the store;
- :class:`ReplayChatModel` - a chat model answering with recorded outcomes, for offline evaluation;
- :func:`profile_call` - a chat model as the ``call`` that profiles it on an anchor suite.

Needs the ``[langchain]`` extra (``langchain-core``).
"""

from scope_langchain._messages import last_question
from scope_langchain.callbacks import Grader, ScopeOutcomeHandler
from scope_langchain.chat_model import ScopeChatModel
from scope_langchain.profile import profile_call
from scope_langchain.replay import ReplayChatModel, ReplayMissError
from scope_langchain.router import ScopeRoute, ScopeRouter
from scope_shared.transient import is_transient

__all__ = [
    "Grader",
    "ReplayChatModel",
    "ReplayMissError",
    "ScopeChatModel",
    "ScopeOutcomeHandler",
    "ScopeRoute",
    "ScopeRouter",
    "is_transient",
    "last_question",
    "profile_call",
]
