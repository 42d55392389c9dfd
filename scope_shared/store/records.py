"""The anchor record format: how one anchor question and its outcomes sit in one Chroma record.

One record per anchor question; its id is a hash of the text, so the same text is one anchor. Outcomes live
in the record's metadata, one key per model and field (``c::<model>`` correctness, ``t::<model>`` output
tokens, ``a::<model>`` the extracted answer where one was recorded), so a new model's outcomes merge into
existing records in place, re-adding an outcome is idempotent, and writers in several processes never overwrite
each other's models. The question is the metadata key ``question`` (not the Chroma document: Chroma indexes
documents for full-text search, which halves write throughput and which routing never uses).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from scope_shared.embeddings import Matrix
from scope_shared.types import AnchorOutcome, AnchorRecord, Outcome

__all__ = [
    "ANSWER",
    "CORRECT",
    "QUESTION",
    "TOKENS",
    "anchor_id",
    "export_rows",
    "log_tokens",
    "outcomes_of",
    "question_of",
]

CORRECT = "c::"
TOKENS = "t::"
ANSWER = "a::"
QUESTION = "question"
#: Metadata keys of the anchor itself (not of a model's outcome).
CHARS = "chars"
IN_TOKENS = "in_tok"


def anchor_id(query: str) -> str:
    """The record id of an anchor question: a hash of its exact text."""
    return "a-" + hashlib.sha256(query.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def question_of(meta: Mapping[str, Any] | None) -> str:
    """An anchor's question text."""
    q = (meta or {}).get(QUESTION)
    return q if isinstance(q, str) else ""


def outcomes_of(meta: Mapping[str, Any]) -> dict[str, AnchorOutcome]:
    """Every model's outcome recorded in an anchor's metadata."""
    out: dict[str, AnchorOutcome] = {}
    for key, value in meta.items():
        if key.startswith(CORRECT):
            model = key[len(CORRECT) :]
            tokens = meta.get(TOKENS + model)
            answer = meta.get(ANSWER + model)
            out[model] = AnchorOutcome(
                correct=float(value),
                output_tokens=float(tokens) if tokens is not None else None,
                answer=answer if isinstance(answer, str) else None,
            )
    return out


def log_tokens(value: Any) -> float:
    """``log1p`` of a token count (the length scale every estimator works in)."""
    return math.log1p(max(0.0, float(value)))


def add_to_meta(meta: dict[str, Any], out: Outcome) -> None:
    """Write ``out``'s fields into an anchor's metadata (one model's keys and the anchor's own)."""
    meta[CORRECT + out.model] = float(out.correct)
    if out.output_tokens is not None:
        meta[TOKENS + out.model] = int(out.output_tokens)
    if out.answer is not None:
        meta[ANSWER + out.model] = out.answer
    if out.input_tokens is not None:
        meta[IN_TOKENS] = int(out.input_tokens)
    if out.query_id is not None:
        meta["query_id"] = out.query_id
    if out.task is not None:
        meta["task"] = out.task


def new_meta(query: str) -> dict[str, Any]:
    """The metadata an anchor starts with."""
    return {CHARS: len(query), QUESTION: query}


def without_question(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` less its question (an update of an existing anchor leaves its question as it is)."""
    return {k: v for k, v in meta.items() if k != QUESTION}


def export_rows(pages: Iterable[Any]) -> tuple[list[AnchorRecord], Matrix, list[float | None]]:
    """Chroma ``get`` pages (ids, metadatas, embeddings) as anchors, their vectors and their input tokens."""
    records: list[AnchorRecord] = []
    vectors: list[Any] = []
    in_tokens: list[float | None] = []
    for page in pages:
        embs = page["embeddings"] if page["embeddings"] is not None else []
        for rid, meta, vec in zip(page["ids"] or [], page["metadatas"] or [], embs, strict=True):
            meta = meta or {}
            records.append(
                AnchorRecord(anchor_id=rid, question=question_of(meta), similarity=1.0, outcomes=outcomes_of(meta))
            )
            vectors.append(np.asarray(vec, dtype=np.float32))
            in_tok = meta.get(IN_TOKENS)
            in_tokens.append(float(in_tok) if isinstance(in_tok, int | float) else None)
    matrix = np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
    return records, matrix, in_tokens
