"""A LlamaIndex LLM that answers from recorded outcomes, for offline examples, tests and replay evaluation.

:class:`ReplayLLM` plays one model (:class:`scope_shared.replay.Replay`). For each prompt it finds the
recorded question the prompt is about (the prompt itself, or the longest recorded question quoted inside it,
as in a RAG template) and answers with that outcome: its text says whether the recorded answer was graded
correct, and its token usage is the recorded one (none is invented where none was recorded), reported the
way LlamaIndex's OpenAI integration reports it (``prompt_tokens`` / ``completion_tokens`` in
``additional_kwargs``), so routers and handlers read real token counts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from scope_shared import Outcome, ReplayMissError
from scope_shared.replay import Replay, replay_grader

__all__ = ["ReplayLLM", "ReplayMissError", "replay_grader"]


class ReplayLLM(CustomLLM):
    """Plays one model from its recorded outcomes.

    Args:
        model: the model name (as in the price table); also ``metadata.model_name``.
        outcomes: recorded outcomes; those of other models are ignored.
        context_window: reported in ``metadata``.
    """

    model: str = Field(description="The model this LLM replays.")
    context_window: int = Field(default=32768, gt=0)
    _replay: Replay = PrivateAttr()

    def __init__(self, *, model: str, outcomes: Iterable[Outcome], context_window: int = 32768) -> None:
        replay = Replay(model=model, outcomes=outcomes)
        super().__init__(model=model, context_window=context_window)
        self._replay = replay

    @classmethod
    def class_name(cls) -> str:
        return "ReplayLLM"

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[Outcome]) -> dict[str, ReplayLLM]:
        """One replay LLM per model found in ``outcomes``, keyed by model name."""
        rows = list(outcomes)
        names = sorted({o.model for o in rows})
        return {name: cls(model=name, outcomes=rows) for name in names}

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            model_name=self.model, context_window=self.context_window, num_output=1024, is_chat_model=False
        )

    @property
    def queries(self) -> list[str]:
        """The recorded questions this LLM can answer."""
        return self._replay.queries

    def lookup(self, prompt: str) -> Outcome:
        """The recorded outcome a prompt is about: an exact question, else the longest one quoted in it."""
        return self._replay.lookup(prompt)

    def _response(self, outcome: Outcome) -> tuple[str, dict[str, Any], dict[str, Any]]:
        text = self._replay.answer(outcome)
        usage: dict[str, Any] = {}
        if outcome.input_tokens is not None:
            usage["prompt_tokens"] = outcome.input_tokens
        if outcome.output_tokens is not None:
            usage["completion_tokens"] = outcome.output_tokens
        if usage.keys() == {"prompt_tokens", "completion_tokens"}:
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        raw = {
            "id": f"replay-{uuid.uuid4().hex}",
            "model": self.model,
            "query_id": outcome.query_id,
            "correct": outcome.correct,
            "usage": dict(usage),
        }
        return text, usage, raw

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text, usage, raw = self._response(self.lookup(prompt))
        return CompletionResponse(text=text, additional_kwargs=usage, raw=raw)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text, usage, raw = self._response(self.lookup(prompt))
        words = text.split(" ")

        def gen() -> CompletionResponseGen:
            sofar = ""
            for i, word in enumerate(words):
                delta = word if i == 0 else " " + word
                sofar += delta
                last = i == len(words) - 1
                # Usage arrives with the last chunk, as with OpenAI's stream_options.include_usage.
                yield CompletionResponse(
                    text=sofar,
                    delta=delta,
                    additional_kwargs=dict(usage) if last else {},
                    raw=raw if last else None,
                )

        return gen()

