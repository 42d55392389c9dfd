"""A dataset's recorded responses and gold references (``responses.csv.gz``, ``references.csv.gz``; see
``../shared/data/README.md``): each model's real answer text, read by the query's grader."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scope_shared.data import read_rows, reading
from scope_shared.suites.graders import Grader, grader_named
from scope_shared.types import NO_ANSWER, Outcome

__all__ = ["RecordedAnswers", "Reference", "with_answers"]

@dataclass(frozen=True)
class Reference:
    """A query's gold answer and how to grade a response against it."""

    task: str
    reference: str
    kind: str


class RecordedAnswers:
    """Recorded raw responses and gold references of a dataset (see ``../shared/data/README.md``).

    Args:
        responses: (query_id, model) -> the model's raw response.
        references: query_id -> its reference.
        graders: graders of kinds beyond the built-in ones.
    """

    def __init__(
        self,
        *,
        responses: Mapping[tuple[str, str], str],
        references: Mapping[str, Reference],
        graders: Mapping[str, Grader] | None = None,
    ) -> None:
        self.responses = dict(responses)
        self.references = dict(references)
        self.graders = dict(graders or {})

    def __repr__(self) -> str:
        return f"RecordedAnswers(responses={len(self.responses)}, references={len(self.references)})"

    @classmethod
    def load(
        cls, responses: str | Path, references: str | Path, *, graders: Mapping[str, Grader] | None = None
    ) -> RecordedAnswers:
        """Read ``responses.csv.gz`` (query_id, model, response) and ``references.csv.gz`` (query_id, task,
        reference, grader); every value is text, ``NA`` and empty strings included."""
        resp: dict[tuple[str, str], str] = {}
        with reading(Path(responses)):
            for _, row in read_rows(Path(responses), required=("query_id", "model", "response")):
                resp[(row["query_id"], row["model"])] = row["response"]
        refs: dict[str, Reference] = {}
        with reading(Path(references)):
            for _, row in read_rows(Path(references), required=("query_id", "task", "reference", "grader")):
                refs[row["query_id"]] = Reference(task=row["task"], reference=row["reference"], kind=row["grader"])
        return cls(responses=resp, references=refs, graders=graders)

    def grader(self, kind: str) -> Grader:
        return grader_named(kind, extra=self.graders)

    def kind_of(self, outcome: Outcome) -> str | None:
        """The grader kind of an outcome's query (None: it has no reference)."""
        ref = self.references.get(outcome.query_id) if outcome.query_id is not None else None
        return ref.kind if ref is not None else None

    def answer(self, query_id: str | None, model: str) -> str | None:
        """The extracted answer of a recorded response (:data:`NO_ANSWER` when unreadable; None: no record)."""
        if query_id is None:
            return None
        ref = self.references.get(query_id)
        text = self.responses.get((query_id, model))
        if ref is None or text is None:
            return None
        found = self.grader(ref.kind).extract(text) if text.strip() else None
        return NO_ANSWER if found is None else found


def with_answers(rows: Sequence[Outcome], recorded: RecordedAnswers) -> list[Outcome]:
    """``rows`` with the extracted answer of their recorded response (rows without one are unchanged)."""
    out = []
    for o in rows:
        a = recorded.answer(o.query_id, o.model)
        out.append(o if a is None else o.model_copy(update={"answer": a}))
    return out
