"""Prompt templates of a profiling run: the text sent for each suite question."""

from __future__ import annotations

import re

from scope_shared.errors import ConfigError
from scope_shared.suites import SuiteQuestion

__all__ = ["TEMPLATE_FIELDS", "check_template", "render"]

#: The placeholders a template may use: the suite's prompt (question and answer-format instruction), or its parts.
TEMPLATE_FIELDS = ("prompt", "query", "instruction")
_FIELD = re.compile(r"\{(prompt|query|instruction)\}")


def render(template: str | None, question: SuiteQuestion) -> str:
    """The text sent for ``question``: its :attr:`~SuiteQuestion.prompt`, or ``template`` with the placeholders
    ``{prompt}``, ``{query}`` and ``{instruction}`` replaced (other braces are left as they are)."""
    if template is None:
        return question.prompt
    values = {"prompt": question.prompt, "query": question.query, "instruction": question.instruction}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def check_template(template: str, *, where: str = "template") -> str:
    """``template`` if it holds a placeholder; :class:`ConfigError` otherwise."""
    if not isinstance(template, str) or not _FIELD.search(template):
        msg = f"{where} has none of the placeholders {{prompt}}, {{query}}, {{instruction}}: {str(template)[:80]!r}"
        raise ConfigError(msg)
    return template
