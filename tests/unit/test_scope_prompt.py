"""The SCOPE prompt text (pinned to the authors' training format) and the final-line parser."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scope_shared.estimators.scope.prompt import (
    SCOPE_COT,
    SCOPE_NOCOT,
    AnchorExample,
    ParsedSample,
    build_prompt,
    parse_output,
)

# Rendered by the authors' build_scope_prompt (scripts/scope_inference.py) for the same inputs, with
# num_anchor_examples=2; any change to the template text breaks this test.
EXPECTED_COT = """### Task
You are a performance prediction expert. Given a target question, 2 anchor questions with their \
performance results, and a target AI model, predict how the model will perform on the target question, \
specifically the output length and correctness after related reasoning analysis.

### Target Model
openai/gpt-4o-mini

Example 1:
Question: What is 3x = 9?
Performance: {len: 212, correct: yes}

Example 2:
Question: Integrate x^2 {dx}.
Performance: {len: 1030, correct: no}

### Target Question
Solve 2x + 5 = 13.

### Prediction Requirements
1. **Analyze Anchor Patterns**: Examine how the model performed on similar questions
2. **Assess Question Difficulty**: Consider the complexity and type of the target question
3. **Compare with Anchors**: Find patterns between anchor performance and target characteristics
4. **Predict Performance**: Based on your analysis, predict output length and correctness

### Output Format (STRICT)
Analysis: [Your comprehensive analysis covering anchor patterns, target question characteristics, and \
reasoning. Keep under 800 words.]
Predicted Performance: {len: [integer], correct: [yes/no]}

### Important Notes
- Provide thorough analysis based on anchor patterns
- Use anchor performance as reference points
- Consider target question characteristics carefully
- Do NOT add extra symbols like ** or __ around "Analysis:" or "Predicted Performance:"
- Keep the format exactly as shown above

### Output:"""

EXAMPLES = [
    AnchorExample(question="What is 3x = 9?", output_tokens=212, correct=True),
    AnchorExample(question="Integrate x^2 {dx}.", output_tokens=1030, correct=False),
]


def test_cot_prompt_matches_the_trained_format_exactly() -> None:
    prompt = build_prompt(
        SCOPE_COT, target_question="Solve 2x + 5 = 13.", target_model="openai/gpt-4o-mini", examples=EXAMPLES
    )
    assert prompt == EXPECTED_COT


def test_template_is_versioned() -> None:
    assert SCOPE_COT.version == "scope-rl-data-v3"
    assert SCOPE_NOCOT.version != SCOPE_COT.version
    assert SCOPE_COT.expects_analysis and not SCOPE_NOCOT.expects_analysis


def test_nocot_prompt_asks_for_the_prediction_only() -> None:
    prompt = build_prompt(SCOPE_NOCOT, target_question="Q?", target_model="m", examples=EXAMPLES)
    assert "Analysis:" not in prompt
    assert "Performance: {len: 1030, correct: no}" in prompt
    assert prompt.rstrip().endswith("### Output:")
    assert "Predicted Performance: {len: [integer], correct: [yes/no]}" in prompt


def test_task_line_counts_the_examples_shown() -> None:
    prompt = build_prompt(SCOPE_COT, target_question="Q?", target_model="m", examples=EXAMPLES[:1])
    assert "Given a target question, 1 anchor questions" in prompt
    assert "Example 2:" not in prompt


def test_clean_answer() -> None:
    out = "Analysis: The model solved similar algebra.\nPredicted Performance: {len: 350, correct: yes}"
    assert parse_output(out) == ParsedSample(
        correct=True, length=350, analysis="The model solved similar algebra."
    )


def test_quoted_anchor_in_the_analysis_does_not_hijack_the_prediction() -> None:
    out = (
        "Analysis: Example 2 is the closest: Performance: {len: 812, correct: no}. Example 1 "
        "(len: 90, correct: yes) is easier. The target needs several steps.\n"
        "Predicted Performance: {len: 420, correct: yes}"
    )
    parsed = parse_output(out)
    assert (parsed.correct, parsed.length) == (True, 420)
    assert parsed.analysis is not None and parsed.analysis.startswith("Example 2 is the closest")


