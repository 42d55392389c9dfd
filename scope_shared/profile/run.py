"""``profile()``: run a new model over a suite's anchors, grade its answers, and record them in the store.

The run, in one thread that owns the store writes, the budget and the report, with ``concurrency`` worker
threads that only call the model:

1. choose the anchors (:mod:`scope_shared.profile.select`) and skip those the store already holds an outcome of
   this model for (a re-run resumes);
2. for each anchor, reserve its call's cost on the ledger (:mod:`scope_shared.profile.costs`); when it does not
   fit and nothing is in flight, stop at the cap;
3. a worker calls the model (retrying transient errors, :mod:`scope_shared.profile.calls`);
4. settle the real cost and grade the answer with the question's grader; a writer thread writes every graded
   outcome that has come in since its last write in one store write (group commit: nothing graded waits for a
   batch to fill, and calls go on while the store writes).

Ctrl-C (SIGINT, in the main thread) stops issuing calls and waits for the calls in flight, records them, then
raises ``KeyboardInterrupt``; a second Ctrl-C abandons the calls in flight. Either way every outcome graded
before it is in the store.

One job, hence the length: the run above is one state machine (``_Run``: reserve, dispatch, settle, grade,
record, stop at the cap or on Ctrl-C); its templates are :mod:`~scope_shared.profile.template` and its store
writer :mod:`~scope_shared.profile.writer`.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from scope_shared.budget import Budget, BudgetLedger, Reservation
from scope_shared.errors import ConfigError, ModelCallError
from scope_shared.profile.calls import Call, Caller, Usage, classify
from scope_shared.profile.costs import TokenGuess, guess_tokens
from scope_shared.profile.report import ProfileEntry, ProfileReport, UsageSource
from scope_shared.profile.select import Selector, choose_anchors
from scope_shared.profile.template import TEMPLATE_FIELDS, check_template, render
from scope_shared.profile.writer import OutcomeWriter
from scope_shared.store import AnchorStore
from scope_shared.store.records import anchor_id
from scope_shared.suites import DEFAULT_SUITE, AnchorSuite, SuiteQuestion, load_suite
from scope_shared.types import DEFAULT_TOKENS_PER_CHAR, ModelCard, Outcome, estimate_tokens

__all__ = ["TEMPLATE_FIELDS", "check_template", "profile", "render"]

logger = logging.getLogger(__name__)

_POLL = 0.2
_EPS = 1e-12


def _check_args(model: Any, call: Any, n: int | None, concurrency: int, template: str | None, retries: int) -> None:
    if not isinstance(model, ModelCard):
        msg = f"model must be a ModelCard (name and prices), got {type(model).__name__}"
        raise ConfigError(msg)
    if not callable(call):
        msg = f"call must be a function prompt -> (text, usage), got {type(call).__name__}"
        raise ConfigError(msg)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        msg = f"n must be a whole number >= 1 (or None for the whole suite), got {n!r}"
        raise ConfigError(msg)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 256:
        msg = f"concurrency must be a whole number in 1..256, got {concurrency!r}"
        raise ConfigError(msg)
    if template is not None:
        check_template(template)
    if retries < 0:
        msg = f"retries must be >= 0, got {retries}"
        raise ConfigError(msg)


def _ledger(max_cost: float | BudgetLedger | None) -> BudgetLedger | None:
    if max_cost is None or isinstance(max_cost, BudgetLedger):
        return max_cost
    if isinstance(max_cost, bool) or not isinstance(max_cost, int | float):
        msg = f"max_cost must be a USD amount or a BudgetLedger, got {type(max_cost).__name__}"
        raise ConfigError(msg)
    return BudgetLedger(Budget(float(max_cost)))


@contextmanager
def _sigint(on_interrupt: Callable[[], None]) -> Iterator[None]:
    """Route Ctrl-C to ``on_interrupt`` while the run lasts (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not (
        signal.default_int_handler
    ):
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: on_interrupt())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass(slots=True)
class _Done:
    """A worker's result: the answer and usage, or the error; and the call's seconds."""

    query_id: str
    text: str = ""
    usage: Usage = Usage()
    error: BaseException | None = None
    seconds: float = 0.0


