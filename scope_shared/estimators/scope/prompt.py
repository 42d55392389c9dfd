"""The SCOPE prompt, exactly as the model was trained on, and the parser for its answers.

The chain-of-thought template reproduces ``build_scope_prompt`` of the authors' inference script
(``scripts/scope_inference.py``, "SCOPE-RL-data-v3 format"): a ``### Task`` paragraph, ``### Target Model``,
``k`` examples of the *target model's* record on similar anchors as
``Question: ...`` / ``Performance: {len: N, correct: yes|no}``, ``### Target Question``, the requirements and
the strict output format ``Analysis: ...`` / ``Predicted Performance: {len: <int>, correct: <yes/no>}``.
The text is sent as the single user turn of a chat (the server applies Qwen3's chat template, as the
authors do by hand).

The parser reads the *final* ``Predicted Performance`` line. The authors' parser takes the first ``len:``
anywhere in the output, which an anchor quoted in the analysis (``Example 2 ... {len: 812, correct: no}``)
hijacks; here only a field after a ``Predicted Performance`` label counts, and the last such label wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "SCOPE_COT",
    "SCOPE_NOCOT",
    "AnchorExample",
    "ParsedSample",
    "PromptTemplate",
    "build_prompt",
    "parse_output",
]

#: Lengths above this are treated as unparsable rather than trusted.
MAX_PARSED_LENGTH = 1_000_000


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """A versioned SCOPE prompt template.

    Attributes:
        name: short name (``"cot"``, ``"nocot"``), used in logs and cache keys.
        version: changes whenever :attr:`text` or :attr:`example` changes; part of every cache key.
        text: ``str.format`` template with ``{n_anchors}``, ``{target_model}``, ``{examples}`` and
            ``{target_question}``.
        example: ``str.format`` template of one anchor example with ``{index}``, ``{question}``,
            ``{length}`` and ``{correct}``.
        expects_analysis: whether the model writes an ``Analysis:`` before its prediction.
    """

    name: str
    version: str
    text: str
    example: str
    expects_analysis: bool


_EXAMPLE = "Example {index}:\nQuestion: {question}\nPerformance: {{len: {length}, correct: {correct}}}\n\n"

_COT_TEXT = """### Task
You are a performance prediction expert. Given a target question, {n_anchors} anchor questions with \
their performance results, and a target AI model, predict how the model will perform on the target \
question, specifically the output length and correctness after related reasoning analysis.

### Target Model
{target_model}

{examples}### Target Question
{target_question}

### Prediction Requirements
1. **Analyze Anchor Patterns**: Examine how the model performed on similar questions
2. **Assess Question Difficulty**: Consider the complexity and type of the target question
3. **Compare with Anchors**: Find patterns between anchor performance and target characteristics
4. **Predict Performance**: Based on your analysis, predict output length and correctness

### Output Format (STRICT)
Analysis: [Your comprehensive analysis covering anchor patterns, target question characteristics, \
and reasoning. Keep under 800 words.]
Predicted Performance: {{len: [integer], correct: [yes/no]}}

### Important Notes
- Provide thorough analysis based on anchor patterns
- Use anchor performance as reference points
- Consider target question characteristics carefully
- Do NOT add extra symbols like ** or __ around "Analysis:" or "Predicted Performance:"
- Keep the format exactly as shown above

### Output:"""

#: Cooolder/SCOPE (SFT + GRPO, chain of thought), as in the authors' ``build_scope_prompt``.
SCOPE_COT = PromptTemplate(
    name="cot",
    version="scope-rl-data-v3",
    text=_COT_TEXT,
    example=_EXAMPLE,
    expects_analysis=True,
)

_NOCOT_TEXT = """### Task
You are a performance prediction expert. Given a target question, {n_anchors} anchor questions with \
their performance results, and a target AI model, predict how the model will perform on the target \
question, specifically the output length and correctness.

### Target Model
{target_model}

{examples}### Target Question
{target_question}

### Output Format (STRICT)
Predicted Performance: {{len: [integer], correct: [yes/no]}}

### Output:"""

#: For Cooolder/SCOPE_NoCoT (direct prediction). The authors publish no builder for this variant; this is
#: the CoT prompt with the analysis asked for removed, so check it against the model card before relying
#: on it in production. The parser reads both variants' answers.
SCOPE_NOCOT = PromptTemplate(
    name="nocot",
    version="scope-nocot-draft-1",
    text=_NOCOT_TEXT,
    example=_EXAMPLE,
    expects_analysis=False,
)


@dataclass(frozen=True, slots=True)
class AnchorExample:
    """One anchor as shown to SCOPE: its question and the target model's record on it."""

    question: str
    output_tokens: int
    correct: bool