def test_markdown_noise() -> None:
    out = (
        "**Analysis:** The anchors are *mostly* correct.\n\n"
        "**Predicted Performance:** {**len**: `1,240`, correct: **no**}\n"
    )
    parsed = parse_output(out)
    assert (parsed.correct, parsed.length) == (False, 1240)
    assert parsed.analysis == "The anchors are *mostly* correct."


def test_heading_style_and_brackets() -> None:
    out = "## Analysis:\nhard one\n\n### Predicted Performance\n{len: [700], correct: [No]}"
    parsed = parse_output(out)
    assert (parsed.correct, parsed.length, parsed.analysis) == (False, 700, "hard one")


def test_only_the_last_line_is_read() -> None:
    out = (
        "Analysis: a first draft said Predicted Performance: {len: 10, correct: no} but that was wrong.\n"
        "Predicted Performance: {len: 600, correct: yes}\n\n"
    )
    parsed = parse_output(out)
    assert (parsed.correct, parsed.length) == (True, 600)
    # The format ends with the prediction; a line after it may be an echo of the prompt, so nothing is read.
    noted = out + "Note: this predicted performance is uncertain; correct: no would also be plausible."
    assert parse_output(noted).parsed is False


def test_missing_length_keeps_the_verdict() -> None:
    parsed = parse_output("Analysis: x\nPredicted Performance: {correct: no}")
    assert (parsed.correct, parsed.length, parsed.parsed) == (False, None, True)


def test_missing_verdict_is_unparsed_but_keeps_the_length() -> None:
    parsed = parse_output("Analysis: x\nPredicted Performance: {len: 512}")
    assert (parsed.correct, parsed.length, parsed.parsed) == (None, 512, False)


def test_template_placeholder_copied_verbatim_gives_no_length() -> None:
    parsed = parse_output("Predicted Performance: {len: [integer], correct: yes}")
    assert (parsed.correct, parsed.length) == (True, None)


def test_nocot_answer() -> None:
    assert parse_output("Predicted Performance: {len: 88, correct: no}") == ParsedSample(
        correct=False, length=88, analysis=None
    )


def test_anchor_record_without_a_prediction_label_is_not_a_prediction() -> None:
    # Truncated chain of thought: only anchors were quoted, no prediction was made.
    out = "Analysis: Example 1 shows Performance: {len: 812, correct: no}, and Example 2"
    assert parse_output(out) == ParsedSample(correct=None, length=None, analysis=None)


def test_garbage() -> None:
    for out in ["", "lorem ipsum", "Predicted Performance:", "}{len: yes correct: 12", "\x00\xff" * 20]:
        assert parse_output(out).parsed is False


def test_absurd_length_is_not_trusted() -> None:
    parsed = parse_output("Predicted Performance: {len: 99999999999, correct: yes}")
    assert (parsed.correct, parsed.length) == (True, None)


@given(st.text(max_size=400))
def test_parser_never_raises(text: str) -> None:
    parse_output(text)


_analysis_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=200
).filter(lambda s: "predicted" not in s.lower())


@given(
    analysis=_analysis_text,
    quoted_len=st.integers(0, 5000),
    quoted_ok=st.booleans(),
    length=st.integers(0, 100_000),
    ok=st.booleans(),
)
def test_final_line_always_wins_over_quoted_anchors(
    analysis: str, quoted_len: int, quoted_ok: bool, length: int, ok: bool
) -> None:
    quoted = f"{{len: {quoted_len}, correct: {'yes' if quoted_ok else 'no'}}}"
    out = (
        f"Analysis: {analysis} Example 1 Performance: {quoted}\n"
        f"Predicted Performance: {{len: {length}, correct: {'yes' if ok else 'no'}}}"
    )
    parsed = parse_output(out)
    assert (parsed.correct, parsed.length) == (ok, length)
