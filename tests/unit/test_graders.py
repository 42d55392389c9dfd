"""Graders: one test per rule of ../shared/data/README.md ("Gold answers and recorded responses"), edge cases,
the user-callable and LLM-judge graders, and pathological inputs."""

from __future__ import annotations

import time

import pytest

from scope_shared.errors import ConfigError, DataError
from scope_shared.suites.extract import MAX_SCAN_CHARS, json_answer
from scope_shared.suites.graders import GRADERS, ChoiceGrader, ExactGrader, Grader, NumberGrader, grader_named
from scope_shared.suites.judges import CallableGrader, JudgeGrader, parse_verdict

CHOICE = ChoiceGrader()
NUMBER = NumberGrader()
EXACT = ExactGrader()


# -- choice -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("B\n", "B"),
        ("  B)", "B"),
        ("B. Because the sun is hot", "B"),
        ("C: the third", "C"),
        ("The answer is (D).", "D"),
        ("(A) looks right, but on reflection the answer is (C)", "C"),  # the LAST (X)
        ("B) first thought... final answer: (A)", "A"),  # a (X) beats the leading letter
    ],
)
def test_choice_takes_last_parenthesised_letter_else_leading_letter(response: str, letter: str) -> None:
    assert CHOICE.extract(response) == letter


@pytest.mark.parametrize("response", ["Because it is B", "", "   ", "The answer is B", "BA", "b", "(F)", "(b)"])
def test_choice_without_a_final_letter_has_no_answer(response: str) -> None:
    assert CHOICE.extract(response) is None


def test_choice_grades_against_the_reference_letter() -> None:
    assert CHOICE.grade("B) east", "B") == 1.0
    assert CHOICE.grade("B) east", "A") == 0.0
    assert CHOICE.grade("I am not sure", "A") == 0.0
    assert CHOICE.grade("(c)", " c ") == 0.0  # a lower-case (c) is not an option letter
    assert CHOICE.grade("C", "(C)") == 1.0


def test_choice_letters_are_configurable_and_checked() -> None:
    assert ChoiceGrader(letters="AB").extract("(C) or (B)") == "B"
    with pytest.raises(ConfigError, match="letters"):
        ChoiceGrader(letters="ab")
    with pytest.raises(DataError, match="cannot be graded by the 'choice' grader"):
        CHOICE.grade("A", "Z")


# -- number -------------------------------------------------------------------------------------------------


def test_number_prefers_the_json_answer() -> None:
    response = 'Total is 7500 + 1500 + 1800 = 10800.\n```json\n{"reasoning": "... = 10800", "answer": "$10,800"}\n```'
    assert NUMBER.extract(response) == "10800"
    assert NUMBER.grade(response, "10,800") == 1.0
    # The JSON answer wins over a later boxed value and a later number.
    assert NUMBER.extract('{"answer": "12"} so \\boxed{13} and 14') == "12"


def test_number_json_answer_may_be_a_bare_number_or_broken_json() -> None:
    assert NUMBER.extract('{"reasoning": "x", "answer": 18}') == "18"
    assert NUMBER.extract('{"reasoning": "it is {not json", "answer": "42"') == "42"  # pattern fallback
    assert NUMBER.extract('"answer": 7, "more": 1') == "7"


def test_number_falls_back_to_the_last_boxed_value() -> None:
    assert NUMBER.extract("First \\boxed{3}, then corrected: \\boxed{\\frac{1}{2}} hmm no \\boxed{4}. Done 99") == "4"
    assert NUMBER.extract("so $x = \\boxed{-2.50}$") == "-2.5"


def test_number_falls_back_to_the_last_number() -> None:
    assert NUMBER.extract("5 apples, then 3 more, so 8 apples. ") == "8"
    assert NUMBER.extract("It costs $1,250.") == "1250"
    assert NUMBER.extract("no digits here") is None
    assert NUMBER.extract("") is None


