"""The built-in graders, run on the real recorded responses in ../shared/data, agree with the recorded ``correct``.

For every (dataset, model, task) with references and responses, the share of rows where ``grade(response,
reference)`` equals the recorded grade must be at least 0.97. ``pytest -s`` prints the table; so does running
this file (``python -m tests.integration.test_grader_agreement``).

The packaged default suite is checked against the same data (a faithful copy of anchor rows, no test query)
and against the real MiniLM (its float16 vectors agree with fresh ones; a store builds from it without
embedding anything, and the time it takes is printed).
"""

from __future__ import annotations

import csv
import gzip
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from scope_shared.embeddings import MiniLMEmbedder
from scope_shared.errors import EmbedderError
from scope_shared.store import AnchorStore
from scope_shared.suites import AnchorSuite, SuiteQuestion, load_suite
from scope_shared.suites.graders import grader_named

pytestmark = pytest.mark.integration

#: ../shared/data beside the repository; SCOPE_SHARED_DATA overrides it (a git worktree elsewhere).
DATA = Path(os.environ.get("SCOPE_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
MIN_AGREEMENT = 0.97


@dataclass
class Cell:
    rows: int = 0
    agree: int = 0
    graded_right: int = 0
    recorded_right: int = 0

    @property
    def agreement(self) -> float:
        return self.agree / self.rows


def _rows(path: Path) -> Iterator[dict[str, str]]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # recorded responses run to tens of kB
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        yield from csv.DictReader(fh)


def agreement_table(data: Path) -> dict[tuple[str, str, str], Cell]:
    """(dataset, task, model) -> how the graded responses compare with the recorded grades."""
    table: dict[tuple[str, str, str], Cell] = defaultdict(Cell)
    for folder in sorted(p for p in data.iterdir() if (p / "responses.csv.gz").exists()):
        references = {r["query_id"]: r for r in _rows(folder / "references.csv.gz")}
        recorded = {
            (r["query_id"], r["model"]): float(r["correct"])
            for split in ("anchors", "test")
            for r in _rows(folder / f"{split}.csv.gz")
            if r["query_id"] in references
        }
        for row in _rows(folder / "responses.csv.gz"):
            ref = references.get(row["query_id"])
            if ref is None:
                continue
            graded = grader_named(ref["grader"]).grade(row["response"], ref["reference"])
            correct = recorded[(row["query_id"], row["model"])]
            cell = table[(folder.name, ref["task"], row["model"])]
            cell.rows += 1
            cell.agree += int((graded >= 0.5) == (correct >= 0.5))
            cell.graded_right += int(graded >= 0.5)
            cell.recorded_right += int(correct >= 0.5)
    return dict(table)


def format_table(table: dict[tuple[str, str, str], Cell]) -> str:
    lines = [
        f"{'dataset':<15} {'task':<14} {'model':<40} {'rows':>5} {'acc graded':>10} {'acc recorded':>12} "
        f"{'agreement':>9}"
    ]
    for (dataset, task, model), cell in sorted(table.items()):
        lines.append(
            f"{dataset:<15} {task:<14} {model:<40} {cell.rows:>5} {cell.graded_right / cell.rows:>10.4f} "
            f"{cell.recorded_right / cell.rows:>12.4f} {cell.agreement:>9.4f}"
        )
    rows = sum(c.rows for c in table.values())
    agree = sum(c.agree for c in table.values())
    lines.append(f"all: {agree} of {rows} rows agree ({agree / rows:.5f}) in {len(table)} (dataset, task, model) cells")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def table() -> dict[tuple[str, str, str], Cell]:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA} (set SCOPE_SHARED_DATA to its folder)")
    started = time.perf_counter()
    result = agreement_table(DATA)
    print(f"\n{format_table(result)}\ngraded in {time.perf_counter() - started:.1f} s")
    return result


def test_graders_agree_with_recorded_grades_in_every_cell(table: dict[tuple[str, str, str], Cell]) -> None:
    low = {key: round(cell.agreement, 4) for key, cell in table.items() if cell.agreement < MIN_AGREEMENT}
    assert not low, f"cells below {MIN_AGREEMENT}: {low}"


def test_every_dataset_with_responses_and_every_grader_kind_was_checked(
    table: dict[tuple[str, str, str], Cell],
) -> None:
    datasets = {dataset for dataset, _, _ in table}
    assert {"routerbench-zs", "zeroeval"} <= datasets
    tasks = {task for _, task, _ in table}
    assert {"arc-challenge", "winogrande", "gsm", "crux"} <= tasks  # choice, number and exact
    assert sum(cell.rows for cell in table.values()) > 50_000


if __name__ == "__main__":
    if not DATA.is_dir():
        sys.exit(f"shared data not found at {DATA}")
    print(format_table(agreement_table(DATA)))


# -- the packaged default suite against the shared data and the real MiniLM ---------------------------------


@pytest.fixture(scope="module")
def suite() -> AnchorSuite:
    return load_suite("default")


def test_default_suite_is_a_faithful_copy_of_anchor_rows_and_holds_no_test_query(suite: AnchorSuite) -> None:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    by_source: dict[str, dict[str, SuiteQuestion]] = defaultdict(dict)
    for q in suite:
        by_source[q.source][q.query_id.split("/", 1)[1]] = q
    checked = 0
    for source, questions in by_source.items():
        references = {r["query_id"]: r for r in _rows(DATA / source / "references.csv.gz")}
        for row in _rows(DATA / source / "anchors.csv.gz"):
            q = questions.get(row["query_id"])
            if q is None:
                continue
            assert row["query"] == q.query
            assert references[row["query_id"]]["reference"] == q.reference
            assert references[row["query_id"]]["grader"] == q.grader
            recorded = q.outcomes[row["model"]]
            assert recorded.correct == float(row["correct"])
            assert recorded.output_tokens == (int(row["output_tokens"]) if row["output_tokens"] else None)
            checked += 1
        assert checked
        test_ids = {r["query_id"] for r in _rows(DATA / source / "test.csv.gz")}
        test_texts = {r["query"] for r in _rows(DATA / source / "test.csv.gz")}
        assert not test_ids & set(questions)
        assert not test_texts & {q.query for q in questions.values()}
    assert checked == sum(len(q.outcomes) for q in suite)


def test_suite_vectors_match_fresh_minilm_and_a_store_builds_without_embedding(suite: AnchorSuite) -> None:
    minilm = MiniLMEmbedder()
    sample = suite.select(suite.ids[::25])
    try:
        fresh = minilm.embed([q.query[-1000:] for q in sample])
    except EmbedderError as exc:
        pytest.skip(f"MiniLM unavailable: {exc}")
    assert sample.vectors is not None
    cosines = np.sum(fresh * sample.vectors, axis=1)
    print(f"\ncosine of packaged vs fresh MiniLM vectors over {len(sample)} questions: min {cosines.min():.6f}")
    assert cosines.min() >= 0.999

    embedder = suite.embedder(minilm)
    assert embedder.name == minilm.name
    started = time.perf_counter()
    store = AnchorStore(embedder=embedder)
    report = store.add(suite.outcomes(), progress=False, batch_size=4096)
    seconds = time.perf_counter() - started
    print(f"store from the default suite: {report.outcomes} outcomes, {report.anchors_new} anchors in {seconds:.1f} s")
    assert report.anchors_new == len(suite)
    assert embedder.stats == {"hits": len(suite), "misses": 0}
    question = suite.questions[7]
    hits = store.query(store.embed([question.query]), k=1)
    assert hits[0][0].question == question.query