def build_prompt(
    template: PromptTemplate,
    *,
    target_question: str,
    target_model: str,
    examples: Sequence[AnchorExample],
) -> str:
    """Render the prompt for one (query, target model) pair.

    The task line states the number of examples actually shown (the authors' script states its
    configured ``k`` even when fewer anchors were found).
    """
    rendered = "".join(
        template.example.format(
            index=i,
            question=ex.question,
            length=int(ex.output_tokens),
            correct="yes" if ex.correct else "no",
        )
        for i, ex in enumerate(examples, 1)
    )
    return template.text.format(
        n_anchors=len(examples),
        target_model=target_model,
        examples=rendered,
        target_question=target_question,
    )


@dataclass(frozen=True, slots=True)
class ParsedSample:
    """What one sampled answer says; ``None`` where a field could not be read."""

    correct: bool | None
    length: int | None
    analysis: str | None

    @property
    def parsed(self) -> bool:
        """Whether the sample gave a usable correctness verdict (the field routing needs most)."""
        return self.correct is not None


# A label, not prose: "Predicted Performance" followed by a colon, a line break or the opening brace.
_PRED_LABEL = re.compile(r"predicted[ \t*_]+performance[ \t*_#]*(?::|：|\r?\n|(?=\{))", re.IGNORECASE)
_ANALYSIS_LABEL = re.compile(r"(?im)^[\s#>*_\-]*analysis[\s*_]*(?::|：)[\s*_]*")
_LEN_FIELD = re.compile(r"\blen(?:gth)?\s*[:=]\s*[\[(\"']?\s*(?:~|≈|about\s+)?\s*(\d[\d,]*)", re.IGNORECASE)
_CORRECT_FIELD = re.compile(r"\bcorrect(?:ness)?\s*[:=]\s*[\[(\"']?\s*(yes|no|true|false)\b", re.IGNORECASE)
_MARKDOWN = re.compile(r"[*_`]")
_TAIL_CHARS = 300


def _read_fields(tail: str) -> tuple[bool | None, int | None]:
    brace = tail.find("}")
    if brace != -1:
        tail = tail[: brace + 1]
    tail = _MARKDOWN.sub("", tail)
    correct: bool | None = None
    length: int | None = None
    m = _CORRECT_FIELD.search(tail)
    if m:
        correct = m.group(1).lower() in ("yes", "true")
    m = _LEN_FIELD.search(tail)
    if m:
        value = int(m.group(1).replace(",", ""))
        length = value if value <= MAX_PARSED_LENGTH else None
    return correct, length


def parse_output(text: str, *, quoted: Sequence[str] = ()) -> ParsedSample:
    """Parse one SCOPE answer from its final ``Predicted Performance`` line.

    Tolerates markdown around the labels and fields (``**Predicted Performance:**``, ``*len*``), brackets
    (``correct: [yes]``), thousands separators and a trailing note after the prediction. Fields are read
    only after a ``Predicted Performance`` label (followed by a colon, a line break or ``{``; the phrase
    in prose does not count), the last one that carries a field, and never from the analysis, so a
    quoted anchor record cannot stand in for the prediction. Missing fields come back as ``None``.

    Labels that open a line are the model's own and are read first. A label in the middle of a line is
    read only when no line opens with one, and never when it repeats text of ``quoted`` (the prompt's
    query and anchor questions): a question that carries a fake prediction cannot inject it.
    """
    labels = list(_PRED_LABEL.finditer(text))
    own = [m for m in labels if _opens_line(text, m.start())]
    inline = [m for m in labels if m not in own and not _repeats(text, m, quoted)]
    for group in (own, inline):
        for m in reversed(group):
            start = m.end()
            later = [o.start() for o in labels if o.start() > m.start()]
            stop = later[0] if later else len(text)
            correct, length = _read_fields(text[start : min(stop, start + _TAIL_CHARS)])
            if correct is None and length is None:
                continue
            return ParsedSample(correct=correct, length=length, analysis=_analysis(text[: m.start()]))
    return ParsedSample(correct=None, length=None, analysis=None)


_LINE_OPENER = re.compile(r"[\s#>*_\-]*\Z")


def _opens_line(text: str, pos: int) -> bool:
    line_start = text.rfind("\n", 0, pos) + 1
    return _LINE_OPENER.match(text[line_start:pos]) is not None


def _repeats(text: str, label: re.Match[str], quoted: Sequence[str]) -> bool:
    if not quoted:
        return False
    end = text.find("}", label.end(), label.end() + _TAIL_CHARS)
    segment = " ".join(text[label.start() : end + 1 if end != -1 else label.end() + 40].split())
    return any(segment in " ".join(q.split()) for q in quoted)


def _analysis(head: str) -> str | None:
    found = list(_ANALYSIS_LABEL.finditer(head))
    body = head[found[-1].end() :] if found else head
    body = body.strip().lstrip("*_ \t").rstrip("#*_ \t\r\n")
    return body or None