def test_number_compares_the_first_number_of_each_as_floats() -> None:
    assert NUMBER.grade('{"answer": "18 dollars and 3 cents"}', "18") == 1.0
    assert NUMBER.grade('{"answer": "18.0"}', "18") == 1.0
    assert NUMBER.grade('{"answer": "0.5"}', ".5") == 0.0  # ZeroEval reads ".5" as its first number, 5
    assert NUMBER.grade('{"answer": "0.5"}', "0.50") == 1.0
    assert NUMBER.grade('{"answer": "-3"}', "3") == 0.0
    assert NUMBER.grade('{"answer": "N/A"}', "3") == 0.0  # a JSON answer without a number is no answer


def test_number_reads_a_whole_fraction_answer_as_its_value() -> None:
    assert NUMBER.extract('{"answer": "32/3"}') == repr(32 / 3)
    assert NUMBER.grade('{"answer": "32/3"}', "32") == 0.0  # ZeroEval graded this wrong, not right
    assert NUMBER.grade('{"answer": "3/4"}', "0.75") == 1.0
    assert NUMBER.extract('{"answer": "1/0"}') is None
    assert NUMBER.extract('{"answer": "1/2 cup"}') == "1"  # not a whole fraction: the first number


def test_number_agree_compares_extracted_answers_as_floats() -> None:
    assert NUMBER.agree("18", "18.0")
    assert not NUMBER.agree("18", "18.5")
    assert not NUMBER.agree(None, "1")
    assert NUMBER.agree(NUMBER.extract("\\boxed{1,000}"), NUMBER.extract('{"answer": "$1000.00"}'))


def test_number_reference_without_a_number_is_rejected() -> None:
    with pytest.raises(DataError, match="'number' grader"):
        NUMBER.grade("1", "none")


# -- exact (CRUXEval-O) -------------------------------------------------------------------------------------


def test_exact_strips_outer_quotes_on_both_sides() -> None:
    response = '```json\n{"reasoning": "returns the first three", "answer": "\'[4]\'"}\n```'
    assert EXACT.extract(response) == "[4]"
    assert EXACT.grade(response, "'[4]'") == 1.0
    assert EXACT.grade('{"answer": "abc"}', "'abc'") == 1.0
    assert EXACT.grade('{"answer": "\\"abc\\""}', "'abc'") == 1.0  # JSON-escaped double quotes
    assert EXACT.grade('{"answer": "abd"}', "'abc'") == 0.0


def test_exact_keeps_inner_white_space() -> None:
    assert EXACT.grade('{"answer": "faqo osax "}', "'faqo osax '") == 1.0
    assert EXACT.grade('{"answer": "faqo osax"}', "'faqo osax '") == 0.0


def test_exact_escapes_newlines_to_match_the_repr() -> None:
    assert EXACT.extract('{"answer": "t\\nZA"}') == "t\\nZA"
    assert EXACT.grade('{"answer": "t\nZA\nA"}', "'t\\nZA\\nA'") == 1.0  # raw newlines inside the JSON string


def test_exact_writes_a_non_string_answer_as_python_does() -> None:
    assert EXACT.grade('{"reasoning": "r", "answer": {"w": 3, "wi": 10}}', "{'w': 3, 'wi': 10}") == 1.0
    assert EXACT.grade('{"answer": ["0", 2]}', "['0', 2]") == 1.0
    assert EXACT.grade('{"answer": true}', "True") == 1.0


def test_exact_reads_only_the_first_json_object_then_the_pattern() -> None:
    # ZeroEval parses the first balanced {...}; when that fails, the first "answer": "..." by pattern.
    assert EXACT.extract('{"answer": "a"} {"answer": "b"}') == "a"
    assert EXACT.extract('a set {1, 2} then {"reasoning": "x", "answer": "b"}') == "b"
    # Unescaped quotes break the JSON; the pattern stops at the next double quote, so the answer is lost.
    assert EXACT.extract('{"reasoning": "says "hi"", "answer": "\\"HI\\""}') == "\\"


