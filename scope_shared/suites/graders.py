"""Graders: compare a model's free-text response with a reference answer.

A :class:`Grader` has three jobs, kept apart so that profiling and cascades can use them separately:

- :meth:`Grader.extract` reads the final answer out of a raw response and normalises it (``None`` when there
  is none);
- :meth:`Grader.agree` says whether two extracted answers are the same answer (numbers compare as floats);
- :meth:`Grader.grade` scores a response against a reference in [0, 1].

The built-in kinds follow the rules the datasets in ``../shared/data`` were graded with (their README,
"Gold answers and recorded responses"):

- ``choice``: the response's last ``(X)``, else the option letter it starts with (``B``, ``B)``, ``B. ...``);
- ``number``: the response's JSON ``"answer"``, else its last ``\\boxed{...}``, else its last number; the first
  number of each side is compared as a float after dropping ``$`` and ``,`` (ZeroEval's rule);
- ``exact``: CRUXEval-O; the JSON ``"answer"`` with outer quotes stripped and newlines escaped must equal the
  reference (a Python repr) with outer quotes stripped.

The answers are read by :mod:`scope_shared.suites.extract` (linear in a response's length, reading at most
:data:`~scope_shared.suites.extract.MAX_SCAN_CHARS` of it). :class:`~scope_shared.suites.judges.CallableGrader`
wraps a ``(response, reference) -> float | bool`` function and :class:`~scope_shared.suites.judges.JudgeGrader`
asks an LLM (:mod:`scope_shared.suites.judges`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType

from scope_shared.errors import ConfigError, DataError
from scope_shared.suites.extract import first_number, json_answer, last_boxed, last_number, strip_outer_quotes, tail

__all__ = ["GRADERS", "ChoiceGrader", "ExactGrader", "Grader", "NumberGrader", "grader_named"]

_OPTION_IN_PARENS = re.compile(r"\(([A-Z])\)")


class Grader(ABC):
    """Compares free-text responses with reference answers; see the module docstring for the kinds.

    Subclasses implement :meth:`extract` and :meth:`reference_answer`; :meth:`agree` defaults to string
    equality and :meth:`grade` to ``1.0`` when the extracted answer agrees with the reference's, else ``0.0``.
    """

    #: The grader's kind, as written in a suite's ``grader`` column.
    kind: str = ""

    @abstractmethod
    def extract(self, response: str) -> str | None:
        """The normalised final answer of a raw response; ``None`` when it is empty or has no answer."""

    @abstractmethod
    def reference_answer(self, reference: str) -> str | None:
        """The normalised form of a reference answer; ``None`` when this grader cannot read it."""

    def check_reference(self, reference: str) -> str:
        """The normalised reference; raises :class:`DataError` when this grader cannot grade against it."""
        answer = self.reference_answer(reference)
        if answer is None:
            msg = f"reference {reference[:80]!r} cannot be graded by the {self.kind!r} grader"
            raise DataError(msg)
        return answer

    def agree(self, answer_a: str | None, answer_b: str | None) -> bool:
        """Whether two extracted answers are the same answer; ``False`` when either is ``None``."""
        return answer_a is not None and answer_b is not None and answer_a == answer_b

    def grade(self, response: str, reference: str, *, question: str | None = None) -> float:
        """``1.0`` when the response's answer agrees with the reference's, else ``0.0``.

        Args:
            response: the model's raw output.
            reference: the gold answer, in the form this grader's kind expects.
            question: the question asked; the rule-based graders ignore it, a judge shows it to the LLM.

        Raises:
            DataError: the reference cannot be read by this grader.
        """
        expected = self.check_reference(reference)
        return 1.0 if self.agree(self.extract(response), expected) else 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"


class ChoiceGrader(Grader):
    """Multiple choice: the response's last ``(X)``, else the option letter it starts with.

    A leading letter counts when nothing but punctuation or space follows it (``B``, ``B)``, ``B. text``,
    ``B: text``); ``Because ...`` does not. Letters are upper case, from ``letters``.

    Args:
        letters: the option letters (default ``A``-``E``).
    """

    kind = "choice"

    def __init__(self, *, letters: str = "ABCDE") -> None:
        if not letters or not all("A" <= c <= "Z" for c in letters) or len(set(letters)) != len(letters):
            msg = f"letters must be distinct upper-case letters A-Z, got {letters!r}"
            raise ConfigError(msg)
        self._letters = frozenset(letters)

    def extract(self, response: str) -> str | None:
        last = None
        for found in _OPTION_IN_PARENS.finditer(tail(response)):
            if found.group(1) in self._letters:
                last = found.group(1)
        if last is not None:
            return last
        head = response.lstrip()[:2]
        if head and head[0] in self._letters and (len(head) == 1 or not head[1].isalnum()):
            return head[0]
        return None

    def reference_answer(self, reference: str) -> str | None:
        letter = reference.strip().strip("()").upper()
        return letter if len(letter) == 1 and letter in self._letters else None


class NumberGrader(Grader):
    """A numeric final answer (GSM8K, MATH): JSON ``"answer"``, else last ``\\boxed{}``, else last number.

    The extracted answer is the first number of that text after dropping ``$`` and ``,``, written canonically
    (``"10800"``, ``"-2.5"``); two answers agree when they are equal as floats.
    """

    kind = "number"

    def extract(self, response: str) -> str | None:
        text = tail(response)
        answer = json_answer(text)
        if answer is not None:
            return first_number(answer)
        boxed = last_boxed(text)
        if boxed is not None:
            return first_number(boxed)
        return last_number(text)

    def reference_answer(self, reference: str) -> str | None:
        return first_number(reference)

    def agree(self, answer_a: str | None, answer_b: str | None) -> bool:
        if answer_a is None or answer_b is None:
            return False
        try:
            return float(answer_a) == float(answer_b)
        except ValueError:
            return False


class ExactGrader(Grader):
    """CRUXEval-O: the JSON ``"answer"``, outer quotes stripped and newlines escaped, equals the reference.

    The reference is the expected output's Python repr; its outer quotes are stripped too, so ``'abc'`` and
    ``abc`` agree (ZeroEval's rule). A response without a JSON answer has no answer.
    """

    kind = "exact"

    def extract(self, response: str) -> str | None:
        answer = json_answer(response)
        if answer is None:
            return None
        return strip_outer_quotes(answer).replace("\n", "\\n")

    def reference_answer(self, reference: str) -> str | None:
        return strip_outer_quotes(reference)


#: The built-in rule-based graders by kind.
GRADERS: Mapping[str, Grader] = MappingProxyType(
    {"choice": ChoiceGrader(), "exact": ExactGrader(), "number": NumberGrader()}
)


def grader_named(kind: str, *, extra: Mapping[str, Grader] | None = None) -> Grader:
    """The grader of a kind: a built-in one (``choice``, ``number``, ``exact``) or one of ``extra``.

    Raises:
        ConfigError: the kind is unknown; the message names the known kinds.
    """
    known = {**GRADERS, **(extra or {})}
    try:
        return known[kind]
    except KeyError:
        msg = f"unknown grader kind {kind!r}; known: {', '.join(sorted(known))}"
        raise ConfigError(msg) from None
