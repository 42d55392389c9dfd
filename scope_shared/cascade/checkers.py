"""Post-hoc evidence about one model's answer: pluggable checkers.

A :class:`Checker` looks at one :class:`ModelAnswer` and returns a :class:`Signal`: whether the answer can take
part at all (``usable``) and how many log-odds it adds to that model's own P(correct) for this query. Agreement
between models is not a checker: it is the structure of the posterior itself (:mod:`.posterior`), with answers
compared by the grader's ``agree``.

Built in:

- :class:`ParseChecker`: an empty response, or one the grader cannot read an answer from, cannot be graded
  correct; it is set aside (no agreement weight, and it is never the answer returned while another exists).
- :class:`LogprobChecker`: the mean token log-probability of the response, where the provider returned them,
  through a logistic calibration fitted on recorded (log-probability, grade) pairs
  (:class:`LogprobCalibration`). Without log-probabilities, or without a calibration for the grader kind, it
  adds nothing and its signal says why.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scope_shared.errors import ConfigError, DataError

__all__ = [
    "Checker",
    "LogprobCalibration",
    "LogprobChecker",
    "ModelAnswer",
    "ParseChecker",
    "Signal",
    "mean_logprob",
]


@dataclass(frozen=True)
class ModelAnswer:
    """One model's answer to the query.

    Attributes:
        model: the model that answered.
        text: its raw response.
        answer: the final answer the grader extracted (None: none could be read).
        logprobs: the response tokens' log-probabilities, where the provider returned them.
    """

    model: str
    text: str
    answer: str | None
    logprobs: Sequence[float] | None = None


@dataclass(frozen=True)
class Signal:
    """What one checker says about one answer.

    Attributes:
        checker: the checker's name.
        usable: False when the answer cannot be correct (it then takes no part in agreement).
        log_odds: added to the model's log-odds of being correct on this query (0: no effect).
        note: what was seen, for people.
    """

    checker: str
    usable: bool = True
    log_odds: float = 0.0
    note: str = ""

    def summary(self) -> dict[str, Any]:
        return {"checker": self.checker, "usable": self.usable, "log_odds": self.log_odds, "note": self.note}


class Checker(ABC):
    """Looks at one model's answer; see the module docstring."""

    #: The checker's name, as shown in each signal.
    name: str = ""

    @abstractmethod
    def check(self, answer: ModelAnswer, *, kind: str) -> Signal:
        """The signal of ``answer`` to a query graded by the ``kind`` grader."""


class ParseChecker(Checker):
    """Empty and unreadable answers: set aside (they cannot be graded correct)."""

    name = "parse"

    def check(self, answer: ModelAnswer, *, kind: str) -> Signal:
        if not answer.text.strip():
            return Signal(self.name, usable=False, note="empty response")
        if answer.answer is None:
            return Signal(self.name, usable=False, note=f"no answer the {kind!r} grader can read")
        shown = answer.answer if len(answer.answer) <= 40 else answer.answer[:37] + "..."
        return Signal(self.name, note=f"answer {shown!r}")


