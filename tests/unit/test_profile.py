"""profile(): the core run with fake model calls over a small real suite and an in-memory store."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import signal
import statistics
import sys
import threading
import time
import types
from collections import Counter
from typing import Any

import numpy as np
import pytest

from scope_shared.budget import Budget, BudgetLedger
from scope_shared.embeddings import HashingEmbedder
from scope_shared.errors import ConfigError, ModelCallError
from scope_shared.profile import (
    ProfileReport,
    Usage,
    as_usage,
    choose_anchors,
    classify,
    outcome_matrix,
    profile,
    render,
)
from scope_shared.store import AnchorStore
from scope_shared.store.records import anchor_id
from scope_shared.suites import AnchorSuite, ReferenceOutcome, SuiteQuestion, seed_store
from scope_shared.types import ModelCard, estimate_tokens

CARD = ModelCard(name="newbie", input_per_mtok=1000.0, output_per_mtok=2000.0)  # $0.001 / $0.002 a token


def question(i: int) -> SuiteQuestion:
    math = i % 2 == 0
    return SuiteQuestion(
        query_id=f"q{i}",
        query=f"Question {i}: what is {i} + {i}?" if math else f"Question {i}: pick one. (A) yes (B) no",
        task="math" if math else "pick",
        reference=str(2 * i) if math else "B",
        grader="number" if math else "choice",
        instruction="Put your final answer in \\boxed{}." if math else "",
        input_tokens=10 + i,
        outcomes={
            "ref-a": ReferenceOutcome(correct=1.0, output_tokens=20 + i),
            "ref-b": ReferenceOutcome(correct=float(i % 3 == 0), output_tokens=40 + 2 * i),
        },
    )


@pytest.fixture
def suite() -> AnchorSuite:
    return AnchorSuite(questions=[question(i) for i in range(12)], name="unit")


@pytest.fixture
def store(suite: AnchorSuite) -> AnchorStore:
    store = AnchorStore(embedder=HashingEmbedder())
    seed_store(store, suite)
    return store


def right_answer(q: SuiteQuestion) -> str:
    return f"so the answer is \\boxed{{{q.reference}}}" if q.grader == "number" else f"({q.reference})"


class FakeModel:
    """Answers right on the questions in ``knows``, wrong elsewhere; counts calls by prompt; thread-safe."""

    def __init__(self, suite: AnchorSuite, *, knows: set[str] | None = None, usage: Any = (7, 3)) -> None:
        self.by_prompt = {q.prompt: q for q in suite}
        self.knows = {q.query_id for q in suite} if knows is None else knows
        self.usage = usage
        self.calls: Counter[str] = Counter()
        self.prompts: list[str] = []
        self.lock = threading.Lock()

    def answer(self, prompt: str) -> tuple[str, Any]:
        q = self.by_prompt[prompt]
        with self.lock:
            self.calls[q.query_id] += 1
            self.prompts.append(prompt)
        return (right_answer(q) if q.query_id in self.knows else "no idea, maybe 12345"), self.usage

    def __call__(self, prompt: str) -> tuple[str, Any]:
        return self.answer(prompt)


def stored(store: AnchorStore, suite: AnchorSuite, model: str = CARD.name) -> dict[str, float]:
    ids = {anchor_id(q.query): q.query_id for q in suite}
    return {ids[a]: r.outcomes[model].correct for a, r in store.get(list(ids)).items() if model in r.outcomes}


# -- recording -------------------------------------------------------------------------------------------


def test_records_graded_outcomes_under_the_query(suite: AnchorSuite, store: AnchorStore) -> None:
    knows = {"q0", "q2", "q3", "q4"}
    model = FakeModel(suite, knows=knows)
    report = profile(store, model=CARD, call=model, suite=suite, n=None, progress=False)
    assert sorted(model.prompts) == sorted(q.prompt for q in suite)  # each prompt sent verbatim, once
    expected = {q.query_id: float(q.query_id in knows) for q in suite}
    assert stored(store, suite) == expected
    assert {e.query_id: e.correct for e in report.entries} == expected
    assert all((e.input_tokens, e.output_tokens, e.usage) == (7, 3, "reported") for e in report.entries)
    assert all(e.cost == pytest.approx(CARD.cost(7, 3)) for e in report.entries)
    assert report.complete and report.stopped is None
    tasks = report.tasks()
    assert tasks["math"].accuracy == pytest.approx(3 / 6) and tasks["pick"].accuracy == pytest.approx(1 / 6)
    assert tasks["math"].recorded == 6 and tasks["math"].input_tokens == 42


def test_output_tokens_recorded_and_anchor_input_tokens_kept(suite: AnchorSuite, store: AnchorStore) -> None:
    profile(store, model=CARD, call=FakeModel(suite, usage=(999, 5)), suite=suite, n=None, progress=False)
    records, _, in_tokens = store.export()
    for rec, inp in zip(records, in_tokens, strict=True):
        q = next(q for q in suite if q.query == rec.question)
        assert rec.outcomes[CARD.name].output_tokens == 5
        assert inp == q.input_tokens  # the reference models' count, not the new model's 999


def test_rerun_calls_only_anchors_not_yet_recorded(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite)
    first = profile(store, model=CARD, call=model, suite=suite, n=5, progress=False)
    assert len(model.calls) == 5
    second = profile(store, model=CARD, call=model, suite=suite, n=9, progress=False)
    assert second.chosen[:5] == first.chosen  # a larger n extends the choice
    assert sorted(second.already_recorded) == sorted(first.chosen)
    assert len(model.calls) == 9 and set(model.calls.values()) == {1}
    third = profile(store, model=CARD, call=model, suite=suite, n=9, progress=False)
    assert third.entries == [] and third.complete and len(model.calls) == 9


def test_usage_estimated_when_not_reported(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite, usage=None)
    report = profile(store, model=CARD, call=model, suite=suite, n=4, progress=False)
    for e in report.entries:
        q = suite[e.query_id]
        answer = right_answer(q)
        assert e.usage == "estimated"
        assert e.output_tokens == estimate_tokens(answer)
        assert e.input_tokens == estimate_tokens(q.prompt, store.tokens_per_char)
    assert "estimated from text length for 4 call(s)" in "\n".join(report.lines())


def test_partial_usage(suite: AnchorSuite, store: AnchorStore) -> None:
    report = profile(store, model=CARD, call=FakeModel(suite, usage={"completion_tokens": 4}), suite=suite, n=2)
    assert {(e.usage, e.output_tokens) for e in report.entries} == {("partial", 4)}


def test_empty_answer_is_graded_wrong_and_recorded(suite: AnchorSuite, store: AnchorStore) -> None:
    report = profile(store, model=CARD, call=lambda p: (None, None), suite=suite, n=3, progress=False)
    assert [e.correct for e in report.entries] == [0.0] * 3 and len(stored(store, suite)) == 3
    assert all(e.output_tokens == 0 for e in report.entries)


def test_async_call(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite)
    loops: set[int] = set()

    async def call(prompt: str) -> tuple[str, Usage]:
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.001)
        text, _ = model.answer(prompt)
        return text, Usage(5, 6)

    report = profile(store, model=CARD, call=call, suite=suite, n=None, concurrency=4, progress=False)
    assert len(stored(store, suite)) == 12 and {e.output_tokens for e in report.entries} == {6}
    assert len(loops) == 1  # one event loop for every call: an async client keeps its pool


def test_template_rewrites_the_prompt(suite: AnchorSuite, store: AnchorStore) -> None:
    seen: list[str] = []

    def call(prompt: str) -> tuple[str, None]:
        seen.append(prompt)
        return "(B)", None

    template = 'Be brief. {"json": "braces stay"}\n\n{prompt}'
    report = profile(store, model=CARD, call=call, suite=suite, n=3, template=template, progress=False)
    assert report.templated
    assert sorted(seen) == sorted(template.replace("{prompt}", suite[q].prompt) for q in report.chosen)
    assert render("{query}|{instruction}", suite["q2"]) == f"{suite['q2'].query}|{suite['q2'].instruction}"


def test_call_returning_a_bare_string(suite: AnchorSuite, store: AnchorStore) -> None:
    report = profile(store, model=CARD, call=lambda p: "(B)", suite=suite, n=2, progress=False)
    assert all(e.usage == "estimated" for e in report.entries)


def test_call_returning_nonsense_stops_the_run(suite: AnchorSuite, store: AnchorStore) -> None:
    with pytest.raises(ModelCallError, match=r"TypeError: call returned int"):
        profile(store, model=CARD, call=lambda p: 3, suite=suite, n=2, progress=False, concurrency=1)


# -- the budget --------------------------------------------------------------------------------------------


def test_dry_run_calls_nothing_and_adds_up_expected_costs(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite)
    report = profile(store, model=CARD, call=model, suite=suite, n=6, dry_run=True)
    assert not model.calls and not stored(store, suite) and report.dry_run and not report.complete
    want = sum(
        CARD.cost(q.input_tokens or 0, statistics.median(o.output_tokens or 0 for o in q.outcomes.values()))
        for q in (suite[i] for i in report.chosen)
    )
    assert report.expected_cost == pytest.approx(want)
    assert sum(t.expected_cost for t in report.tasks().values()) == pytest.approx(want)


def test_max_cost_stops_at_the_cap(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite, usage=(10, 40))  # $0.09 a call; each reservation is ~$0.10-0.12
    report = profile(store, model=CARD, call=model, suite=suite, n=None, max_cost=0.5, progress=False)
    assert report.stopped is not None and "cost cap $0.5 was reached" in report.stopped
    assert 0 < len(report.entries) < 12
    assert report.spent <= 0.5
    assert len(stored(store, suite)) == len(report.entries) == sum(model.calls.values())
    assert not report.complete


def test_a_shared_ledger_counts_the_spend(suite: AnchorSuite, store: AnchorStore) -> None:
    ledger = BudgetLedger(Budget(10.0))
    report = profile(store, model=CARD, call=FakeModel(suite), suite=suite, n=4, max_cost=ledger, progress=False)
    assert ledger.spent == pytest.approx(report.spent) and ledger.held == 0


def test_a_call_above_its_reservation_stops_the_run(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite, usage=(10, 100_000))  # far past the reference models' longest answer
    report = profile(store, model=CARD, call=model, suite=suite, n=None, max_cost=1.0, concurrency=1)
    assert report.stopped is not None and "exceeded" in report.stopped
    assert len(report.entries) == 1 and sum(model.calls.values()) == 1


# -- errors, retries, interrupts ------------------------------------------------------------------------------


class HTTPError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def test_transient_errors_are_retried(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite)
    attempts: Counter[str] = Counter()
    lock = threading.Lock()

    def flaky(prompt: str) -> tuple[str, Any]:
        with lock:
            attempts[prompt] += 1
            n = attempts[prompt]
        if n <= 2 and len(prompt) % 2 == 0:
            raise HTTPError(429) if n == 1 else TimeoutError("slow")
        return model(prompt)

    report = profile(store, model=CARD, call=flaky, suite=suite, n=None, backoff=0.001, progress=False)
    assert report.complete and len(stored(store, suite)) == 12
    assert set(model.calls.values()) == {1} and max(attempts.values()) == 3


def test_transient_errors_past_the_retries_stop_the_run(suite: AnchorSuite, store: AnchorStore) -> None:
    def down(prompt: str) -> tuple[str, Any]:
        raise ConnectionError("refused")

    with pytest.raises(ModelCallError, match=r"ConnectionError: refused \(0 outcome\(s\) recorded"):
        profile(store, model=CARD, call=down, suite=suite, n=3, retries=2, backoff=0.001, progress=False)


def test_a_refused_key_stops_the_run_and_keeps_what_was_recorded(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite)

    def call(prompt: str) -> tuple[str, Any]:
        if sum(model.calls.values()) >= 3:
            raise HTTPError(401)
        return model(prompt)

    ledger = BudgetLedger(Budget(100.0))
    with pytest.raises(ModelCallError, match=r"HTTPError: HTTP 401 \(3 outcome\(s\) recorded"):
        profile(store, model=CARD, call=call, suite=suite, n=None, concurrency=1, max_cost=ledger, progress=False)
    assert len(stored(store, suite)) == 3
    assert ledger.held == 0 and ledger.spent == pytest.approx(3 * CARD.cost(7, 3))


def test_a_refused_anchor_is_reported_and_the_run_goes_on(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite)
    too_long = suite["q5"].prompt

    def call(prompt: str) -> tuple[str, Any]:
        if prompt == too_long:
            raise HTTPError(400)
        return model(prompt)

    report = profile(store, model=CARD, call=call, suite=suite, n=None, progress=False)
    failed = report.failed
    assert [(e.query_id, e.correct, e.error) for e in failed] == [("q5", None, "HTTPError: HTTP 400")]
    assert len(stored(store, suite)) == 11 and "q5" not in stored(store, suite)
    assert not report.complete and report.tasks()["pick"].failed == 1
    assert "estimated" not in "\n".join(report.lines())  # the refused anchor has no usage to estimate


def test_keyboard_interrupt_in_a_call_records_the_rest_then_resumes(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite)
    started = itertools.count(1)

    def call(prompt: str) -> tuple[str, Any]:
        if next(started) == 5:
            raise KeyboardInterrupt
        time.sleep(0.01)
        return model(prompt)

    with pytest.raises(KeyboardInterrupt):
        profile(store, model=CARD, call=call, suite=suite, n=None, concurrency=3, progress=False)
    done = stored(store, suite)
    assert set(done) == set(model.calls)  # every answered call was recorded
    assert 4 <= len(done) < 12
    profile(store, model=CARD, call=model, suite=suite, n=None, progress=False)
    assert len(model.calls) == 12 and set(model.calls.values()) == {1}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_finishes_the_calls_in_flight(suite: AnchorSuite, store: AnchorStore) -> None:
    model = FakeModel(suite)
    started = itertools.count(1)

    def call(prompt: str) -> tuple[str, Any]:
        if next(started) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return model(prompt)

    with pytest.raises(KeyboardInterrupt):
        profile(store, model=CARD, call=call, suite=suite, n=None, concurrency=4, progress=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    done = stored(store, suite)
    assert set(done) == set(model.calls) and 3 <= len(done) < 12


# -- choosing anchors -----------------------------------------------------------------------------------------


def test_random_choice_is_seeded_and_extends(suite: AnchorSuite) -> None:
    a = choose_anchors(suite, n=5, select="random", seed=1)
    assert a == choose_anchors(suite, n=5, select="random", seed=1)
    assert a != choose_anchors(suite, n=5, select="random", seed=2)
    assert choose_anchors(suite, n=8, select="random", seed=1)[:5] == a
    assert sorted(choose_anchors(suite, n=50, select="random", seed=1)) == sorted(suite.ids)
    assert choose_anchors(suite, n=3, select="all", seed=0) == suite.ids


def test_informative_selects_with_the_suites_vectors(suite: AnchorSuite) -> None:
    with_vectors = suite.with_vectors(HashingEmbedder())
    chosen = choose_anchors(with_vectors, n=4, select="informative", seed=7)
    assert len(set(chosen)) == 4 and set(chosen) <= set(suite.ids)
    assert chosen == choose_anchors(with_vectors, n=4, select="informative", seed=7)  # deterministic per seed


def test_informative_without_vectors_says_so(suite: AnchorSuite) -> None:
    assert suite.vectors is None
    with pytest.raises(ConfigError, match="select='informative' needs the suite's vectors"):
        choose_anchors(suite, n=4, select="informative", seed=0)


def test_a_selector_function_is_checked(suite: AnchorSuite) -> None:
    assert choose_anchors(suite, n=2, select=lambda ids, e, o, n, s: ["q3", "q1"], seed=0) == ["q3", "q1"]
    for bad in (["q3", "q3"], ["nope"], ["q1", "q2", "q3"]):
        with pytest.raises(ConfigError, match="must return at most 2 distinct suite ids"):
            choose_anchors(suite, n=2, select=lambda ids, e, o, n, s, bad=bad: bad, seed=0)
    with pytest.raises(ConfigError, match="unknown selection 'best'"):
        choose_anchors(suite, n=2, select="best", seed=0)


def test_outcome_matrix_has_nan_for_missing() -> None:
    q = question(1)
    lone = dataclasses.replace(q, query_id="x", query="other", outcomes={"ref-c": ReferenceOutcome(0.0)})
    matrix = outcome_matrix(AnchorSuite(questions=[q, lone]))
    assert np.isnan(matrix[1, 0]) and matrix[1, 2] == 0.0 and np.isnan(matrix[0, 2])


# -- arguments and helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be a whole number >= 1"),
        ({"concurrency": 0}, "concurrency must be"),
        ({"template": "no placeholder"}, "none of the placeholders"),
        ({"model": "gpt"}, "model must be a ModelCard"),
        ({"call": "gpt"}, "call must be a function"),
        ({"max_cost": "1"}, "max_cost must be a USD amount"),
        ({"max_cost": -1.0}, "budget limit must be"),
    ],
)
def test_bad_arguments(suite: AnchorSuite, store: AnchorStore, kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"model": CARD, "call": FakeModel(suite), "suite": suite, **kwargs}
    with pytest.raises(ConfigError, match=match):
        profile(store, **args)
    assert not stored(store, suite)


def test_usage_forms() -> None:
    assert as_usage(None) == Usage(None, None)
    assert as_usage((3, 4)) == Usage(3, 4)
    assert as_usage({"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}) == Usage(3, 4)
    assert as_usage(types.SimpleNamespace(prompt_tokens=5, completion_tokens=6)) == Usage(5, 6)
    assert as_usage((-1, 2.5)) == Usage(None, None)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (HTTPError(429), "transient"),
        (HTTPError(503), "transient"),
        (TimeoutError(), "transient"),
        (ConnectionError(), "transient"),
        (HTTPError(400), "anchor"),
        (HTTPError(422), "anchor"),
        (HTTPError(401), "fatal"),
        (HTTPError(404), "fatal"),
        (ValueError("bug"), "fatal"),
    ],
)
def test_classify(exc: Exception, kind: str) -> None:
    assert classify(exc) == kind


def test_report_json_is_written_whole(tmp_path: Any, suite: AnchorSuite, store: AnchorStore) -> None:
    report = profile(store, model=CARD, call=FakeModel(suite), suite=suite, n=3, progress=False)
    path = report.save(tmp_path / "out" / "r.json")
    import json

    data = json.loads(path.read_text())
    assert data["recorded"] == 3 and data["complete"] and len(data["entries"]) == 3
    assert set(data["entries"][0]) == {
        "query_id",
        "task",
        "correct",
        "input_tokens",
        "output_tokens",
        "cost",
        "usage",
        "seconds",
        "error",
    }
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    assert isinstance(report, ProfileReport)


def test_a_failed_store_write_stops_the_run(suite: AnchorSuite) -> None:
    from scope_shared.errors import StoreUnavailableError

    class FlakyStore(AnchorStore):
        writes = 0

        def add(self, outcomes: Any, **kwargs: Any) -> Any:
            if any(getattr(o, "model", None) == CARD.name for o in outcomes):
                FlakyStore.writes += 1
                if FlakyStore.writes > 1:
                    raise StoreUnavailableError("chroma went away")
            return super().add(outcomes, **kwargs)

    store = FlakyStore(embedder=HashingEmbedder())
    seed_store(store, suite)
    ledger = BudgetLedger(Budget(100.0))

    def slow(prompt: str) -> tuple[str, Any]:
        time.sleep(0.02)
        return "(B)", (1, 1)

    with pytest.raises(StoreUnavailableError, match="chroma went away"):
        profile(store, model=CARD, call=slow, suite=suite, n=None, concurrency=2, max_cost=ledger, progress=False)
    assert ledger.held == 0
    assert 1 <= len(stored(store, suite)) < 12
