"""ScopeLLM with ``cascade=``: the core's plan drives the calls; every step is settled, stamped, announced and
recorded; streaming yields the returned answer once the cascade has ended."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms import CustomLLM

from scope_llamaindex import ScopeEventHandler, ScopeLLM
from scope_shared import ConfigError
from scope_shared.cascade import Cascade
from scope_shared.store import anchor_id
from tests.unit.cascade_fixtures import calibration
from tests.unit.llamaindex_fixtures import (
    CARDS,
    Q_CAPITAL,
    li_settings,  # noqa: F401 - autouse: every test here runs with it
    make_engine,
)

NAMES = [c.name for c in CARDS]


class Fixed(CustomLLM):
    """Answers every prompt with one text (or raises), reporting token usage; counts its calls."""

    text: str = "(B)"
    fail: bool = False
    calls: int = 0

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="fixed")

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.calls += 1
        if self.fail:
            msg = "this model is down"
            raise ValueError(msg)
        return CompletionResponse(text=self.text, additional_kwargs={"prompt_tokens": 12, "completion_tokens": 30})

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        yield self.complete(prompt, formatted=formatted, **kwargs)


def llms(**texts: str) -> dict[str, Fixed]:
    return {m: Fixed(text=texts.get(m, "The answer is (B).")) for m in NAMES}


def scope_llm(engine: Any, models: dict[str, Fixed], **kwargs: Any) -> ScopeLLM:
    cascade = Cascade(calibration=calibration(loading=0.5, models=NAMES), grader="choice", **kwargs)
    return ScopeLLM(engine=engine, llms=models, value_per_correct=None, cascade=cascade)


def _steps(response: Any) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = response.additional_kwargs["scope"]["cascade"]["steps"]
    return steps


def test_every_step_is_settled_stamped_and_recorded() -> None:
    engine = make_engine(budget=1.0)
    models = llms(small="The answer is (A).")
    llm = scope_llm(engine, models, max_calls=3)
    with ScopeEventHandler(engine=engine, grader=lambda q, a: "(B)" in a) as handler:
        response = llm.complete(Q_CAPITAL)
    steps = _steps(response)
    assert len(steps) >= 2 and sum(m.calls for m in models.values()) == len(steps)
    assert handler.recorded == len(steps)  # one ScopeCallEvent per step
    engine.flush()
    stored = engine.store.get([anchor_id(Q_CAPITAL)])[anchor_id(Q_CAPITAL)].outcomes
    assert {s["model"] for s in steps} <= set(stored)
    for s in steps:
        assert s["call_id"] and s["answer"] in ("A", "B") and s["summary"].startswith("The answer is")
        assert [e["checker"] for e in s["evidence"]] == ["parse", "logprob"] and s["reason"]
        assert stored[s["model"]].correct == (1.0 if s["answer"] == "B" else 0.0)
        assert s["cost"] == pytest.approx(engine.cost_of(s["model"], input_tokens=12, output_tokens=30))
    scope = response.additional_kwargs["scope"]
    assert scope["cascade"]["stop_reason"] and scope["cascade"]["calls"] == len(steps)
    assert (
        scope["model"] == scope["cascade"]["model"]
        and response.text == f"The answer is ({scope['cascade']['answer']})."
    )
    assert engine.ledger is not None and engine.ledger.held == pytest.approx(0.0)
    assert engine.ledger.spent == pytest.approx(sum(s["cost"] for s in steps))


def test_a_failing_llm_is_released_and_the_plan_goes_on() -> None:
    engine = make_engine(budget=1.0)
    models = llms()
    models["small"].fail = True
    response = scope_llm(engine, models, max_calls=3).complete(Q_CAPITAL)
    failed = [s for s in _steps(response) if s["error"]]
    assert models["small"].calls == 1 and [s["model"] for s in failed] == ["small"]
    assert "this model is down" in failed[0]["error"] and failed[0]["call_id"] is None
    assert response.additional_kwargs["scope"]["model"] != "small"
    assert engine.ledger is not None and engine.ledger.held == pytest.approx(0.0)


async def test_a_failing_llm_is_released_and_the_plan_goes_on_async() -> None:
    engine = make_engine(budget=1.0)
    models = llms()
    models["small"].fail = True
    response = await scope_llm(engine, models, max_calls=3).acomplete(Q_CAPITAL)
    failed = [s for s in _steps(response) if s["error"]]
    assert models["small"].calls == 1 and [s["model"] for s in failed] == ["small"]
    assert failed[0]["call_id"] is None and response.additional_kwargs["scope"]["model"] != "small"
    assert engine.ledger is not None and engine.ledger.held == pytest.approx(0.0)


def test_streams_yield_the_returned_answer_as_one_chunk() -> None:
    llm = scope_llm(make_engine(), llms(), max_calls=2)
    chunks: Iterator[Any] = llm.stream_complete(Q_CAPITAL)
    got = list(chunks)
    assert len(got) == 1 and got[0].delta == got[0].text == "The answer is (B)."
    assert len(_steps(got[0])) == 2
    chat = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content=Q_CAPITAL)]))
    assert len(chat) == 1 and chat[0].delta == "The answer is (B)." and len(_steps(chat[0])) == 2


async def test_async_forms() -> None:
    llm = scope_llm(make_engine(), llms(), max_calls=2)
    assert len(_steps(await llm.acomplete(Q_CAPITAL))) == 2
    chat = await llm.achat([ChatMessage(role=MessageRole.USER, content=Q_CAPITAL)])
    assert len(_steps(chat)) == 2 and chat.message.content == "The answer is (B)."
    chunks = [c async for c in await llm.astream_complete(Q_CAPITAL)]
    assert len(chunks) == 1 and len(_steps(chunks[0])) == 2


def test_cascade_must_be_a_cascade() -> None:
    with pytest.raises(ConfigError, match="cascade must be"):
        ScopeLLM(engine=make_engine(), llms=llms(), cascade="yes")  # type: ignore[arg-type]
