"""Reading LlamaIndex chat and completion responses: the answer text and the token usage a provider reported
(estimated from the text where it reported none)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.llms.types import ChatMessage

from scope_shared.feedback import reported_tokens


def usage_of(response: Any) -> tuple[int | None, int | None]:
    """Prompt and completion tokens a LlamaIndex chat or completion response reports (None if not).

    Looks where integrations put them: ``additional_kwargs`` (OpenAI's ``prompt_tokens`` /
    ``completion_tokens``, Anthropic's ``input_tokens`` / ``output_tokens``), the message's
    ``additional_kwargs`` (chat responses converted from completions), then ``raw.usage``.
    """
    message = getattr(response, "message", None)
    raw = getattr(response, "raw", None)
    raw_usage = raw.get("usage") if isinstance(raw, Mapping) else getattr(raw, "usage", None)
    inp: int | None = None
    out: int | None = None
    for source in (
        getattr(response, "additional_kwargs", None),
        getattr(message, "additional_kwargs", None),
        raw_usage,
    ):
        i, o = reported_tokens(source)
        inp = inp if inp is not None else i
        out = out if out is not None else o
    return inp, out


def text_of(response: Any) -> str:
    """The answer text of a chat or completion response."""
    message = getattr(response, "message", None)
    if message is not None:
        return str(getattr(message, "content", None) or "")
    return str(getattr(response, "text", None) or "")


def prompt_of(messages: Sequence[ChatMessage]) -> str:
    """The whole text of a chat's messages, one per line."""
    return "\n".join(str(m.content or "") for m in messages)


@dataclass(frozen=True, slots=True)
class Measured:
    """What one LLM call used: tokens (the provider's when ``reported``, else estimated) and its answer."""

    input_tokens: int
    output_tokens: int
    reported: bool
    answer: str


def measure(response: Any, prompt: str, count: Callable[[str], int]) -> Measured:
    """The call's usage as reported, with ``count`` (text -> tokens) filling in what was not."""
    inp, out = usage_of(response)
    answer = text_of(response)
    return Measured(
        input_tokens=inp if inp is not None else count(prompt),
        output_tokens=out if out is not None else count(answer),
        reported=inp is not None and out is not None,
        answer=answer,
    )
