"""The SCOPE prompt, as the model was trained on, and the parser for its answers.

The chain-of-thought template reproduces ``build_scope_prompt`` of the authors' inference script
(``scripts/scope_inference.py``, "SCOPE-RL-data-v3 format"): a ``### Task`` paragraph, ``### Target Model``,
``k`` examples of the *target model's* record on similar anchors as
``Question: ...`` / ``Performance: {len: N, correct: yes|no}``, ``### Target Question``, the requirements and
the strict output format ``Analysis: ...`` / ``Predicted Performance: {len: <int>, correct: <yes/no>}``.
The text is sent as the single user turn of a chat (the server applies Qwen3's chat template, as the
authors do by hand).

User text (the target question and the anchor questions) is shown as it is, except that a line of it that
could pass for one of the prompt's own markers (a ``###`` section heading such as ``### Target Question``,
``Example N:``, ``Question:``, ``Performance:``, ``Analysis:``, ``Predicted Performance``; in any case, after
blanks or markdown) starts with a backslash: a query cannot add examples, sections or a prediction.

The parser reads only the *last line* of the answer, where the format puts ``Predicted Performance``
(the authors' parser takes the first ``len:`` anywhere, which an anchor record quoted in the analysis
hijacks). Anything the model wrote after its prediction, and a final line that repeats a prediction
written in the user text, make the sample unparsed: that line may be an echo of the prompt.
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
    "quote_user_text",
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


# Line breaks as str.splitlines knows them: a tokenizer may show any of them to the model as a new line.
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BLANKS = " \t\u00a0\u200b\u200c\u200d\u2060\ufeff"
_SECTIONS = (
    r"task|target[ \t]+model|target[ \t]+question|prediction[ \t]+requirements|output(?:[ \t]+format)?"
    r"|important[ \t]+notes"
)
_LABELS = r"example[ \t]*\d+|question|performance|predicted[ \t*_]+performance|analysis"
# A line opening with one of the prompt's markers, as the model would read it.
_FORGED_LINE = re.compile(
    rf"(?:^|(?<=[{_BREAKS}]))(?=[{_BLANKS}>*_`\-]*"
    rf"(?:#+[{_BLANKS}*_]*(?:{_SECTIONS})\b|(?:{_LABELS})[{_BLANKS}*_]*(?::|：|\{{|[{_BREAKS}]|\Z)))",
    re.IGNORECASE,
)


def quote_user_text(text: str) -> str:
    """``text`` as the prompt shows it: each line that could pass for a marker of the prompt gets a leading
    backslash; everything else is left byte for byte."""
    return _FORGED_LINE.sub(r"\\", text)


def build_prompt(
    template: PromptTemplate,
    *,
    target_question: str,
    target_model: str,
    examples: Sequence[AnchorExample],
) -> str:
    """Render the prompt for one (query, target model) pair.

    The questions go through :func:`quote_user_text`. The task line states the number of examples actually
    shown (the authors' script states its configured ``k`` even when fewer anchors were found).
    """
    rendered = "".join(
        template.example.format(
            index=i,
            question=quote_user_text(ex.question),
            length=int(ex.output_tokens),
            correct="yes" if ex.correct else "no",
        )
        for i, ex in enumerate(examples, 1)
    )
    return template.text.format(
        n_anchors=len(examples),
        target_model=target_model,
        examples=rendered,
        target_question=quote_user_text(target_question),
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


# A label, not prose: "Predicted Performance" followed by a colon, the opening brace or the end of the line.
_OWN_LABEL = re.compile(
    r"[ \t#>*_\-]*predicted[ \t*_]+performance[ \t*_#]*(?::|：|(?=\{)|(?=[ \t*_#]*\Z))", re.IGNORECASE
)
# A field line under a label that stood alone on the line above it (``### Predicted Performance``).
_FIELDS_LINE = re.compile(r"[ \t*_`\[(]*(?:\{|len|correct)", re.IGNORECASE)
# What user text could call a prediction: the words in any case or layout.
_QUOTED_LABEL = re.compile(r"predicted[\W_]*performance", re.IGNORECASE)
_ANALYSIS_LABEL = re.compile(r"(?im)^[\s#>*_\-]*analysis[\s*_]*(?::|：)[\s*_]*")
_LEN_FIELD = re.compile(r"\blen(?:gth)?\s*[:=]\s*[\[(\"']?\s*(?:~|≈|about\s+)?\s*(\d[\d,]*)", re.IGNORECASE)
_CORRECT_FIELD = re.compile(r"\bcorrect(?:ness)?\s*[:=]\s*[\[(\"']?\s*(yes|no|true|false)\b", re.IGNORECASE)
_MARKDOWN = re.compile(r"[*_`]")
_LINE_BREAK = re.compile(f"[{_BREAKS}]")
_TRAILING_MARKUP = "*_`#>-"
_TAIL_CHARS = 300
_UNPARSED = ParsedSample(correct=None, length=None, analysis=None)


def _read_fields(tail: str) -> tuple[bool | None, int | None]:
    tail = tail[:_TAIL_CHARS]
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


def _line_start(text: str) -> int:
    """Where the last line of ``text`` starts."""
    starts = [m.end() for m in _LINE_BREAK.finditer(text)]
    return starts[-1] if starts else 0


def _strip_end(text: str) -> str:
    """``text`` without trailing blanks and markup-only lines (a closing fence, ``**``)."""
    while True:
        stripped = text.rstrip().rstrip(_TRAILING_MARKUP)
        if stripped == text:
            return text
        text = stripped


def _forged(quoted: Sequence[str]) -> set[tuple[bool | None, int | None]]:
    """The predictions written in user text, as (verdict, length) pairs."""
    found = set()
    for text in quoted:
        for m in _QUOTED_LABEL.finditer(text):
            fields = _read_fields(text[m.end() :])
            if fields != (None, None):
                found.add(fields)
    return found


def parse_output(text: str, *, quoted: Sequence[str] = ()) -> ParsedSample:
    """Parse one SCOPE answer from its last line, ``Predicted Performance: {len: <int>, correct: <yes/no>}``.

    Tolerates markdown around the label and fields (``**Predicted Performance:**``, ``*len*``), a label
    alone on the line above the fields (``### Predicted Performance``), brackets (``correct: [yes]``),
    thousands separators, and trailing blank or markup-only lines. Nothing else may follow the prediction:
    a label elsewhere (an anchor record quoted in the analysis, a line echoed from the prompt, a draft) is
    never read. A last line whose fields equal a prediction written in ``quoted`` (the query and anchor
    questions shown, in any case or markdown) is taken for an echo and not read either. Missing fields
    come back as ``None``.
    """
    body = _strip_end(text)
    start = _line_start(body)
    last = body[start:]
    label = _OWN_LABEL.match(last)
    if label is not None:
        fields, head = _read_fields(last[label.end() :]), body[:start]
    else:
        above = _strip_end(body[:start])
        above_start = _line_start(above)
        label_line = above[above_start:]
        label = _OWN_LABEL.match(label_line)
        if label is None or label_line[label.end() :].strip(" \t*_#:：") or not _FIELDS_LINE.match(last):
            return _UNPARSED
        fields, head = _read_fields(last), above[:above_start]
    if fields == (None, None) or fields in _forged(quoted):
        return _UNPARSED
    correct, length = fields
    return ParsedSample(correct=correct, length=length, analysis=_analysis(head))


def _analysis(head: str) -> str | None:
    found = list(_ANALYSIS_LABEL.finditer(head))
    body = head[found[-1].end() :] if found else head
    body = body.strip().lstrip("*_ \t").rstrip("#*_ \t\r\n")
    return body or None