def test_exact_needs_a_json_answer() -> None:
    assert EXACT.extract("The output is [1, 2]") is None
    assert EXACT.grade("The output is 'abc'", "'abc'") == 0.0
    assert EXACT.extract('{"answer": "\'\'"}') == ""  # the empty string is an answer, not a missing one
    assert EXACT.grade('{"answer": "\'\'"}', "''") == 1.0


# -- json_answer ----------------------------------------------------------------------------------------------


def test_json_answer_reads_fenced_json_and_ignores_objects_without_answer() -> None:
    assert json_answer('```json\n{\n  "reasoning": "r",\n  "answer": "x"\n}\n```') == "x"
    assert json_answer('{"reasoning": "r"}') is None
    assert json_answer("no json") is None


# -- registry -----------------------------------------------------------------------------------------------


def test_grader_named_returns_builtins_and_names_known_kinds_when_unknown() -> None:
    assert isinstance(grader_named("choice"), ChoiceGrader)
    assert grader_named("number").kind == "number"
    assert grader_named("exact") is GRADERS["exact"]
    with pytest.raises(ConfigError, match=r"unknown grader kind 'f1'; known: choice, exact, number"):
        grader_named("f1")
    mine = CallableGrader(lambda r, ref: r == ref, kind="mine")
    assert grader_named("mine", extra={"mine": mine}) is mine
    with pytest.raises(TypeError):
        GRADERS["x"] = mine  # type: ignore[index]


def test_builtin_graders_are_graders() -> None:
    for kind, grader in GRADERS.items():
        assert isinstance(grader, Grader)
        assert grader.kind == kind


# -- callable -----------------------------------------------------------------------------------------------


def test_callable_grader_accepts_bools_and_scores() -> None:
    grader = CallableGrader(lambda response, reference: reference.lower() in response.lower(), kind="contains")
    assert grader.grade("It is PARIS.", "paris") == 1.0
    assert grader.grade("London", "paris") == 0.0
    partial = CallableGrader(lambda response, reference: 0.25)
    assert partial.grade("x", "y") == 0.25
    assert partial.kind == "custom"


def test_callable_grader_agree_grades_one_answer_against_the_other() -> None:
    grader = CallableGrader(lambda a, b: a.casefold() == b.casefold())
    assert grader.agree(grader.extract("  Paris "), grader.extract("paris"))
    assert not grader.agree(grader.extract("   "), "paris")


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "yes", None])
def test_callable_grader_rejects_results_outside_0_1(bad: object) -> None:
    grader = CallableGrader(lambda r, ref: bad, kind="broken")  # type: ignore[arg-type,return-value]
    with pytest.raises(DataError, match="grader 'broken' returned"):
        grader.grade("a", "b")


def test_callable_grader_validates_its_arguments() -> None:
    with pytest.raises(ConfigError, match="callable"):
        CallableGrader("not a function")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kind"):
        CallableGrader(lambda r, ref: 1.0, kind=" ")


# -- judge --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("VERDICT: CORRECT", 1.0),
        ("VERDICT: INCORRECT", 0.0),
        ("verdict - **correct**", 1.0),
        ("Verdict: yes", 1.0),
        ("The numbers differ.\nVERDICT: INCORRECT", 0.0),
        ("VERDICT: INCORRECT ... on reflection they match. VERDICT: CORRECT", 1.0),
        ("<think>Maybe VERDICT: INCORRECT</think>\nVERDICT: CORRECT", 1.0),
        ("<think>it looks VERDICT: CORRECT</think> The answer is not correct.", 0.0),
        ("The answer is correct.", 1.0),
        ("The answer is incorrect.", 0.0),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_parse_verdict(reply: str, verdict: float | None) -> None:
    assert parse_verdict(reply) == verdict


