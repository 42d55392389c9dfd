"""The wrapped model's run under ``ScopeChatModel``'s own run: the handlers it gets.

``ScopeChatModel`` is a chat model calling a chat model, so each call makes two LLM runs: its own, and the
chosen model's run nested under it, with the same tokens, usage and answer. Handlers see the call once, as one
chat-model run, like a call of any chat model: the outer run, which carries the answer, its usage and the
decision. Only two kinds of handler also get the chosen model's run: tracers (``BaseTracer``: LangSmith and
the like show it nested under the outer run) and :class:`~scope_langchain.ScopeOutcomeHandler` (it records
the chosen model's outcome). So streaming consumers (``astream_events``, ``astream_log``, LangGraph's
``stream_mode="messages"``, a handler printing ``on_llm_new_token``) get every token once, and usage
counters (``get_usage_metadata_callback``) count it once. The inner run is also tagged ``nostream``
(LangGraph's tag for runs it must not stream).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManager, BaseCallbackHandler, BaseCallbackManager, CallbackManager
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langchain_core.tracers.base import BaseTracer

from scope_langchain.callbacks import ScopeOutcomeHandler

_STREAMING: tuple[type[Any], ...] = (_StreamingCallbackHandler,)
try:  # the v2 streaming protocol (stream_events version="v3"), langchain-core >= 1.8
    from langchain_core.tracers._streaming import _V2StreamingCallbackHandler
except ImportError:
    pass
else:
    _STREAMING += (_V2StreamingCallbackHandler,)

#: Tag on the wrapped model's run: LangGraph's messages mode does not stream runs carrying it.
NOSTREAM = "nostream"


def sees_inner_run(handler: BaseCallbackHandler) -> bool:
    """Whether ``handler`` gets the chosen model's run too: tracers and the outcome handler, not streaming
    consumers (some tracers stream: ``astream_log``'s)."""
    if isinstance(handler, _STREAMING):
        return False
    return isinstance(handler, BaseTracer | ScopeOutcomeHandler)


def inner_callbacks(
    handlers: Sequence[BaseCallbackHandler],
    tags: Sequence[str],
    metadata: Mapping[str, Any],
    parent_run_id: uuid.UUID,
    *,
    is_async: bool,
) -> BaseCallbackManager:
    """Callbacks for the wrapped model's run, nested under the run ``parent_run_id``."""
    manager: BaseCallbackManager
    if is_async:
        manager = AsyncCallbackManager(handlers=[], parent_run_id=parent_run_id)
    else:
        manager = CallbackManager(handlers=[], parent_run_id=parent_run_id)
    manager.set_handlers([h for h in handlers if sees_inner_run(h)])
    manager.add_tags([*tags, NOSTREAM])
    manager.add_metadata(dict(metadata))
    return manager
