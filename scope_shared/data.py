"""Loaders for the canonical outcome format (CSV or JSONL, optionally gzipped) and price tables.

Outcome columns: ``query_id, query, model, correct, output_tokens, input_tokens, task``; ``query``,
``model`` and ``correct`` are required. Prices: ``model, input_per_mtok, output_per_mtok`` (USD per 1M
tokens). Every error names the file and the row.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scope_shared.errors import DataError
from scope_shared.types import ModelCard, Outcome

__all__ = [
    "RowCheck",
    "as_outcome",
    "check_model_name",
    "load_outcomes",
    "load_prices",
    "outcome_from_row",
    "read_rows",
    "reading",
]

REQUIRED = ("query", "model", "correct")
#: The longest line a loader reads (characters); a longer one is refused before it is held in memory.
MAX_LINE_CHARS = 2_000_000
#: The most lines a loader reads (blank ones included).
MAX_LINES = 20_000_000


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        msg = f"{path}: no such file"
        raise DataError(msg)
    if path.is_dir():
        msg = f"{path}: is a directory, not a file"
        raise DataError(msg)
    # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115


def _lines(fh: io.TextIOBase, path: Path, *, max_line_chars: int, max_lines: int) -> Iterator[str]:
    """``fh``'s lines, refusing a line or a file too long before holding it (a small .gz can hold gigabytes)."""
    for count in range(1, max_lines + 2):
        line = fh.readline(max_line_chars + 1)
        if not line:
            return
        if count > max_lines:
            msg = f"{path}: more than {max_lines:,} lines; split the file (or pass max_lines=)"
            raise DataError(msg)
        if len(line) > max_line_chars:
            msg = f"{path}:{count}: a line longer than {max_line_chars:,} characters; is this an outcome file?"
            raise DataError(msg)
        yield line


def _number(value: Any, *, integer: bool) -> float | int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    num = float(value)
    if not math.isfinite(num):
        msg = f"not a finite number: {value!r}"
        raise ValueError(msg)
    if integer:
        if num != int(num):
            msg = f"not a whole number: {value!r}"
            raise ValueError(msg)
        return int(num)
    return num


def outcome_from_row(row: Mapping[str, Any], *, where: str) -> Outcome:
    """Build an :class:`Outcome` from one raw row; ``where`` names it in errors."""
    missing = [c for c in REQUIRED if c not in row]
    if missing:
        msg = f"{where}: missing column(s) {missing}; required: {list(REQUIRED)}"
        raise DataError(msg)
    for name in ("query", "model"):
        if not isinstance(row[name], str):
            msg = f"{where}: {name} must be text, got {'null' if row[name] is None else type(row[name]).__name__}"
            raise DataError(msg)
    try:
        correct = _number(row["correct"], integer=False)
        if correct is None:
            msg = "correct is empty"
            raise ValueError(msg)
        qid = row.get("query_id")
        task = row.get("task")
        return Outcome(
            query=row["query"],
            model=row["model"],
            correct=correct,
            output_tokens=_number(row.get("output_tokens"), integer=True),  # type: ignore[arg-type]
            input_tokens=_number(row.get("input_tokens"), integer=True),  # type: ignore[arg-type]
            query_id=str(qid) if qid not in (None, "") else None,
            task=str(task) if task not in (None, "") else None,
        )
    except ValidationError as exc:
        errs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        msg = f"{where}: invalid outcome: {errs}"
        raise DataError(msg) from None
    except (TypeError, ValueError) as exc:
        msg = f"{where}: invalid outcome: {exc}"
        raise DataError(msg) from None


def as_outcome(item: Outcome | Mapping[str, Any], *, where: str) -> Outcome:
    """``item`` as an :class:`Outcome` (a raw row is parsed); ``where`` names it in errors."""
    if isinstance(item, Outcome):
        return item
    if isinstance(item, Mapping):
        return outcome_from_row(item, where=where)
    msg = f"{where}: expected an Outcome or a mapping, got {type(item).__name__}"
    raise DataError(msg)


def check_model_name(model: str, where: str) -> None:
    """:class:`DataError` for a model name with surrounding spaces or control characters."""
    if model != model.strip() or any(ord(ch) < 32 for ch in model):
        msg = f"{where}: model name {model!r} has surrounding spaces or control characters"
        raise DataError(msg)


