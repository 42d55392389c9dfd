"""The book of finished calls that both outcome handlers keep: graded now, or waiting for feedback, recorded once.

A routed call that has finished becomes a :class:`FinishedCall`. :meth:`FeedbackBook.finish` grades it with
the :data:`Grader` when there is one: a grade records the outcome through ``engine.record`` at once; no grade
(no grader, or the grader cannot tell, fails or returns something that is not a grade) keeps the call waiting
for :meth:`FeedbackBook.feedback`. Each call is recorded at most once. At most ``max_pending`` calls wait; the
oldest is dropped beyond that, with a warning. The book is thread-safe (the grader and the store write run
outside its lock) and never raises a grader's or the store's error: it logs them and counts them in
``failures``.

The LangChain and LlamaIndex handlers translate their framework's events into :class:`FinishedCall` and
their feedback arguments into call ids; everything after that happens here.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scope_shared.engine import ScopeEngine
from scope_shared.errors import ConfigError
from scope_shared.types import Outcome

__all__ = ["FeedbackBook", "FeedbackCounts", "FinishedCall", "Grader", "check_grade", "reported_tokens"]

logger = logging.getLogger(__name__)

Grader = Callable[[str, str], "float | bool | None"]
"""``grader(question, answer) -> float | bool | None``: the correctness of ``answer`` to ``question``.

