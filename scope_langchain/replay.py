"""``ReplayChatModel``: a chat model that answers with a model's recorded outcome, for offline evaluation.

It looks up the question (the last human message, as the router reads it) among one model's recorded
outcomes (:class:`scope_shared.replay.Replay`) and answers with that outcome's token counts in
``usage_metadata`` and its grade in ``response_metadata["replay"]``. A router over replay models spends
exactly what the recorded models spent, so an accuracy/cost replay needs no API key and no network; swap in
real chat models to go live.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, PrivateAttr

from scope_langchain._messages import last_question, message_text
from scope_shared import ConfigError, Outcome, ReplayMissError
from scope_shared.replay import Replay

__all__ = ["ReplayChatModel", "ReplayMissError"]


class ReplayChatModel(BaseChatModel):
    """Answers each question with ``model``'s recorded outcome on it.

    Args:
        model: the model name (as in the price table and the engine's cards).
        outcomes: recorded outcomes (others' are ignored), or a mapping ``{question: Outcome}``.
        latency: seconds each answer takes (to make a replay feel like a real call).
        chunk_words: words per streamed chunk.

    Use :meth:`from_outcomes` to build one replay model per recorded model.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str
    outcomes: dict[str, Outcome]
    latency: float = 0.0
    chunk_words: int = 4
    _replay: Replay = PrivateAttr()

    def __init__(self, *, model: str, outcomes: Iterable[Outcome] | Mapping[str, Outcome], **kwargs: Any) -> None:
        replay = Replay(model=model, outcomes=outcomes)
        latency = kwargs.get("latency", 0.0)
        if not isinstance(latency, int | float) or latency < 0:
            msg = f"latency must be >= 0 seconds, got {latency!r}"
            raise ConfigError(msg)
        super().__init__(model=model, outcomes=dict(replay.outcomes), **kwargs)  # type: ignore[call-arg]
        self._replay = replay

    @classmethod
    def from_outcomes(
        cls, outcomes: Iterable[Outcome], *, models: Sequence[str] | None = None, **kwargs: Any
    ) -> dict[str, ReplayChatModel]:
        """One replay model per recorded model (or per name in ``models``), keyed by model name."""
        rows = list(outcomes)
        names = list(models) if models is not None else sorted({o.model for o in rows})
        return {name: cls(model=name, outcomes=rows, **kwargs) for name in names}

    def __repr__(self) -> str:
        return f"ReplayChatModel(model={self.model!r}, questions={len(self.outcomes)})"

    @property
    def _llm_type(self) -> str:
        return "scope-replay"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "questions": len(self.outcomes)}

    # -- the recorded answer ---------------------------------------------------------------------

    def recorded(self, messages: Sequence[BaseMessage]) -> Outcome:
        """The recorded outcome for these messages' question; :class:`ReplayMissError` if none."""
        return self._replay.lookup(last_question(messages))

    def _usage(self, messages: Sequence[BaseMessage], rec: Outcome) -> UsageMetadata:
        in_tok, out_tok = self._replay.usage(rec, "".join(message_text(m) for m in messages))
        return {"input_tokens": in_tok, "output_tokens": out_tok, "total_tokens": in_tok + out_tok}

    def _answer(self, rec: Outcome) -> str:
        return self._replay.answer(rec)

    def _metadata(self, rec: Outcome) -> dict[str, Any]:
        return {
            "model_name": self.model,
            "replay": {"correct": rec.correct, "query_id": rec.query_id, "task": rec.task},
        }

    def _message(self, messages: Sequence[BaseMessage]) -> AIMessage:
        rec = self.recorded(messages)
        return AIMessage(
            content=self._answer(rec),
            usage_metadata=self._usage(messages, rec),
            response_metadata=self._metadata(rec),
        )

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """The recorded input tokens of the question (a character estimate when none were recorded)."""
        return self._usage(messages, self.recorded(messages))["input_tokens"]

    # -- BaseChatModel -----------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency:
            time.sleep(self.latency)
        return ChatResult(generations=[ChatGeneration(message=self._message(messages))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency:
            await asyncio.sleep(self.latency)
        return ChatResult(generations=[ChatGeneration(message=self._message(messages))])

    def _chunks(self, messages: Sequence[BaseMessage]) -> list[AIMessageChunk]:
        rec = self.recorded(messages)
        words = self._answer(rec).split(" ")
        step = max(1, self.chunk_words)
        parts = [" ".join(words[i : i + step]) + " " for i in range(0, len(words), step)]
        parts[-1] = parts[-1].rstrip()
        chunks = [AIMessageChunk(content=part) for part in parts]
        # usage and metadata ride on the last chunk, as providers report them at the end of a stream
        chunks[-1] = AIMessageChunk(
            content=parts[-1], usage_metadata=self._usage(messages, rec), response_metadata=self._metadata(rec)
        )
        return chunks

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chunks = self._chunks(messages)
        if self.latency:
            time.sleep(self.latency)
        for chunk in chunks:
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        chunks = self._chunks(messages)
        if self.latency:
            await asyncio.sleep(self.latency)
        for chunk in chunks:
            yield ChatGenerationChunk(message=chunk)
