"""Shared fakes for the LangChain adapter tests (no tests here): a small hermetic engine and scripted models.

The engine knows three models over two topics of anchors: on arithmetic ``cheap`` is always wrong, ``mid``
right half the time and ``strong`` always right; on translation every model is right. Estimates shrink toward each
model's overall record, so ``strong`` has the best p_correct on both topics:

- ``value_per_correct=None`` (accuracy only) sends both questions to ``strong``;
- ``value_per_correct=V_MIXED`` sends arithmetic to ``mid`` and translation to ``cheap``;
- ``value_per_correct=0`` sends both to ``cheap``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk

from scope_shared import AnchorStatsEstimator, AnchorStore, HashingEmbedder, ModelCard, Outcome, ScopeEngine
from scope_shared.estimators.base import Prediction, QueryContext

CARDS = [
    ModelCard(name="cheap", input_per_mtok=0.1, output_per_mtok=0.2),
    ModelCard(name="mid", input_per_mtok=1.0, output_per_mtok=2.0),
    ModelCard(name="strong", input_per_mtok=10.0, output_per_mtok=30.0),
]
PAIRS = [(3, 7), (4, 9), (6, 8), (12, 11), (15, 4), (21, 3), (9, 9), (14, 6), (5, 17), (8, 13)]
WORDS = ["house", "water", "bread", "cat", "garden", "book", "river", "window", "friend", "street"]
MATH = [f"what is {a} times {b} in arithmetic" for a, b in PAIRS]
TRIVIA = [f"translate the word {w} into french" for w in WORDS]
MATH_Q = "what is 12 times 13 in arithmetic"
TRIVIA_Q = "translate the word apple into french"
#: USD per correct answer at which arithmetic goes to mid and translation to cheap
V_MIXED = 2e-4
#: output tokens per model per topic
MATH_TOKENS = {"cheap": 20, "mid": 50, "strong": 200}
TRIVIA_TOKENS = {"cheap": 10, "mid": 20, "strong": 80}


def anchor_outcomes() -> list[Outcome]:
    rows: list[Outcome] = []
    for i, q in enumerate(MATH):
        grades = {"cheap": 0.0, "mid": float(i % 2), "strong": 1.0}
        rows += [
            Outcome(query=q, model=m, correct=grades[m], output_tokens=MATH_TOKENS[m], input_tokens=10, task="math")
            for m in grades
        ]
    for q in TRIVIA:
        rows += [
            Outcome(query=q, model=m, correct=1.0, output_tokens=TRIVIA_TOKENS[m], input_tokens=8, task="trivia")
            for m in TRIVIA_TOKENS
        ]
    return rows


def make_engine(**kwargs: Any) -> ScopeEngine:
    store = AnchorStore(embedder=HashingEmbedder())
    store.add(anchor_outcomes(), progress=False)
    kwargs.setdefault("write_behind", 0)  # outcomes written at once, so tests can read them back
    engine = ScopeEngine(store=store, models=CARDS, k=5, **kwargs)
    engine.wait_ready(timeout=30)
    return engine


class Script:
    """An iterator of replies for GenericFakeChatModel: messages are copied, exceptions raised, the last
    step repeats forever."""

    def __init__(self, *steps: AIMessage | str | BaseException) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.last_usage: Any = None

    def __iter__(self) -> Iterator[AIMessage]:
        return self

    def __next__(self) -> AIMessage:
        self.calls += 1
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, BaseException):
            raise step
        message = AIMessage(content=step) if isinstance(step, str) else step.model_copy(deep=True)
        self.last_usage = message.usage_metadata
        return message


def reply(name: str, *, input_tokens: int = 12, output_tokens: int = 30) -> AIMessage:
    return AIMessage(
        content=f"{name} answers",
        usage_metadata={
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
    )


def fake(name: str, *steps: AIMessage | str | BaseException) -> GenericFakeChatModel:
    """A LangChain GenericFakeChatModel answering as ``name`` (with usage), or following ``steps``."""
    script = Script(*(steps or (reply(name),)))
    model = GenericFakeChatModel(messages=script, name=name)
    model.__dict__["_script"] = script
    return model


def calls(model: GenericFakeChatModel) -> int:
    script: Script = model.__dict__["_script"]
    return script.calls


def fakes() -> dict[str, GenericFakeChatModel]:
    return {c.name: fake(c.name) for c in CARDS}


class CountingEstimator(AnchorStatsEstimator):
    """Anchor statistics that count estimator calls (and the queries in each)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[int] = []

    def _predict(self, queries: Sequence[QueryContext], models: Sequence[str]) -> list[dict[str, Prediction]]:
        self.calls.append(len(queries))
        return super()._predict(queries, models)


class UsageFake(GenericFakeChatModel):
    """GenericFakeChatModel that also reports its reply's ``usage_metadata`` when streaming, on the last chunk
    (as providers do); the base class drops it."""

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chunks = list(super()._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
        last = chunks[-1].message
        usage = self._usage
        if usage is not None and isinstance(last, AIMessageChunk):
            chunks[-1] = ChatGenerationChunk(message=last.model_copy(update={"usage_metadata": usage}))
        yield from chunks

    @property
    def _usage(self) -> Any:
        script: Script = self.__dict__["_script"]
        return script.last_usage


def usage_fake(name: str, *steps: AIMessage | str | BaseException) -> UsageFake:
    """A :class:`UsageFake` answering as ``name`` (with usage, on invoke and stream), or following ``steps``."""
    script = Script(*(steps or (reply(name),)))
    model = UsageFake(messages=script, name=name)
    model.__dict__["_script"] = script
    return model


class Recording(GenericFakeChatModel):
    """GenericFakeChatModel that records the ``stop`` and keyword arguments each call reached it with."""

    seen: list[dict[str, Any]] = []

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Any:
        self.seen.append({"stop": stop, **kwargs})
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def recording(name: str, *steps: AIMessage | str | BaseException) -> Recording:
    """A :class:`Recording` fake answering as ``name`` (with usage), or following ``steps``."""
    return Recording(messages=Script(*(steps or (reply(name),))), name=name, seen=[])
