"""The sums behind each model's statistics, as a writer's record in the side collection holds them, and which
anchor metadata enters them.

Per model: outcomes, correct, outcomes with tokens and summed log tokens; besides, the anchors counted and the
anchors' input tokens and characters. :class:`Totals` counts anchors' metadata into them, merges them, and
writes and reads them as a record's metadata (``n::<model>``, ``c::<model>``, ``nt::<model>``, ``lt::<model>``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scope_shared.store.records import CHARS, CORRECT, IN_TOKENS, TOKENS, log_tokens
from scope_shared.types import ModelStats

__all__ = ["ANCHORS", "STATS_BASE", "STATS_PREFIX", "Totals", "counted"]

#: Ids of the writers' records in the side collection (``stats:<writer>``), and of the base record.
STATS_PREFIX = "stats:"
STATS_BASE = STATS_PREFIX + "base"
_FIELDS = ("n", "c", "nt", "lt")
ANCHORS = "anchors"


def counted(key: str) -> bool:
    """Whether an anchor metadata key enters the totals."""
    return key.startswith((CORRECT, TOKENS)) or key in (CHARS, IN_TOKENS)


@dataclass(slots=True)
class Totals:
    """Sums behind each model's statistics: per model (n, correct, n with tokens, summed log tokens)."""

    models: dict[str, list[float]] = field(default_factory=dict)
    anchors: float = 0.0
    in_tokens: float = 0.0
    in_chars: float = 0.0

    def add_meta(self, meta: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
        """Count an anchor's metadata ``meta`` merged over ``old`` (its metadata before the write; None: new)."""
        if old is None:
            self.anchors += 1
            old = {}
        for key, value in meta.items():
            if key.startswith(CORRECT):
                acc = self.models.setdefault(key[len(CORRECT) :], [0.0, 0.0, 0.0, 0.0])
                prev = old.get(key)
                acc[0] += 0 if prev is not None else 1
                acc[1] += float(value) - (float(prev) if prev is not None else 0.0)
            elif key.startswith(TOKENS):
                acc = self.models.setdefault(key[len(TOKENS) :], [0.0, 0.0, 0.0, 0.0])
                prev = old.get(key)
                acc[2] += 0 if prev is not None else 1
                acc[3] += log_tokens(value) - (log_tokens(prev) if prev is not None else 0.0)
        in_tok, chars = meta.get(IN_TOKENS), meta.get(CHARS, old.get(CHARS))
        if isinstance(in_tok, int | float) and isinstance(chars, int | float) and chars > 0:
            prev = old.get(IN_TOKENS)
            if isinstance(prev, int | float):
                self.in_tokens += float(in_tok) - float(prev)
            else:
                self.in_tokens += float(in_tok)
                self.in_chars += float(chars)

    def merge(self, other: Totals) -> None:
        for model, vals in other.models.items():
            acc = self.models.setdefault(model, [0.0, 0.0, 0.0, 0.0])
            for i, v in enumerate(vals):
                acc[i] += v
        self.anchors += other.anchors
        self.in_tokens += other.in_tokens
        self.in_chars += other.in_chars

    @property
    def outcomes(self) -> int:
        return round(sum(vals[0] for vals in self.models.values()))

    def to_meta(self) -> dict[str, float]:
        meta: dict[str, float] = {ANCHORS: self.anchors, "in_tokens": self.in_tokens, "in_chars": self.in_chars}
        for model, vals in self.models.items():
            meta |= {f"{name}::{model}": v for name, v in zip(_FIELDS, vals, strict=True)}
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Totals:
        out = cls(
            anchors=float(meta.get(ANCHORS, 0.0)),
            in_tokens=float(meta.get("in_tokens", 0.0)),
            in_chars=float(meta.get("in_chars", 0.0)),
        )
        for key, value in meta.items():
            field_name, sep, model = key.partition("::")
            if sep and field_name in _FIELDS:
                acc = out.models.setdefault(model, [0.0, 0.0, 0.0, 0.0])
                acc[_FIELDS.index(field_name)] = float(value)
        return out

    @classmethod
    def count(cls, metas: Iterable[Mapping[str, Any]]) -> Totals:
        """Totals counted from anchors' metadata (a full scan)."""
        out = cls()
        for meta in metas:
            out.add_meta(meta)
        return out

    def stats(self) -> dict[str, ModelStats]:
        return {
            model: ModelStats(
                n=round(n),
                p_correct=min(1.0, max(0.0, s / n)),
                mean_log_tokens=lt / nt if nt >= 0.5 else None,
                n_tokens=round(nt),
            )
            for model, (n, s, nt, lt) in sorted(self.models.items())
            if n >= 0.5
        }
