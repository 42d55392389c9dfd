"""scope_shared.replay.Replay: the lookup, usage and answer text both adapters' replay models use."""

from __future__ import annotations

import pytest

from scope_shared import ConfigError, Outcome, ReplayMissError, ScopeError
from scope_shared.replay import Replay, answer_text
from scope_shared.types import DEFAULT_TOKENS_PER_CHAR

SHORT = "What is 2 + 2?"
LONG = "What is 2 + 2? Explain each step."
ROWS = [
    Outcome(query=SHORT, model="a", correct=1.0, output_tokens=3, input_tokens=7, query_id="q.1"),
    Outcome(query=LONG, model="a", correct=0.0, output_tokens=40),
    Outcome(query=SHORT, model="b", correct=0.0, output_tokens=9, input_tokens=7, query_id="q.1"),
]


def test_lookup_exact_stripped_then_longest_quoted() -> None:
    a = Replay(model="a", outcomes=ROWS)
    assert a.lookup(SHORT).correct == 1.0
    assert a.lookup(f"  {SHORT}\n").query == SHORT
    # both recorded questions are quoted in this prompt: the longest one is the one it is about
    assert a.lookup(f"Context: ...\nQuestion: {LONG}\nAnswer:").query == LONG
    assert a.lookup(f"Context: ...\nQuestion: {SHORT}\nAnswer:").query == SHORT
    assert sorted(a.queries) == sorted([SHORT, LONG])


def test_a_miss_is_a_replay_miss_error_naming_the_model() -> None:
    b = Replay(model="b", outcomes=ROWS)
    with pytest.raises(ReplayMissError, match="b has no recorded outcome for this prompt") as info:
        b.lookup("What is 3 + 3?")
    assert isinstance(info.value, ScopeError) and isinstance(info.value, LookupError)


def test_usage_is_recorded_or_estimated_from_the_prompt_length() -> None:
    a = Replay(model="a", outcomes=ROWS)
    assert a.usage(a.lookup(SHORT), "whatever the prompt") == (7, 3)
    prompt = "x" * 101
    assert a.usage(a.lookup(LONG), prompt) == (round(101 * DEFAULT_TOKENS_PER_CHAR), 40)
    no_output = Replay(model="c", outcomes=[Outcome(query="q", model="c", correct=1.0)])
    assert no_output.usage(no_output.lookup("q"), "q") == (1, 0)


def test_answer_text_names_the_model_the_question_and_the_grade() -> None:
    a = Replay(model="a", outcomes=ROWS)
    assert a.answer(a.lookup(SHORT)) == "[a] replayed answer to q.1: recorded as correct (1)."
    assert answer_text(a.lookup(LONG)) == "[a] replayed answer to this question: recorded as incorrect (0)."


def test_mapping_input_and_validation() -> None:
    assert Replay(model="a", outcomes={o.query: o for o in ROWS[:2]}).lookup(LONG).output_tokens == 40
    with pytest.raises(ConfigError, match="no recorded outcome of 'z'"):
        Replay(model="z", outcomes=ROWS)
    with pytest.raises(ConfigError, match="model is empty"):
        Replay(model="", outcomes=ROWS)