def test_judge_prompt_holds_question_reference_and_response() -> None:
    prompts: list[str] = []

    def judge(prompt: str) -> str:
        prompts.append(prompt)
        return "VERDICT: CORRECT"

    grader = JudgeGrader(judge)
    assert grader.grade("Paris, of course", "Paris", question="Capital of France?") == 1.0
    (prompt,) = prompts
    assert "Capital of France?" in prompt and "<reference>\nParis\n</reference>" in prompt
    assert "Paris, of course" in prompt and "VERDICT: CORRECT or VERDICT: INCORRECT" in prompt
    assert grader.kind == "judge"


def test_judge_retries_then_raises_without_a_verdict() -> None:
    replies = iter(["hmm", "VERDICT: INCORRECT"])
    assert JudgeGrader(lambda p: next(replies), retries=1).grade("x", "y") == 0.0
    calls: list[str] = []

    def mute(prompt: str) -> str:
        calls.append(prompt)
        return "no idea"

    with pytest.raises(DataError, match="no verdict in 2 replies"):
        JudgeGrader(mute, retries=1).grade("x", "y")
    assert len(calls) == 2


def test_judge_does_not_ask_about_a_blank_response_and_checks_types() -> None:
    def never(prompt: str) -> str:
        raise AssertionError("the judge was asked")

    assert JudgeGrader(never).grade("   ", "Paris") == 0.0
    with pytest.raises(DataError, match="not the reply text"):
        JudgeGrader(lambda p: 1).grade("x", "y")  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError):
        JudgeGrader(lambda p: "", retries=-1)


def test_judge_shows_the_end_of_a_long_response_and_agrees_via_the_judge() -> None:
    seen: list[str] = []

    def judge(prompt: str) -> str:
        seen.append(prompt)
        return "VERDICT: CORRECT" if "42" in prompt.split("<answer>")[1] else "VERDICT: INCORRECT"

    grader = JudgeGrader(judge, max_response_chars=200)
    assert grader.grade("x" * 10_000 + " final: 42", "42") == 1.0
    assert len(seen[0]) < 2_000
    assert grader.agree("forty-two", "42") is False
    assert grader.agree("same", "same") is True  # equal answers need no call
    assert len(seen) == 2


# -- pathological inputs --------------------------------------------------------------------------------------

MB = 1_000_000
PATHOLOGICAL = {
    "spaces": " " * MB,
    "open braces": "{" * MB,
    "brace pairs": "{}" * (MB // 2),
    "nested objects": '{"a":' * (MB // 5),
    "digits": "1" * MB,
    "digit dots": "1." * (MB // 2),
    "answer keys": '"answer": "' * (MB // 11),
    "answer then spaces": '"answer"' + " " * MB,
    "open boxes": "\\boxed{" * (MB // 7),
    "parenthesised letters": "(A)" * (MB // 3),
    "think tags": "<think>" * (MB // 7),
    "verdicts": "verdict " * (MB // 8),
    "long fraction": "1" * MB + "/",
    "long json answer": '{"answer": "' + "x" * MB + '"}',
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_a_megabyte_response_is_graded_fast(name: str) -> None:
    text = PATHOLOGICAL[name]
    started = time.perf_counter()
    for grader, reference in ((CHOICE, "A"), (NUMBER, "1"), (EXACT, "'x'")):
        grader.extract(text)
        grader.grade(text, reference)
    parse_verdict(text)
    # Catastrophic backtracking takes minutes here; the linear scans take milliseconds.
    assert time.perf_counter() - started < 2.0


def test_final_answers_are_read_from_the_end_of_a_huge_response() -> None:
    text = "(B) " + "filler " * (MAX_SCAN_CHARS // 7 + 10) + 'so {"answer": "7"}'
    assert CHOICE.extract(text) is None  # the early (B) lies outside the scanned tail; no leading letter
    assert NUMBER.extract(text) == "7"
