"""scope_shared.feedback.FeedbackBook: the pending/grade/record book both outcome handlers share."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from scope_shared import AnchorStore, ConfigError, HashingEmbedder, ModelCard, Outcome, ScopeEngine
from scope_shared.feedback import FeedbackBook, FinishedCall, Grader, check_grade, reported_tokens

CARDS = [
    ModelCard(name="a", input_per_mtok=1.0, output_per_mtok=2.0),
    ModelCard(name="b", input_per_mtok=1, output_per_mtok=1),
]


def _engine() -> tuple[ScopeEngine, list[Outcome]]:
    store = AnchorStore(embedder=HashingEmbedder())
    store.add(
        [Outcome(query="seed question", model=m, correct=1.0, output_tokens=5) for m in ("a", "b")], progress=False
    )
    engine = ScopeEngine(store=store, models=CARDS)
    written: list[Outcome] = []
    engine.record = lambda outcome, decision=None: written.append(outcome)  # type: ignore[method-assign]
    return engine, written


def _call(call_id: str, model: str = "a", answer: str = "42") -> FinishedCall:
    return FinishedCall(
        call_id=call_id, question=f"question {call_id}", model=model, answer=answer, input_tokens=3, output_tokens=4
    )


def _book(grader: Grader | None = None, **kw: Any) -> tuple[FeedbackBook, list[Outcome]]:
    engine, written = _engine()
    return FeedbackBook(engine=engine, grader=grader, **kw), written


def test_a_grade_records_at_once_and_only_once() -> None:
    seen: list[tuple[str, str]] = []

    def grader(question: str, answer: str) -> float:
        seen.append((question, answer))
        return 0.25

    book, written = _book(grader)
    assert book.finish(_call("c1")) is True
    assert book.finish(_call("c1")) is False  # a repeated event
    assert seen == [("question c1", "42")]
    assert [(o.query, o.model, o.correct, o.input_tokens, o.output_tokens) for o in written] == [
        ("question c1", "a", 0.25, 3, 4)
    ]
    assert (book.recorded, book.pending, book.failures) == (1, 0, 0)
    assert book.feedback(["c1"], 1.0) == 0 and len(written) == 1


def test_without_a_grade_the_call_waits_for_feedback_recorded_once(caplog: pytest.LogCaptureFixture) -> None:
    book, written = _book()
    book.finish(_call("c1"))
    book.finish(_call("c2", model="b"))
    assert book.pending == 2 and written == [] and [c.call_id for c in book.waiting()] == ["c1", "c2"]
    assert book.feedback(["c1", "c2"], True, model="b") == 1  # only b's call
    assert [(o.model, o.correct) for o in written] == [("b", 1.0)]
    with caplog.at_level(logging.INFO, logger="scope_shared.feedback"):
        assert book.feedback(["c2"], 0.0) == 0
        assert book.feedback(["nope"], 0.0) == 0
    assert "c2 was recorded already" in caplog.text and "no finished call nope" in caplog.text
    assert book.feedback(["c1"], 0.0) == 1 and book.pending == 0 and book.recorded == 2


@pytest.mark.parametrize(
    ("grade", "failures"),
    [(None, 0), (1.5, 1), (float("nan"), 1), ("yes", 1)],
)
def test_no_valid_grade_leaves_the_call_waiting(grade: Any, failures: int) -> None:
    book, written = _book(lambda q, a: grade)
    book.finish(_call("c1"))
    assert book.pending == 1 and written == [] and book.failures == failures


def test_a_failing_grader_or_store_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def grader(question: str, answer: str) -> float:
        raise RuntimeError("grader crashed")

    book, _ = _book(grader)
    with caplog.at_level(logging.WARNING, logger="scope_shared.feedback"):
        book.finish(_call("c1"))
    assert book.pending == 1 and book.failures == 1 and "grader failed on call c1" in caplog.text

    def broken(outcome: Outcome, decision: Any = None) -> None:
        raise RuntimeError("disk full")

    book.engine.record = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="scope_shared.feedback"):
        assert book.feedback(["c1"], 1.0) == 0
    assert book.failures == 2 and book.recorded == 0 and book.pending == 0
    assert "could not record the outcome of call c1" in caplog.text and "disk full" in caplog.text


def test_bool_grades_count_as_zero_and_one() -> None:
    book, written = _book(lambda q, a: a == "42")
    book.finish(_call("c1"))
    book.finish(_call("c2", answer="41"))
    assert [o.correct for o in written] == [1.0, 0.0]


def test_pending_is_bounded_and_the_drop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    book, _ = _book(max_pending=2)
    with caplog.at_level(logging.WARNING, logger="scope_shared.feedback"):
        for i in range(3):
            book.finish(_call(f"c{i}"))
        assert book.pending == 2 and "dropped the outcome of call c0" in caplog.text
        assert book.feedback(["c0"], 1.0) == 0
    assert "c0 was dropped before its feedback came" in caplog.text


def test_concurrent_finishes_and_feedback_record_each_call_once() -> None:
    book, written = _book()
    ids = [f"c{i}" for i in range(200)]
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for cid in ids:
            book.finish(_call(cid))
        for cid in ids:
            book.feedback([cid], 1.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.query for o in written) == sorted(f"question {cid}" for cid in ids)
    assert book.recorded == len(ids) and book.pending == 0


def test_validation() -> None:
    engine, _ = _engine()
    with pytest.raises(ConfigError, match="ScopeEngine"):
        FeedbackBook(engine=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="grader must be callable"):
        FeedbackBook(engine=engine, grader=1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_pending"):
        FeedbackBook(engine=engine, max_pending=0)
    book = FeedbackBook(engine=engine)
    with pytest.raises(ConfigError, match=r"correct must be a number in \[0, 1\]"):
        book.feedback(["c1"], 2.0)
    assert check_grade(True) == 1.0 and check_grade(0) == 0.0
    with pytest.raises(ConfigError):
        check_grade(-0.1)


def test_reported_tokens_reads_openai_and_anthropic_names() -> None:
    assert reported_tokens({"prompt_tokens": 3, "completion_tokens": 4}) == (3, 4)
    assert reported_tokens(SimpleNamespace(input_tokens=5, output_tokens=6)) == (5, 6)
    assert reported_tokens({"input_tokens": 1}) == (1, None)
    assert reported_tokens({"prompt_tokens": -1, "completion_tokens": 2.5}) == (None, None)
    assert reported_tokens({"prompt_tokens": True, "completion_tokens": 7.0}) == (None, 7)
    assert reported_tokens(None) == (None, None)
