"""Combining SCOPE's samples for one prompt, as the model card advises: share of 'yes', median length."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scope_shared.estimators.base import ModelStats
from scope_shared.estimators.scope.prompt import ParsedSample

__all__ = ["aggregate_samples", "typical_tokens"]


def typical_tokens(stats: ModelStats | None) -> float | None:
    if stats is None or stats.mean_log_tokens is None or stats.n_tokens == 0:
        return None
    return math.expm1(stats.mean_log_tokens)


def _beta_std(yes: int, no: int) -> float:
    """Std of the Jeffreys Beta(yes + 1/2, no + 1/2) posterior over the share of 'yes'."""
    a, b = yes + 0.5, no + 0.5
    return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))


@dataclass(frozen=True, slots=True)
class _Aggregate:
    p_correct: float | None
    output_tokens: float | None
    p_std: float | None
    parsed: int
    unparsed: int
    explanation: str | None


def aggregate_samples(samples: Sequence[ParsedSample]) -> _Aggregate:
    """Combine parsed samples: share of 'yes' among verdicts, median of stated lengths.

    ``p_std`` is the standard deviation of the Jeffreys posterior over that share, so 8 agreeing samples
    still carry some doubt. The explanation is the analysis of the first sample agreeing with the majority.
    """
    verdicts = [s.correct for s in samples if s.correct is not None]
    lengths = [s.length for s in samples if s.length is not None]
    yes = sum(1 for v in verdicts if v)
    p = yes / len(verdicts) if verdicts else None
    explanation = None
    if p is not None:
        majority = p >= 0.5
        explanation = next((s.analysis for s in samples if s.correct is majority and s.analysis), None)
    return _Aggregate(
        p_correct=p,
        output_tokens=float(statistics.median(lengths)) if lengths else None,
        p_std=_beta_std(yes, len(verdicts) - yes) if verdicts else None,
        parsed=len(verdicts),
        unparsed=len(samples) - len(verdicts),
        explanation=explanation,
    )
