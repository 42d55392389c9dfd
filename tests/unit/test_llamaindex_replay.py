"""ReplayLLM: answers from recorded outcomes, with the recorded token usage."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ChatMessage

from scope_llamaindex import ReplayLLM, ReplayMissError, replay_grader, usage_of
from scope_shared import ConfigError, Outcome, ScopeError
from tests.unit.llamaindex_fixtures import HELD_OUT, Q_CAPITAL, Q_CODE, recorded


def test_complete_answers_with_the_recorded_outcome_and_usage() -> None:
    llm = ReplayLLM(model="big", outcomes=HELD_OUT)
    response = llm.complete(Q_CODE)
    out = recorded(Q_CODE, "big")
    assert "recorded as correct" in response.text
    assert usage_of(response) == (out.input_tokens, out.output_tokens)
    assert response.raw["correct"] == out.correct
    small = ReplayLLM(model="small", outcomes=HELD_OUT).complete(Q_CODE)
    assert "recorded as incorrect" in small.text


def test_a_prompt_that_quotes_the_question_is_recognised() -> None:
    llm = ReplayLLM(model="small", outcomes=HELD_OUT)
    prompt = f"Context information is below.\n---\nsome passage\n---\nQuery: {Q_CAPITAL}\nAnswer: "
    assert llm.lookup(prompt).query == Q_CAPITAL
    chat = llm.chat([ChatMessage(role="user", content=Q_CAPITAL)])
    assert usage_of(chat) == (12, 10)


def test_unknown_prompt_raises_a_clear_error() -> None:
    llm = ReplayLLM(model="small", outcomes=HELD_OUT)
    with pytest.raises(ReplayMissError, match="small has no recorded outcome for this prompt") as info:
        llm.complete("What is the airspeed of an unladen swallow?")
    assert isinstance(info.value, ScopeError) and isinstance(info.value, LookupError)


def test_stream_reports_usage_on_the_last_chunk_only() -> None:
    chunks = list(ReplayLLM(model="big", outcomes=HELD_OUT).stream_complete(Q_CODE))
    assert len(chunks) > 2
    assert all(usage_of(c) == (None, None) for c in chunks[:-1])
    assert usage_of(chunks[-1]) == (14, 100)
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].text


def test_from_outcomes_and_validation() -> None:
    llms = ReplayLLM.from_outcomes(HELD_OUT)
    assert sorted(llms) == ["big", "mid", "small"] and llms["mid"].metadata.model_name == "mid"
    with pytest.raises(ConfigError, match="no recorded outcome of 'gpt-9'"):
        ReplayLLM(model="gpt-9", outcomes=HELD_OUT)
    with pytest.raises(ConfigError, match="model is empty"):
        ReplayLLM(model="", outcomes=HELD_OUT)


def test_missing_token_counts_are_not_invented() -> None:
    llm = ReplayLLM(model="m", outcomes=[Outcome(query="q1", model="m", correct=1.0)])
    assert usage_of(llm.complete("q1")) == (None, None)


def test_replay_grader_grades_a_replayed_answer_with_its_record() -> None:
    grade = replay_grader(HELD_OUT)
    small = ReplayLLM(model="small", outcomes=HELD_OUT).complete(Q_CODE).text
    big = ReplayLLM(model="big", outcomes=HELD_OUT).complete(Q_CODE).text
    assert grade(Q_CODE, small) == 0.0
    assert grade(Q_CODE, big) == 1.0
    assert grade(Q_CAPITAL, small) is None  # small answered the capital question correctly, not this
    assert grade(Q_CODE, "an answer no replay gave") is None
