"""Exact replay of cascades from recorded responses: the figures a user would have got.

Each held-out query is replayed as a user's cascade would run: the engine's pre-hoc estimates start it, each
model it calls answers with its real recorded response (``responses.csv.gz``), the answer is read by the
query's grader, the posterior moves, and the cascade stops or calls again; what it returns is graded against the
gold reference (``references.csv.gz``) and it pays the recorded tokens x prices of every model it called.

The posterior is calibrated on the anchors only, with out-of-sample estimates of the anchors: each fold of anchors
is estimated by an estimator fitted on the others. The jobs, one a module, all re-exported here:

- :mod:`.recorded`: the recorded responses and references (:class:`RecordedAnswers`, :func:`with_answers`);
- :mod:`.crossfit`: the calibration on the anchors (:func:`crossfit_estimates`, :func:`calibration_rows`,
  :func:`fit_from_anchors`);
- :mod:`.exact`: the replay itself (:func:`replay_items`, :func:`replay_cascade`);
- :mod:`.report`: pre-hoc router, cascade, single models' hull and oracle side by side (:func:`cascade_report`,
  :func:`summary_lines`);
- here, :class:`CascadeReplay`: all of it as ``scope-router evaluate --cascade`` runs it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scope_shared.cascade.crossfit import EstimatorFactory, calibration_rows, crossfit_estimates, fit_from_anchors
from scope_shared.cascade.exact import ReplayItem, replay_cascade, replay_items
from scope_shared.cascade.plan import Cascade
from scope_shared.cascade.recorded import RecordedAnswers, Reference, with_answers
from scope_shared.cascade.report import cascade_report, summary_lines
from scope_shared.errors import ConfigError, DataError
from scope_shared.types import DEFAULT_TOKENS_PER_CHAR, Estimate, ModelCard, Outcome

__all__ = [
    "CascadeReplay",
    "RecordedAnswers",
    "Reference",
    "ReplayItem",
    "calibration_rows",
    "cascade_report",
    "crossfit_estimates",
    "fit_from_anchors",
    "replay_cascade",
    "replay_items",
    "summary_lines",
    "with_answers",
]


@dataclass(frozen=True)
class CascadeReplay:
    """Cascade replay settings for :func:`~scope_shared.evaluation.evaluate` (``scope-router evaluate --cascade``).

    Attributes:
        responses, references: the dataset's recorded responses and gold references.
        max_calls, depth, max_candidates: the :class:`Cascade` settings replayed.
        factors: latent difficulty factors of the calibrated posterior.
        folds, seed: the cross-fitting of the anchors' estimates the calibration uses.
        estimator_factory: a fresh estimator per fold (default: the learned estimator); use the same kind of
            estimator as the evaluation's, so the calibration sees estimates like those a query gets.
        pool: models the cascade may call (default: the evaluation's pool less models without a recorded
            response on every test query that has a reference).
    """

    responses: str | Path
    references: str | Path
    max_calls: int = 4
    depth: int = 3
    max_candidates: int = 8
    factors: int = 1
    folds: int = 5
    seed: int = 0
    estimator_factory: EstimatorFactory | None = None
    pool: Sequence[str] | None = None

    def __post_init__(self) -> None:
        for name in ("responses", "references"):
            path = Path(getattr(self, name))
            if not path.is_file():
                msg = f"{path}: no such file (the {name} a cascade replay reads; see ../shared/data/README.md)"
                raise DataError(msg)
        for name in ("max_calls", "depth", "max_candidates", "folds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "folds" else 1):
                msg = f"{name} must be an integer >= {2 if name == 'folds' else 1}, got {value!r}"
                raise ConfigError(msg)
        if self.factors not in (1, 2):
            msg = f"factors must be 1 or 2, got {self.factors!r}"
            raise ConfigError(msg)

    def run(
        self,
        *,
        anchors: Sequence[Outcome],
        test: Sequence[Outcome],
        estimates: Mapping[str, Mapping[str, Estimate]],
        cards: Mapping[str, ModelCard],
        pool: Sequence[str],
        embedder: Any,
        k: int,
        values: Sequence[float | None],
        tokens_per_char: float = DEFAULT_TOKENS_PER_CHAR,
    ) -> dict[str, Any]:
        """Calibrate on the anchors (cross-fitted), replay the test queries, and report side by side."""
        t0 = time.perf_counter()
        recorded = RecordedAnswers.load(self.responses, self.references)
        calibration = fit_from_anchors(
            anchors,
            recorded,
            list(cards.values()),
            embedder=embedder,
            estimator_factory=self.estimator_factory,
            k=k,
            folds=self.folds,
            seed=self.seed,
            factors=self.factors,
        )
        t_cal = time.perf_counter() - t0
        names = list(self.pool) if self.pool is not None else _answered_pool(test, recorded, pool)
        items = replay_items(test, estimates, recorded, cards, names, tokens_per_char=tokens_per_char)
        if not items:
            msg = f"no test query has a reference and a recorded response of every pool model {names}"
            raise DataError(msg)
        kinds = sorted({it.kind for it in items})
        cascade = Cascade(
            calibration=calibration,
            grader=recorded.grader(kinds[0]),
            max_calls=self.max_calls,
            depth=self.depth,
            max_candidates=self.max_candidates,
        )
        report = cascade_report(items, cascade, values=values, graders=recorded.graders)
        report["timing_s"] = {"calibrate": round(t_cal, 2), "replay": report.pop("replay_s")}
        report["factors"] = self.factors
        return report


def _answered_pool(test: Sequence[Outcome], recorded: RecordedAnswers, pool: Sequence[str]) -> list[str]:
    """The pool models with a recorded response on every test query that has a reference."""
    qids = {o.query_id for o in test if o.query_id is not None and o.query_id in recorded.references}
    return [m for m in pool if all((q, m) in recorded.responses for q in qids)]