class RowCheck:
    """Checks outcomes as they are read: each model name once, and no two different outcomes (correctness or
    output tokens) of one model on one query. Identical repeats pass."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._seen: dict[tuple[str, str], tuple[str, float, int | None]] = {}

    def __call__(self, outcome: Outcome, where: str) -> None:
        if outcome.model not in self._names:
            check_model_name(outcome.model, where)
            self._names.add(outcome.model)
        key = (outcome.query, outcome.model)
        prev = self._seen.get(key)
        if prev is not None and prev[1:] != (outcome.correct, outcome.output_tokens):
            msg = f"{where}: conflicts with {prev[0]}: two different outcomes of model {outcome.model!r} on one query"
            raise DataError(msg)
        self._seen[key] = (where, outcome.correct, outcome.output_tokens)


def read_rows(
    path: Path,
    *,
    required: Sequence[str],
    max_line_chars: int = MAX_LINE_CHARS,
    max_lines: int = MAX_LINES,
    allow_empty: bool = False,
) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Each row of a CSV or JSONL file (``.gz`` allowed) with its line number; :class:`DataError` for a line or
    file over the limits, a line that is not a JSON object, or a CSV header without the ``required`` columns
    (an empty CSV yields nothing when ``allow_empty``). Wrap the reading in :func:`reading`."""
    name = path.name.removesuffix(".gz")
    with _open_text(path) as fh:
        lines = _lines(fh, path, max_line_chars=max_line_chars, max_lines=max_lines)
        if name.endswith((".jsonl", ".ndjson")):
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    msg = f"{path}:{lineno}: not valid JSON: {exc}"
                    raise DataError(msg) from None
                if not isinstance(obj, dict):
                    msg = f"{path}:{lineno}: expected a JSON object per line"
                    raise DataError(msg)
                yield lineno, obj
            return
        csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # prompts can exceed csv's 128 kB default
        reader = csv.DictReader(lines)
        header = reader.fieldnames or []
        if not header and allow_empty:
            return
        missing = [c for c in required if c not in header]
        if missing:
            msg = f"{path}: missing column(s) {missing}; found {header}; required: {list(required)}"
            raise DataError(msg)
        for row in reader:
            yield reader.line_num, row


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn what reading a file can raise past its parsing (a truncated ``.gz``, bad UTF-8, a malformed CSV)
    into one :class:`DataError` naming the file."""
    try:
        yield
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, csv.Error) as exc:
        msg = f"{path}: cannot read ({type(exc).__name__}: {exc}); is the file truncated or not UTF-8?"
        raise DataError(msg) from None


def load_outcomes(
    path: str | Path, *, max_line_chars: int = MAX_LINE_CHARS, max_lines: int = MAX_LINES
) -> list[Outcome]:
    """Read every outcome of a CSV/JSONL file (``.gz`` allowed); raises :class:`DataError` on any bad row.

    The whole file is checked before anything is returned: a malformed row, a bad model name, or two
    different outcomes of one model on one query anywhere in the file name their rows. Lines longer than
    ``max_line_chars`` and files of more than ``max_lines`` lines are refused while streaming.
    """
    p = Path(path)
    out: list[Outcome] = []
    check = RowCheck()
    with reading(p):
        for lineno, row in read_rows(p, required=REQUIRED, max_line_chars=max_line_chars, max_lines=max_lines):
            where = f"{p}:{lineno}"
            outcome = outcome_from_row(row, where=where)
            check(outcome, where)
            out.append(outcome)
    return out


def load_prices(path: str | Path) -> list[ModelCard]:
    """Read a price table ``model,input_per_mtok,output_per_mtok`` into model cards."""
    p = Path(path)
    cards: dict[str, ModelCard] = {}
    try:
        with _open_text(p) as fh:
            reader = csv.DictReader(_lines(fh, p, max_line_chars=MAX_LINE_CHARS, max_lines=100_000))
            need = ("model", "input_per_mtok", "output_per_mtok")
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                msg = f"{p}: missing column(s) {missing}; found {reader.fieldnames}"
                raise DataError(msg)
            for row in reader:
                where = f"{p}:{reader.line_num}"
                try:
                    card = ModelCard(
                        name=row["model"],
                        input_per_mtok=float(row["input_per_mtok"]),
                        output_per_mtok=float(row["output_per_mtok"]),
                    )
                except (ValidationError, TypeError, ValueError) as exc:
                    msg = f"{where}: invalid price row: {exc}"
                    raise DataError(msg) from None
                if card.name in cards:
                    msg = f"{where}: duplicate model {card.name!r}"
                    raise DataError(msg)
                cards[card.name] = card
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, csv.Error) as exc:
        msg = f"{p}: cannot read ({type(exc).__name__}: {exc})"
        raise DataError(msg) from None
    if not cards:
        msg = f"{p}: no price rows"
        raise DataError(msg)
    return list(cards.values())
