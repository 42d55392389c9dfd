"""ReplayChatModel answers with a model's recorded outcome: its tokens as usage, its grade as metadata."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from scope_langchain import ReplayChatModel, ReplayMissError
from scope_shared import ConfigError, Outcome

Q1 = "Which gas do plants absorb?\nA) oxygen\nB) carbon dioxide\nAnswer:"
Q2 = "Write a python function to add two numbers."
ROWS = [
    Outcome(query=Q1, model="a", correct=1.0, output_tokens=3, input_tokens=17, query_id="arc.1", task="arc"),
    Outcome(query=Q1, model="b", correct=0.0, output_tokens=9, input_tokens=17, query_id="arc.1", task="arc"),
    Outcome(query=Q2, model="a", correct=0.0, output_tokens=120, input_tokens=None, query_id="mbpp.2"),
]


def test_invoke_answers_with_the_recorded_usage_and_grade() -> None:
    a = ReplayChatModel(model="a", outcomes=ROWS)
    out = a.invoke([SystemMessage("be brief"), HumanMessage(Q1)])
    assert isinstance(out, AIMessage)
    assert out.usage_metadata == {"input_tokens": 17, "output_tokens": 3, "total_tokens": 20}
    assert out.response_metadata["replay"] == {"correct": 1.0, "query_id": "arc.1", "task": "arc"}
    assert out.response_metadata["model_name"] == "a"
    assert "arc.1" in str(out.content) and "correct" in str(out.content)


def test_missing_input_tokens_are_estimated_from_characters() -> None:
    out = ReplayChatModel(model="a", outcomes=ROWS).invoke(Q2)
    assert out.usage_metadata is not None
    assert out.usage_metadata["input_tokens"] == round(len(Q2) * 0.25)
    assert out.usage_metadata["output_tokens"] == 120


def test_from_outcomes_builds_one_model_per_recorded_model() -> None:
    models = ReplayChatModel.from_outcomes(ROWS)
    assert sorted(models) == ["a", "b"]
    out = models["b"].invoke(Q1)
    assert out.usage_metadata is not None and out.usage_metadata["output_tokens"] == 9
    assert out.response_metadata["replay"]["correct"] == 0.0
    assert models["a"].get_num_tokens_from_messages([HumanMessage(Q1)]) == 17


def test_unknown_question_or_model_is_a_clear_error() -> None:
    with pytest.raises(ReplayMissError, match="no recorded outcome"):
        ReplayChatModel(model="b", outcomes=ROWS).invoke(Q2)
    with pytest.raises(ConfigError, match="no recorded outcome of 'c'"):
        ReplayChatModel(model="c", outcomes=ROWS)
    with pytest.raises(ConfigError, match="latency"):
        ReplayChatModel(model="a", outcomes=ROWS, latency=-1)


def test_stream_carries_usage_once_and_the_same_text() -> None:
    a = ReplayChatModel(model="a", outcomes=ROWS, chunk_words=2)
    chunks = list(a.stream(Q1))
    assert len(chunks) > 2
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.content == a.invoke(Q1).content
    assert merged.usage_metadata is not None and merged.usage_metadata["output_tokens"] == 3


async def test_async_forms() -> None:
    a = ReplayChatModel(model="a", outcomes=ROWS)
    out = await a.ainvoke(Q1)
    assert out.response_metadata["replay"]["correct"] == 1.0
    text = "".join([str(c.content) async for c in a.astream(Q1)])
    assert text == out.content


def test_a_prompt_that_quotes_the_recorded_question_is_recognised() -> None:
    a = ReplayChatModel(model="a", outcomes=ROWS)
    out = a.invoke(f"Answer with the letter only.\n\n{Q1}")
    assert out.response_metadata["replay"]["query_id"] == "arc.1"