A number in [0, 1] or a bool (True = 1.0); None when it cannot tell, and the call then waits for feedback.
``question`` is the text the call was routed on, ``answer`` the chosen model's text. The model is not
passed: a grade is of the answer, whichever model gave it (the outcome is recorded under the model that
answered, and the response's decision names it).
"""

_INPUT_KEYS = ("prompt_tokens", "input_tokens")
_OUTPUT_KEYS = ("completion_tokens", "output_tokens")


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """A routed call that has finished: what its outcome is recorded from.

    Attributes:
        call_id: the call's id in its framework (a LangChain run id, a LlamaIndex call id).
        question: the text the call was routed on (the outcome's query).
        model: the model that answered.
        answer: the answer's text, for the grader.
        input_tokens: prompt tokens the call used (None: not known).
        output_tokens: completion tokens the call used (None: not known).
        parent: the id of the run the call ran under, where the framework nests runs (LangChain), so that
            feedback given on an enclosing run reaches it.
    """

    call_id: str
    question: str
    model: str
    answer: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    parent: str | None = None

    def outcome(self, correct: float) -> Outcome:
        """The outcome to record, graded ``correct``."""
        return Outcome(
            query=self.question,
            model=self.model,
            correct=correct,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
        )


def check_grade(value: Any) -> float:
    """``value`` as a grade in [0, 1] (a bool is 0 or 1); :class:`ConfigError` if it is not one."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or math.isnan(value) or not 0.0 <= value <= 1.0:
        msg = f"correct must be a number in [0, 1], got {value!r}"
        raise ConfigError(msg)
    return float(value)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    if value < 0 or value != int(value):
        return None
    return int(value)


def reported_tokens(source: Any) -> tuple[int | None, int | None]:
    """Prompt and completion tokens a provider's usage record reports (None for a count it lacks).

    ``source`` is a mapping or an object with OpenAI's ``prompt_tokens`` / ``completion_tokens`` or
    Anthropic's ``input_tokens`` / ``output_tokens``; a count that is not a whole number >= 0 is ignored.
    """
    if source is None:
        return None, None
    if not isinstance(source, Mapping):
        source = {k: getattr(source, k, None) for k in (*_INPUT_KEYS, *_OUTPUT_KEYS)}
    inp = next((c for c in (_count(source.get(k)) for k in _INPUT_KEYS) if c is not None), None)
    out = next((c for c in (_count(source.get(k)) for k in _OUTPUT_KEYS) if c is not None), None)
    return inp, out


class FeedbackBook:
    """Finished calls -> graded now or waiting -> feedback -> recorded once through ``engine.record``.

    Args:
        engine: where outcomes are recorded.
        grader: optional :data:`Grader`; without one every call waits for :meth:`feedback`.
        max_pending: calls kept waiting for feedback; the oldest is dropped (and logged) beyond it.
    """

    def __init__(self, *, engine: ScopeEngine, grader: Grader | None = None, max_pending: int = 10_000) -> None:
        if not isinstance(engine, ScopeEngine):
            msg = f"engine must be a ScopeEngine, got {type(engine).__name__}"
            raise ConfigError(msg)
        if grader is not None and not callable(grader):
            msg = f"grader must be callable (question, answer) -> float | bool | None, got {type(grader).__name__}"
            raise ConfigError(msg)
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            msg = f"max_pending must be an int >= 1, got {max_pending!r}"
            raise ConfigError(msg)
        self.engine = engine
        self.grader = grader
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, FinishedCall] = OrderedDict()
        # every call taken, by id, with what became of it: "grading", "pending", "recorded", "unrecorded",
        # "dropped" (bounded: the oldest are forgotten)
        self._seen: OrderedDict[str, str] = OrderedDict()
        self._recorded = 0
        self._failures = 0

    def __repr__(self) -> str:
        return f"FeedbackBook(recorded={self.recorded}, pending={self.pending}, failures={self.failures})"

    @property
    def pending(self) -> int:
        """Calls waiting for feedback."""
        with self._lock:
            return len(self._pending)

    @property
    def recorded(self) -> int:
        """Outcomes recorded."""
        with self._lock:
            return self._recorded

    @property
    def failures(self) -> int:
        """Graders that failed or returned no valid grade, and store writes that failed."""
        with self._lock:
            return self._failures

    def seen(self, call_id: str) -> bool:
        """Whether a call of this id was taken already (waiting, recorded, dropped)."""
        with self._lock:
            return call_id in self._pending or call_id in self._seen

    def waiting(self) -> list[FinishedCall]:
        """The calls waiting for feedback, oldest first (a snapshot)."""
        with self._lock:
            return list(self._pending.values())

    def _mark(self, call_id: str, state: str) -> None:
        self._seen[call_id] = state
        self._seen.move_to_end(call_id)
        while len(self._seen) > 4 * self.max_pending:
            self._seen.popitem(last=False)

    def note_failure(self) -> None:
        """Count a failure of the handler that keeps this book (it logs the failure itself)."""
        with self._lock:
            self._failures += 1

    # -- calls finishing -----------------------------------------------------------------------

    def finish(self, call: FinishedCall) -> bool:
        """Take a finished call: record it if the grader grades it, else keep it for :meth:`feedback`.

        Returns False, doing nothing, for a call taken before (a repeated event).
        """
        with self._lock:
            if call.call_id in self._pending or call.call_id in self._seen:
                return False
            self._mark(call.call_id, "grading")
        grade = self._grade(call)
        if grade is not None:
            self._record(call, grade)
            return True
        with self._lock:
            self._mark(call.call_id, "pending")
            self._pending[call.call_id] = call
            while len(self._pending) > self.max_pending:
                old, dropped = self._pending.popitem(last=False)
                self._mark(old, "dropped")
                logger.warning(
                    "dropped the outcome of call %s (%s): no feedback among the last %d calls (max_pending)",
                    old,
                    dropped.model,
                    self.max_pending,
                )
        return True

    def _grade(self, call: FinishedCall) -> float | None:
        if self.grader is None:
            return None
        try:
            grade = self.grader(call.question, call.answer)
        except Exception:
            self.note_failure()
            logger.warning(
                "grader failed on call %s (%s); it waits for feedback", call.call_id, call.model, exc_info=True
            )
            return None
        if grade is None:
            return None
        try:
            return check_grade(grade)
        except ConfigError:
            self.note_failure()
            logger.warning(
                "grader returned %r for call %s (%s), outside [0, 1]; it waits for feedback",
                grade,
                call.call_id,
                call.model,
            )
            return None

    def _record(self, call: FinishedCall, correct: float) -> bool:
        try:
            self.engine.record(call.outcome(correct))
        except Exception:
            with self._lock:
                self._failures += 1
                self._mark(call.call_id, "unrecorded")
            logger.warning("could not record the outcome of call %s (%s)", call.call_id, call.model, exc_info=True)
            return False
        with self._lock:
            self._recorded += 1
            self._mark(call.call_id, "recorded")
        logger.debug("recorded %s on call %s: correct=%s", call.model, call.call_id, correct)
        return True

    # -- feedback ------------------------------------------------------------------------------

    def feedback(self, call_ids: Iterable[str], correct: Any, *, model: str | None = None) -> int:
        """Grade the waiting calls among ``call_ids`` (of ``model`` only, if given) and record them.

        Returns how many outcomes were recorded. A call recorded already, dropped or unknown is skipped
        and logged, so repeating feedback is harmless.

        Raises:
            ConfigError: ``correct`` is not a number in [0, 1] or a bool.
        """
        value = check_grade(correct)
        taken: list[FinishedCall] = []
        missed: list[tuple[str, str | None]] = []
        with self._lock:
            for call_id in dict.fromkeys(call_ids):
                call = self._pending.get(call_id)
                if call is None:
                    missed.append((call_id, self._seen.get(call_id)))
                elif model is None or call.model == model:
                    del self._pending[call_id]
                    self._mark(call_id, "grading")
                    taken.append(call)
        for call_id, state in missed:
            if state == "dropped":
                logger.warning(
                    "call %s was dropped before its feedback came (max_pending=%d)", call_id, self.max_pending
                )
            elif state is None:
                logger.warning("no finished call %s waits for feedback (unknown, or forgotten long ago)", call_id)
            else:
                logger.info("call %s was recorded already; feedback ignored", call_id)
        return sum(self._record(call, value) for call in taken)


class FeedbackCounts:
    """``pending``, ``recorded`` and ``failures`` of an outcome handler that keeps a :class:`FeedbackBook` in
    ``_book`` (both adapters' handlers)."""

    _book: FeedbackBook

    @property
    def pending(self) -> int:
        """Calls that finished and wait for feedback."""
        return self._book.pending

    @property
    def recorded(self) -> int:
        """Outcomes recorded."""
        return self._book.recorded

    @property
    def failures(self) -> int:
        """Events the handler could not take, graders that failed or gave no valid grade, failed store writes."""
        return self._book.failures
