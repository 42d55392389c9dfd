"""Answers from recorded outcomes: what the adapters' replay models share, for offline runs and evaluation.

A :class:`Replay` plays one model from its recorded outcomes: it finds the recorded question a prompt is
about, answers with a text that says how the recorded answer was graded, and reports the recorded token
counts (estimated from the prompt's length when none were recorded). A router over replays spends exactly
what the recorded models spent, so an accuracy/cost replay needs no API key and no network.
:func:`replay_grader` grades a replayed answer with its recorded grade. LangChain's ``ReplayChatModel`` and
LlamaIndex's ``ReplayLLM`` wrap a :class:`Replay` in their framework's model class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from scope_shared.errors import ConfigError, ReplayMissError
from scope_shared.feedback import Grader
from scope_shared.types import Outcome, estimate_tokens

__all__ = ["Replay", "answer_text", "replay_grader"]


def answer_text(outcome: Outcome) -> str:
    """The text a replay answers with: the model, the question's id and how its recorded answer was graded."""
    what = outcome.query_id or "this question"
    verdict = "correct" if outcome.correct >= 0.5 else "incorrect"
    return f"[{outcome.model}] replayed answer to {what}: recorded as {verdict} ({outcome.correct:g})."


class Replay:
    """One model's recorded outcomes, looked up by question.

    Args:
        model: the model to replay (as in the price table and the engine's cards).
        outcomes: recorded outcomes (other models' are ignored), or a mapping ``{question: Outcome}``.
    """

    def __init__(self, *, model: str, outcomes: Iterable[Outcome] | Mapping[str, Outcome]) -> None:
        if not isinstance(model, str) or not model.strip():
            msg = f"model is empty or not a name ({model!r}); pass the name of the model to replay"
            raise ConfigError(msg)
        rows = outcomes.values() if isinstance(outcomes, Mapping) else outcomes
        table = {o.query: o for o in rows if isinstance(o, Outcome) and o.model == model}
        if not table:
            msg = f"no recorded outcome of {model!r} among the outcomes given; pass that model's Outcomes"
            raise ConfigError(msg)
        self.model = model
        self.outcomes: Mapping[str, Outcome] = table

    def __repr__(self) -> str:
        return f"Replay(model={self.model!r}, questions={len(self.outcomes)})"

    @property
    def queries(self) -> list[str]:
        """The recorded questions this replay can answer."""
        return list(self.outcomes)

    def lookup(self, prompt: str) -> Outcome:
        """The recorded outcome ``prompt`` is about: its exact question, else the longest recorded question
        quoted in it (as in a RAG template); :class:`ReplayMissError` if none."""
        hit = self.outcomes.get(prompt)
        if hit is None:
            hit = self.outcomes.get(prompt.strip())
        if hit is None:
            inside = [q for q in self.outcomes if q.strip() and q.strip() in prompt]
            if inside:
                hit = self.outcomes[max(inside, key=len)]
        if hit is None:
            head = prompt[:80].replace("\n", " ")
            msg = (
                f"{self.model} has no recorded outcome for this prompt ({head!r}...); a replay answers only the "
                "questions it was built with (the exact text, or quoted in the prompt)"
            )
            raise ReplayMissError(msg)
        return hit

    def answer(self, outcome: Outcome) -> str:
        """The answer text for ``outcome`` (see :func:`answer_text`)."""
        return answer_text(outcome)

    def usage(self, outcome: Outcome, prompt: str) -> tuple[int, int]:
        """Input and output tokens: the recorded ones; input estimated from ``prompt``'s length when none
        were recorded (``DEFAULT_TOKENS_PER_CHAR``), output 0."""
        inp = outcome.input_tokens if outcome.input_tokens is not None else int(estimate_tokens(prompt))
        return inp, outcome.output_tokens or 0


def replay_grader(outcomes: Iterable[Outcome]) -> Grader:
    """A :data:`~scope_shared.feedback.Grader` that grades a replayed answer with its recorded grade.

    ``grader(question, answer)`` is the recorded correctness of the outcome whose replay answered
    ``answer`` to ``question`` (:func:`answer_text`); None (wait for feedback) for any other answer.
    """
    table: Mapping[tuple[str, str], float] = {(o.query, answer_text(o)): o.correct for o in outcomes}

    def grade(question: str, answer: str) -> float | None:
        return table.get((question, answer.strip()))

    return grade
