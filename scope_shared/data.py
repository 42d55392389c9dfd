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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scope_shared.errors import DataError
from scope_shared.types import ModelCard, Outcome

__all__ = ["as_outcome", "check_model_name", "load_outcomes", "load_prices", "outcome_from_row"]

REQUIRED = ("query", "model", "correct")


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        msg = f"{path}: no such file"
        raise DataError(msg)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


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
    try:
        correct = _number(row["correct"], integer=False)
        if correct is None:
            msg = "correct is empty"
            raise ValueError(msg)
        qid = row.get("query_id")
        task = row.get("task")
        return Outcome(
            query=str(row["query"]),
            model=str(row["model"]),
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


def _rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    name = path.name.removesuffix(".gz")
    with _open_text(path) as fh:
        if name.endswith(".jsonl") or name.endswith(".ndjson"):
            for lineno, line in enumerate(fh, start=1):
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
        else:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                msg = f"{path}: missing column(s) {missing}; found {header}"
                raise DataError(msg)
            for row in reader:
                yield reader.line_num, row


def load_outcomes(path: str | Path) -> list[Outcome]:
    """Read every outcome of a CSV/JSONL file (``.gz`` allowed); raises :class:`DataError` on any bad row."""
    p = Path(path)
    out: list[Outcome] = []
    try:
        for lineno, row in _rows(p):
            out.append(outcome_from_row(row, where=f"{p}:{lineno}"))
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, csv.Error) as exc:
        msg = f"{p}: cannot read ({type(exc).__name__}: {exc}); is the file truncated or not UTF-8?"
        raise DataError(msg) from None
    return out


def load_prices(path: str | Path) -> list[ModelCard]:
    """Read a price table ``model,input_per_mtok,output_per_mtok`` into model cards."""
    p = Path(path)
    cards: dict[str, ModelCard] = {}
    try:
        with _open_text(p) as fh:
            reader = csv.DictReader(fh)
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
