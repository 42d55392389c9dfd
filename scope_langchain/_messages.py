"""LangChain messages <-> text: the input a chat model accepts, the question routed on, the reply and its usage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    BaseMessageChunk,
    ChatMessage,
    HumanMessage,
    convert_to_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.prompt_values import PromptValue

from scope_shared import ConfigError

M = TypeVar("M", bound=BaseMessage)


def message_text(message: BaseMessage) -> str:
    """The text parts of a message's content (works with langchain-core 0.3 and 1.x)."""
    text: Any = message.text
    return str(text if isinstance(text, str) else text())


def to_messages(value: Any) -> list[BaseMessage]:
    """Anything a chat model accepts (str, messages, ``PromptValue``) as a list of messages."""
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, str):
        return [HumanMessage(content=value)]
    if isinstance(value, BaseMessage):
        return [value]
    if isinstance(value, Sequence):
        return convert_to_messages(value)
    msg = (
        f"cannot route a {type(value).__name__}; pass what a chat model accepts: "
        "a str, a list of messages or a PromptValue"
    )
    raise ConfigError(msg)


def conversation_text(messages: Sequence[BaseMessage]) -> str:
    """The text of every message that has text, one per line."""
    return "\n".join(t for t in (message_text(m) for m in messages) if t)


def _is_human(message: BaseMessage) -> bool:
    return message.type == "human" or (isinstance(message, ChatMessage) and message.role.lower() in ("user", "human"))


def last_question(messages: Sequence[BaseMessage]) -> str:
    """The text routed on: the last human message that has text, else the last message that has text.

    System prompts, earlier turns, tool results and images do not change which model is chosen; the whole
    conversation still counts toward the expected input tokens.
    """
    for message in reversed(messages):
        if _is_human(message) and message_text(message).strip():
            return message_text(message)
    for message in reversed(messages):
        if message_text(message).strip():
            return message_text(message)
    msg = "the conversation has no text to route on; send at least one message with text content"
    raise ConfigError(msg)


def as_message(out: Any, model: str) -> BaseMessage:
    """A routed model's output as a message (a str becomes an ``AIMessage``)."""
    if isinstance(out, str):
        return AIMessage(content=out)
    return _checked(out, BaseMessage, model, "returned", "return a message or a str")


def as_chunk(out: Any, model: str) -> BaseMessageChunk:
    """A routed model's streamed output as a message chunk.

    A str becomes an ``AIMessageChunk``; so does a whole ``AIMessage``, which is what ``stream`` yields for a
    chat model that does not stream natively (``disable_streaming=True``, or no ``_stream``): one chunk, the
    last, carrying the message's tool calls, usage and metadata.
    """
    if isinstance(out, str):
        return AIMessageChunk(content=out)
    if isinstance(out, AIMessage) and not isinstance(out, BaseMessageChunk):
        return AIMessageChunk(**{**out.model_dump(exclude={"type"}), "chunk_position": "last"})
    return _checked(out, BaseMessageChunk, model, "streamed", "stream message chunks")


def _checked(out: Any, kind: type[M], model: str, did: str, must: str) -> M:
    if isinstance(out, kind):
        return out
    msg = f"model {model!r} {did} a {type(out).__name__}; a routed model must {must}"
    raise TypeError(msg)


def usage_of(message: BaseMessage) -> UsageMetadata | None:
    """The token usage a message reports (None if none)."""
    usage = getattr(message, "usage_metadata", None)
    return usage if usage else None
