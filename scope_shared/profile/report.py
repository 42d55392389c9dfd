"""What a profiling run did: one entry per anchor called, a summary per task, and why it stopped."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["ProfileEntry", "ProfileReport", "TaskSummary", "UsageSource"]

#: ``reported``: both token counts came from the response; ``estimated``: neither did (counted from the text's
#: length); ``partial``: one of them did.
UsageSource = Literal["reported", "estimated", "partial"]


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    """One anchor called: its grade, its tokens and cost (USD), and where the token counts come from.

    ``correct`` is None and ``error`` says why when the request for this anchor was refused (nothing recorded).
    """

    query_id: str
    task: str
    correct: float | None
    input_tokens: int
    output_tokens: int
    cost: float
    usage: UsageSource
    seconds: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """One task's share of a run. ``accuracy`` is over the anchors recorded in this run (None if none were)."""

    task: str
    chosen: int
    already_recorded: int
    recorded: int
    failed: int
    accuracy: float | None
    input_tokens: int
    output_tokens: int
    cost: float
    seconds: float
    expected_cost: float


@dataclass
class ProfileReport:
    """A profiling run of one model on a suite.

    Attributes:
        model: the model's name (what its outcomes are recorded under).
        suite: the suite's name.
        select: how anchors were chosen; ``seed`` seeded it.
        chosen: the query ids chosen, in the order they were called.
        already_recorded: chosen ids the store already held an outcome of this model for (not called).
        entries: one per anchor called in this run.
        expected_cost: USD the chosen anchors not yet recorded were expected to cost (median reference output).
        spent: USD this run spent (the sum of the entries' costs).
        max_cost: the cap, if any.
        stopped: why the run stopped before calling every chosen anchor (None: it did not).
        wall_seconds: the run's wall time.
        dry_run: nothing was called; only ``expected_cost`` and the choice are meaningful.
        templated: the prompts were rewritten by a template (outcomes not comparable with the reference models').
    """

    model: str
    suite: str
    select: str
    seed: int
    chosen: list[str]
    task_of: dict[str, str]
    already_recorded: list[str] = field(default_factory=list)
    entries: list[ProfileEntry] = field(default_factory=list)
    expected_costs: dict[str, float] = field(default_factory=dict)
    max_cost: float | None = None
    stopped: str | None = None
    wall_seconds: float = 0.0
    dry_run: bool = False
    templated: bool = False

    @property
    def expected_cost(self) -> float:
        return sum(self.expected_costs.values())

    @property
    def spent(self) -> float:
        return sum(e.cost for e in self.entries)

    @property
    def recorded(self) -> list[ProfileEntry]:
        """The entries whose outcome was recorded in the store."""
        return [e for e in self.entries if e.correct is not None]

    @property
    def failed(self) -> list[ProfileEntry]:
        return [e for e in self.entries if e.correct is None]

    @property
    def complete(self) -> bool:
        """Every chosen anchor now has an outcome of this model in the store."""
        return not self.dry_run and len(self.recorded) + len(self.already_recorded) == len(self.chosen)

    def tasks(self) -> dict[str, TaskSummary]:
        """The summary per task, tasks sorted by name."""
        by_task: dict[str, list[ProfileEntry]] = defaultdict(list)
        for e in self.entries:
            by_task[e.task].append(e)
        chosen: dict[str, int] = defaultdict(int)
        for qid in self.chosen:
            chosen[self.task_of[qid]] += 1
        already: dict[str, int] = defaultdict(int)
        for qid in self.already_recorded:
            already[self.task_of[qid]] += 1
        expected: dict[str, float] = defaultdict(float)
        for qid, cost in self.expected_costs.items():
            expected[self.task_of[qid]] += cost
        out = {}
        for task in sorted(chosen):
            entries = by_task.get(task, [])
            graded = [e.correct for e in entries if e.correct is not None]
            out[task] = TaskSummary(
                task=task,
                chosen=chosen[task],
                already_recorded=already[task],
                recorded=len(graded),
                failed=len(entries) - len(graded),
                accuracy=sum(graded) / len(graded) if graded else None,
                input_tokens=sum(e.input_tokens for e in entries),
                output_tokens=sum(e.output_tokens for e in entries),
                cost=sum(e.cost for e in entries),
                seconds=sum(e.seconds for e in entries),
                expected_cost=expected[task],
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: the run, its summary per task and one entry per anchor called."""
        return {
            "model": self.model,
            "suite": self.suite,
            "select": self.select,
            "seed": self.seed,
            "dry_run": self.dry_run,
            "templated": self.templated,
            "chosen": len(self.chosen),
            "already_recorded": len(self.already_recorded),
            "recorded": len(self.recorded),
            "failed": len(self.failed),
            "complete": self.complete,
            "stopped": self.stopped,
            "expected_cost": self.expected_cost,
            "spent": self.spent,
            "max_cost": self.max_cost,
            "wall_seconds": self.wall_seconds,
            "tasks": {task: asdict(s) for task, s in self.tasks().items()},
            "entries": [asdict(e) for e in self.entries],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` whole or not at all (a temporary file renamed over it)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json() + "\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def lines(self) -> list[str]:
        """The summary as a table, for a terminal."""
        head = (
            f"{'dry run: ' if self.dry_run else ''}{self.model} on {len(self.chosen)} anchors of suite "
            f"{self.suite!r} ({self.select}, seed {self.seed}): {len(self.already_recorded)} already recorded"
        )
        if not self.dry_run:
            head += f", {len(self.recorded)} recorded now, {len(self.failed)} failed; {self.wall_seconds:.1f} s"
        rows = [head, ""]
        rows.append(
            f"{'task':20} {'chosen':>6} {'done':>5} {'new':>5} {'fail':>5} {'accuracy':>8} "
            f"{'in_tok':>9} {'out_tok':>9} {'cost $':>10} {'call s':>8} {'expected $':>11}"
        )
        for s in self.tasks().values():
            acc = "-" if s.accuracy is None else f"{s.accuracy:.3f}"
            rows.append(
                f"{s.task[:20]:20} {s.chosen:6d} {s.already_recorded:5d} {s.recorded:5d} {s.failed:5d} {acc:>8} "
                f"{s.input_tokens:9d} {s.output_tokens:9d} {s.cost:10.6f} {s.seconds:8.1f} {s.expected_cost:11.6f}"
            )
        graded = [e.correct for e in self.recorded if e.correct is not None]
        acc = "-" if not graded else f"{sum(graded) / len(graded):.3f}"
        rows.append(
            f"{'total':20} {len(self.chosen):6d} {len(self.already_recorded):5d} {len(self.recorded):5d} "
            f"{len(self.failed):5d} {acc:>8} {sum(e.input_tokens for e in self.entries):9d} "
            f"{sum(e.output_tokens for e in self.entries):9d} {self.spent:10.6f} "
            f"{sum(e.seconds for e in self.entries):8.1f} {self.expected_cost:11.6f}"
        )
        estimated = sum(1 for e in self.recorded if e.usage != "reported")
        if estimated:
            rows.append(f"token counts estimated from text length for {estimated} call(s) (no usage reported)")
        if self.stopped:
            rows.append(f"stopped: {self.stopped}")
        return rows