def mean_logprob(logprobs: Sequence[float] | None) -> float | None:
    """The mean of finite token log-probabilities (None when there are none)."""
    if not logprobs:
        return None
    vals = [float(v) for v in logprobs if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


@dataclass(frozen=True)
class LogprobCalibration:
    """Per grader kind: ``logit P(correct) = logit p_prehoc + bias + weight * mean_logprob``.

    Fitted with the pre-hoc log-odds as an offset, so ``weight`` and ``bias`` are what log-probabilities add
    beyond the pre-hoc estimate (:meth:`fit`).
    """

    coef: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # kind -> (bias, weight)
    pairs: Mapping[str, int] = field(default_factory=dict)

    def log_odds(self, kind: str, feature: float) -> float | None:
        """The log-odds the feature adds for this grader kind (None: not calibrated for it)."""
        found = self.coef.get(kind)
        if found is None:
            return None
        bias, weight = found
        return bias + weight * feature

    @classmethod
    def fit(
        cls,
        rows: Sequence[tuple[str, float, float, float]],
        *,
        l2: float = 1.0,
        min_pairs: int = 50,
    ) -> LogprobCalibration:
        """Fit on ``(kind, mean_logprob, prehoc_p, correct)`` rows by penalised logistic regression (Newton).

        Kinds with fewer than ``min_pairs`` rows, or with one class only, are left uncalibrated.
        """
        by_kind: dict[str, list[tuple[float, float, float]]] = {}
        for kind, feature, p, y in rows:
            if not (math.isfinite(feature) and 0.0 <= p <= 1.0 and 0.0 <= y <= 1.0):
                msg = f"bad logprob calibration row {(kind, feature, p, y)!r}"
                raise DataError(msg)
            by_kind.setdefault(kind, []).append((feature, p, y))
        coef: dict[str, tuple[float, float]] = {}
        pairs: dict[str, int] = {}
        for kind, items in by_kind.items():
            arr = np.array(items, dtype=np.float64)
            label = arr[:, 2] >= 0.5
            if len(arr) < min_pairs or label.all() or not label.any():
                continue
            pc = np.clip(arr[:, 1], 1e-4, 1 - 1e-4)
            offset = np.log(pc / (1 - pc))
            x = np.stack([np.ones(len(arr)), arr[:, 0]], axis=1)
            w = np.zeros(2)
            for _ in range(50):
                mu = 1.0 / (1.0 + np.exp(-(offset + x @ w)))
                grad = x.T @ (label - mu) - l2 * w * np.array([0.0, 1.0])
                hess = (x * (mu * (1 - mu))[:, None]).T @ x + l2 * np.diag([1e-6, 1.0])
                step = np.linalg.solve(hess, grad)
                w = w + step
                if float(np.abs(step).max()) < 1e-9:
                    break
            coef[kind] = (float(w[0]), float(w[1]))
            pairs[kind] = len(arr)
        return cls(coef=coef, pairs=pairs)

    def to_json(self) -> dict[str, Any]:
        return {"coef": {k: list(v) for k, v in self.coef.items()}, "pairs": dict(self.pairs)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LogprobCalibration:
        return cls(
            coef={str(k): (float(v[0]), float(v[1])) for k, v in dict(data.get("coef", {})).items()},
            pairs={str(k): int(v) for k, v in dict(data.get("pairs", {})).items()},
        )


class LogprobChecker(Checker):
    """The response's mean token log-probability, through a :class:`LogprobCalibration`.

    Args:
        calibration: fitted on recorded pairs; None (or a kind it has no fit for) means the signal is shown but
            adds nothing, and says it is not calibrated. Log-probabilities are not kept in the anchor store:
            fit the calibration on a run that recorded them (e.g. profiling a model on a suite).
    """

    name = "logprob"

    def __init__(self, *, calibration: LogprobCalibration | None = None) -> None:
        if calibration is not None and not isinstance(calibration, LogprobCalibration):
            msg = f"calibration must be a LogprobCalibration, got {type(calibration).__name__}"
            raise ConfigError(msg)
        self.calibration = calibration

    def check(self, answer: ModelAnswer, *, kind: str) -> Signal:
        feature = mean_logprob(answer.logprobs)
        if feature is None:
            return Signal(self.name, note="no token log-probabilities returned: no effect")
        shift = self.calibration.log_odds(kind, feature) if self.calibration is not None else None
        if shift is None:
            return Signal(self.name, note=f"mean logprob {feature:.3f}; not calibrated for {kind!r}: no effect")
        return Signal(self.name, log_odds=shift, note=f"mean logprob {feature:.3f}: {shift:+.2f} log-odds")


def signals_of(
    checkers: Sequence[Checker], answer: ModelAnswer, *, kind: str
) -> tuple[tuple[Signal, ...], bool, float]:
    """Every checker's signal, whether the answer is usable, and the total log-odds shift."""
    signals = tuple(c.check(answer, kind=kind) for c in checkers)
    usable = answer.answer is not None and all(s.usable for s in signals)
    return signals, usable, float(sum(s.log_odds for s in signals))


DEFAULT_CHECKERS: tuple[Checker, ...] = (ParseChecker(), LogprobChecker())


def default_checkers() -> tuple[Checker, ...]:
    """The parse and (uncalibrated) log-probability checkers."""
    return DEFAULT_CHECKERS
