"""A LangChain chat model as a profiling ``call``: ``profile(store, model=card, call=profile_call(chat_model))``."""

from __future__ import annotations

from collections.abc import Callable

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from scope_langchain._messages import message_text, usage_of
from scope_shared.errors import ConfigError
from scope_shared.profile import Usage

__all__ = ["profile_call"]


def profile_call(chat_model: BaseChatModel, *, system: str | None = None) -> Callable[[str], tuple[str, Usage]]:
    """A function prompt -> (answer text, usage) that asks ``chat_model``, for :func:`scope_shared.profile.profile`.

    The prompt is the single human message (after a system message, if ``system`` is given); the usage is the
    reply's ``usage_metadata`` (None counts where the model reports none: profiling then estimates them).
    Errors are raised as the model raises them (profile retries rate limits and timeouts).
    """
    if not isinstance(chat_model, BaseChatModel):
        msg = f"profile_call takes a LangChain BaseChatModel, got {type(chat_model).__name__}"
        raise ConfigError(msg)

    def call(prompt: str) -> tuple[str, Usage]:
        messages: list[BaseMessage] = [SystemMessage(content=system)] if system else []
        messages.append(HumanMessage(content=prompt))
        reply = chat_model.invoke(messages)
        usage = usage_of(reply)
        if usage is None:
            return message_text(reply), Usage()
        return message_text(reply), Usage(usage.get("input_tokens"), usage.get("output_tokens"))

    call.__name__ = f"profile_call({type(chat_model).__name__})"
    return call