class _Run:
    """One profiling run's state; :meth:`go` runs it. Everything but :meth:`_work` runs in the calling thread."""

    def __init__(
        self,
        *,
        store: AnchorStore,
        suite: AnchorSuite,
        model: ModelCard,
        caller: Caller,
        stop: threading.Event,
        ledger: BudgetLedger | None,
        concurrency: int,
        todo: list[SuiteQuestion],
        prompts: dict[str, str],
        guesses: dict[str, TokenGuess],
        new_anchor: set[str],
        report: ProfileReport,
        progress: bool | None,
    ) -> None:
        self.store, self.suite, self.model, self.caller, self.ledger = store, suite, model, caller, ledger
        self.concurrency = concurrency
        self.todo = deque(todo)
        self.prompts, self.guesses, self.new_anchor, self.report = prompts, guesses, new_anchor, report
        self.progress = progress
        self.jobs: queue.Queue[str | None] = queue.Queue()
        self.results: queue.Queue[_Done] = queue.Queue()
        self.in_flight: dict[str, Reservation | None] = {}
        self.writer = OutcomeWriter(store, poll=_POLL)
        self.stop = stop
        self.interrupts = 0
        self.fatal: BaseException | None = None
        self.tokens_per_char = store.tokens_per_char or DEFAULT_TOKENS_PER_CHAR

    # -- workers: call the model, nothing else ---------------------------------------------------------

    def _work(self) -> None:
        while True:
            qid = self.jobs.get()
            if qid is None:
                return
            start = time.perf_counter()
            try:
                text, usage = self.caller(self.prompts[qid])
                done = _Done(qid, text, usage)
            except BaseException as exc:  # handed to the run's thread, which decides
                done = _Done(qid, error=exc)
            done.seconds = time.perf_counter() - start
            self.results.put(done)

    # -- the run's thread --------------------------------------------------------------------------------

    def _interrupt(self) -> None:
        self.interrupts += 1
        self.stop.set()
        if self.interrupts == 1:
            logger.warning(
                "interrupted: finishing %d call(s) in flight and recording them (Ctrl-C again to abandon them)",
                len(self.in_flight),
            )

    def _issue(self) -> None:
        while self.todo and len(self.in_flight) < self.concurrency and not self.stop.is_set():
            q = self.todo[0]
            held = None
            if self.ledger is not None:
                held = self.ledger.try_reserve(self.guesses[q.query_id].reserve_cost(self.model), model=self.model.name)
                if held is None:
                    if self.in_flight:
                        return  # settlements may free enough
                    limit = self.ledger.budget.limit
                    self._stop_because(
                        f"the cost cap ${limit:.6g} was reached (spent ${self.ledger.spent:.6g}; the next call "
                        f"reserves ${self.guesses[q.query_id].reserve_cost(self.model):.6g}); "
                        f"{len(self.todo)} anchor(s) not called"
                    )
                    return
            self.todo.popleft()
            self.in_flight[q.query_id] = held
            self.jobs.put(q.query_id)

    def _stop_because(self, reason: str) -> None:
        if self.report.stopped is None:
            self.report.stopped = reason
            logger.info("profiling %s stopped: %s", self.model.name, reason)
        self.stop.set()

    def _entry(self, done: _Done) -> ProfileEntry:
        q = self.suite[done.query_id]
        inp, out = done.usage
        source: UsageSource = "reported" if inp is not None and out is not None else "estimated"
        if (inp is None) != (out is None):
            source = "partial"
        if inp is None:
            inp = int(estimate_tokens(self.prompts[q.query_id], self.tokens_per_char))
        if out is None:
            out = int(estimate_tokens(done.text, DEFAULT_TOKENS_PER_CHAR)) if done.text else 0
        correct = self.suite.grade(q.query_id, done.text)
        return ProfileEntry(
            query_id=q.query_id,
            task=q.task,
            correct=correct,
            input_tokens=inp,
            output_tokens=out,
            cost=self.model.cost(inp, out),
            usage=source,
            seconds=round(done.seconds, 4),
        )

    def _handle(self, done: _Done) -> None:
        held = self.in_flight.pop(done.query_id)
        exc = done.error
        if exc is not None:
            if held is not None and self.ledger is not None:
                self.ledger.release(held.id)
            self._failed(done, exc)
            return
        entry = self._entry(done)
        if self.ledger is not None:
            if held is not None:
                self.ledger.settle(held.id, entry.cost)
            else:
                self.ledger.charge(entry.cost)
        self.report.entries.append(entry)
        q = self.suite[done.query_id]
        new = anchor_id(q.query) in self.new_anchor and not self.report.templated
        self.writer.put(
            Outcome(
                query=q.query,
                model=self.model.name,
                correct=entry.correct or 0.0,
                output_tokens=entry.output_tokens,
                # an anchor's input tokens are the reference models' count of its prompt: kept as recorded
                input_tokens=entry.input_tokens if new and entry.usage != "estimated" else None,
                query_id=q.query_id,
                task=q.task,
            )
        )
        if self.ledger is not None and self.ledger.spent > self.ledger.budget.limit + _EPS:
            self._stop_because(
                f"the cost cap ${self.ledger.budget.limit:.6g} was exceeded (spent ${self.ledger.spent:.6g}): "
                "a call cost more than its reservation (the most any reference model used on that question)"
            )

    def _failed(self, done: _Done, exc: BaseException) -> None:
        if not isinstance(exc, Exception):  # KeyboardInterrupt or SystemExit raised inside the call
            self._interrupt()
            return
        kind = classify(exc)
        what = f"{type(exc).__name__}: {_one_line(exc)}"
        if kind == "anchor":
            logger.warning("model %s refused anchor %s: %s", self.model.name, done.query_id, what)
            q = self.suite[done.query_id]
            self.report.entries.append(
                ProfileEntry(q.query_id, q.task, None, 0, 0, 0.0, "estimated", round(done.seconds, 4), what)
            )
            return
        if self.fatal is None:
            self.fatal = exc
            self._stop_because(f"calling {self.model.name} failed: {what}")

    def _abandon(self) -> None:
        if self.ledger is not None:
            for held in self.in_flight.values():
                if held is not None:
                    self.ledger.release(held.id)
        self.in_flight.clear()

    def go(self) -> None:
        total = len(self.todo)
        workers = [
            threading.Thread(target=self._work, name=f"scope-profile-{i}", daemon=True)
            for i in range(min(self.concurrency, total))
        ]
        for w in workers:
            w.start()
        bar = None
        if self.progress or (self.progress is None and total > 1):
            from tqdm.auto import tqdm

            desc = f"profile {self.model.name}"[:40]
            bar = tqdm(total=total, unit="call", desc=desc, disable=None if not self.progress else False)
        try:
            with _sigint(self._interrupt):
                self._loop(bar)
        finally:
            for _ in workers:
                self.jobs.put(None)
            if bar is not None:
                bar.close()
            self.caller.close()

    def _loop(self, bar: Any) -> None:
        try:
            while True:
                if self.interrupts > 1:
                    self._abandon()
                self._issue()
                if not self.in_flight:
                    break
                try:
                    batch = [self.results.get(timeout=_POLL)]
                except queue.Empty:
                    continue
                while True:
                    try:
                        batch.append(self.results.get_nowait())
                    except queue.Empty:
                        break
                for done in batch:
                    if done.query_id in self.in_flight:  # not abandoned meanwhile
                        self._handle(done)
                if self.writer.error is not None:
                    break
                if bar is not None:
                    bar.update(len(batch))
        except BaseException:
            self._abandon()
            raise
        finally:
            self._abandon()  # nothing is left in flight but after an error
            self.writer.close()
        if self.interrupts:
            raise KeyboardInterrupt
        if self.fatal is not None:
            recorded = len(self.report.recorded)
            msg = (
                f"calling model {self.model.name!r} failed: {type(self.fatal).__name__}: {_one_line(self.fatal)} "
                f"({recorded} outcome(s) recorded before it; a re-run resumes)"
            )
            raise ModelCallError(msg) from self.fatal


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def profile(
    store: AnchorStore,
    *,
    model: ModelCard,
    call: Call,
    suite: AnchorSuite | str = DEFAULT_SUITE,
    n: int | None = 100,
    select: str | Selector = "random",
    max_cost: float | BudgetLedger | None = None,
    concurrency: int = 8,
    template: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
    dry_run: bool = False,
    retries: int = 6,
    backoff: float = 0.5,
) -> ProfileReport:
    """Profile a model on a suite's anchors and record its graded outcomes in ``store``.

    Each chosen question's :attr:`~SuiteQuestion.prompt` (the way the reference models were asked) is sent as
    is; the answer is graded with the question's grader and recorded under the question's
    :attr:`~SuiteQuestion.query` (the anchor's text), with the output tokens the response reported (counted
    from the text's length when it reported none: the entry says ``estimated``). Anchors the store already
    holds an outcome of this model for are not called again.

    Args:
        store: the anchor store to record into (build it with
            :func:`~scope_shared.suites.store_from_suite`).
        model: the model's name (its outcomes are recorded under it) and prices.
        call: a function prompt -> ``(text, usage)`` (sync or ``async def``); see
            :mod:`scope_shared.profile.calls` for ``usage``.
        suite: a suite or what :func:`~scope_shared.suites.load_suite` takes.
        n: anchors to profile on (None: the whole suite).
        select: ``"random"``, ``"informative"``, ``"all"``, or a selector function (see
            :mod:`scope_shared.profile.select`).
        max_cost: USD cap (or a shared :class:`BudgetLedger`); each call reserves the cost of the most any
            reference model used on its question before it is made, and the run stops when the next does
            not fit (``report.stopped`` says so; what was recorded stays).
        concurrency: calls in flight at once.
        template: rewrite each prompt, e.g. ``"Answer carefully.\\n\\n{prompt}"`` (placeholders
            ``{prompt}``, ``{query}``, ``{instruction}``); outcomes are then not those of the reference setup.
        seed: seeds the selection.
        progress: show a progress bar (None: on a terminal).
        dry_run: call nothing; the report gives the choice and its expected cost.
        retries: further attempts after a transient error (429, 5xx, timeouts, connection errors).
        backoff: first wait between attempts in seconds (doubling, with jitter).

    Raises:
        ModelCallError: the model could not be called (after retries) or refused the credentials; outcomes
            recorded before it stay in the store.
        KeyboardInterrupt: Ctrl-C, after the calls in flight were recorded.
    """
    _check_args(model, call, n, concurrency, template, retries)
    ledger = _ledger(max_cost)
    the_suite = suite if isinstance(suite, AnchorSuite) else load_suite(suite)
    started = time.perf_counter()
    chosen = choose_anchors(the_suite, n=n, select=select, seed=seed)
    questions = [the_suite[qid] for qid in chosen]
    stored = store.get([anchor_id(q.query) for q in questions]) if questions else {}
    already = [q.query_id for q in questions if model.name in getattr(stored.get(anchor_id(q.query)), "outcomes", {})]
    done = set(already)
    todo = [q for q in questions if q.query_id not in done]
    prompts = {q.query_id: render(template, q) for q in questions}
    guesses = guess_tokens(
        the_suite,
        todo,
        prompts,
        tokens_per_char=store.tokens_per_char or DEFAULT_TOKENS_PER_CHAR,
        templated=template is not None,
    )
    report = ProfileReport(
        model=model.name,
        suite=the_suite.name,
        select=select if isinstance(select, str) else getattr(select, "__name__", "custom"),
        seed=seed,
        chosen=chosen,
        task_of={q.query_id: q.task for q in questions},
        already_recorded=already,
        expected_costs={qid: g.expected_cost(model) for qid, g in guesses.items()},
        max_cost=None if ledger is None else ledger.budget.limit,
        dry_run=dry_run,
        templated=template is not None,
    )
    if already:
        logger.info("%s already has outcomes on %d of the %d chosen anchors", model.name, len(already), len(chosen))
    if dry_run or not todo:
        report.wall_seconds = time.perf_counter() - started
        return report
    stop = threading.Event()
    run = _Run(
        store=store,
        suite=the_suite,
        model=model,
        caller=Caller(call, retries=retries, backoff=backoff, stop=stop),
        stop=stop,
        ledger=ledger,
        concurrency=concurrency,
        todo=todo,
        prompts=prompts,
        guesses=guesses,
        new_anchor={aid for aid in (anchor_id(q.query) for q in todo) if aid not in stored},
        report=report,
        progress=progress,
    )
    try:
        run.go()
    finally:
        report.wall_seconds = time.perf_counter() - started
    return report
