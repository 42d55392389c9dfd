"""A LlamaIndex LLM as a profiling ``call``: ``profile(store, model=card, call=profile_call(llm))``."""

from __future__ import annotations

from collections.abc import Callable

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms import LLM

from scope_llamaindex._responses import text_of, usage_of
from scope_shared.errors import ConfigError
from scope_shared.profile import Usage

__all__ = ["profile_call"]


def profile_call(llm: LLM, *, system: str | None = None) -> Callable[[str], tuple[str, Usage]]:
    """A function prompt -> (answer text, usage) that asks ``llm.chat``, for :func:`scope_shared.profile.profile`.

    The prompt is the single user message (after a system message, if ``system`` is given); the usage is what
    the response reports (see :func:`scope_llamaindex.usage_of`; None counts where it reports none: profiling
    then estimates them). Errors are raised as the LLM raises them (profile retries rate limits and timeouts).
    """
    if not isinstance(llm, LLM):
        msg = f"profile_call takes a LlamaIndex LLM, got {type(llm).__name__}"
        raise ConfigError(msg)

    def call(prompt: str) -> tuple[str, Usage]:
        messages = [ChatMessage(role=MessageRole.SYSTEM, content=system)] if system else []
        messages.append(ChatMessage(role=MessageRole.USER, content=prompt))
        response = llm.chat(messages)
        return text_of(response), Usage(*usage_of(response))

    call.__name__ = f"profile_call({type(llm).__name__})"
    return call
