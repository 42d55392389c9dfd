"""Reading a final answer out of a free-text response, as the graders of the bundled benchmarks read it.

ZeroEval's rules (``../shared/data/README.md``, "Gold answers and recorded responses"): a JSON ``"answer"``
(:func:`json_answer`), the last ``\\boxed{...}``, the first or last number of a text written canonically.
Every extraction is linear in the response's length and looks at no more than :data:`MAX_SCAN_CHARS` of it (the
start for a leading letter, the end for everything else), so a pathological response costs milliseconds.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from typing import Any

__all__ = [
    "MAX_SCAN_CHARS",
    "last_boxed",
    "first_number",
    "json_answer",
    "last_match",
    "last_number",
    "strip_outer_quotes",
    "tail",
]

#: Characters of a response an extraction reads at most: final answers are read from the last this-many
#: characters, a leading option letter from the first ones. Recorded responses are under 20,000 characters.
MAX_SCAN_CHARS = 100_000


_DECODER = json.JSONDecoder(strict=False)  # strict=False: models put raw newlines inside JSON strings
_ANSWER_QUOTED = re.compile(r'"answer"\s*:\s*"([^"]*)"')
_ANSWER_BARE = re.compile(r'"answer"\s*:\s*([^,\s"][^,\s]*)')
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_BRACE = re.compile(r"[{}]")
_FRACTION = re.compile(r"\(?\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)\s*\)?")


def tail(text: str) -> str:
    """The last :data:`MAX_SCAN_CHARS` characters of ``text``."""
    return text[-MAX_SCAN_CHARS:] if len(text) > MAX_SCAN_CHARS else text


def _first_json_object(text: str) -> Any:
    """The first balanced ``{...}`` of a text, parsed; ``None`` when it does not parse (ZeroEval's reading).

    Braces are counted without regard to strings, as ZeroEval counts them, so a stray brace in the reasoning
    makes the object unreadable and the caller falls back to a pattern.
    """
    depth = 0
    start = -1
    for brace in _BRACE.finditer(text):
        if brace.group() == "{":
            if depth == 0:
                start = brace.start()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                try:
                    return _DECODER.decode(text[start : brace.end()])
                except (ValueError, RecursionError):
                    return None
    return None


def json_answer(response: str) -> str | None:
    """The ``"answer"`` field of a response that answers in JSON, as text; ``None`` when it has none.

    ZeroEval's reading: the first balanced ``{...}`` of the response (of its last :data:`MAX_SCAN_CHARS`
    characters) is parsed; when it holds an ``answer``, that value is the answer, a non-string one written as
    Python writes it (``18``, ``{'a': 1}``). Otherwise the first ``"answer": "..."`` is read by pattern (up to
    the next double quote, escapes and all), else a bare ``"answer": value``.
    """
    text = tail(response)
    obj = _first_json_object(text)
    if isinstance(obj, dict) and "answer" in obj:
        return str(obj["answer"])
    quoted = _ANSWER_QUOTED.search(text)
    if quoted:
        return quoted.group(1)
    bare = _ANSWER_BARE.search(text)
    return bare.group(1) if bare else None


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, braces balanced; ``None`` when there is none or it is open."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth = 0
    begin = start + len("\\boxed{")
    for brace in _BRACE.finditer(text, begin):
        if brace.group() == "{":
            depth += 1
        elif depth == 0:
            return text[begin : brace.start()]
        else:
            depth -= 1
    return None


def _sanitise_number_text(text: str) -> str:
    return text.replace("$", "").replace(",", "")


def _canonical_number(token: str) -> str | None:
    """A number token as a canonical string (``"18"``, ``"-2.5"``); ``None`` when it is not finite."""
    value = float(token)
    if not math.isfinite(value):
        return None
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def first_number(text: str) -> str | None:
    """The first number of an answer; a whole answer ``a/b`` is the fraction's value, as ZeroEval reads it."""
    text = _sanitise_number_text(text)
    fraction = _FRACTION.fullmatch(text.strip())
    if fraction:
        numerator, denominator = float(fraction.group(1)), float(fraction.group(2))
        return _canonical_number(repr(numerator / denominator)) if denominator else None
    found = _NUMBER.search(text)
    return _canonical_number(found.group()) if found else None


def last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None


def last_number(text: str) -> str | None:
    last = last_match(_NUMBER, _sanitise_number_text(text))
    return _canonical_number(last.group()) if last is not None else None


def strip_outer_quotes(text: str) -> str:
    """Leading and trailing quotes removed (``"'abc'"`` -> ``abc``), as ZeroEval does."""
    return text.strip("'\"")
