"""Calibrating a cascade on the anchors: out-of-sample estimates of every anchor (cross-fitting), the rows
:func:`~.calibration.fit_calibration` reads, and the one-call fits: from an anchor store whose outcomes carry
their answers (:func:`fit_calibration_from_store`), or from a dataset's recorded responses
(:func:`fit_from_anchors`)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from scope_shared.cascade.calibration import CalibrationRow, CascadeCalibration, fit_calibration
from scope_shared.cascade.recorded import RecordedAnswers, with_answers
from scope_shared.cascade.state import neighbours_of
from scope_shared.embeddings import CachedEmbedder
from scope_shared.engine import ScopeEngine
from scope_shared.errors import ConfigError, DataError
from scope_shared.estimators.base import Estimator
from scope_shared.store import AnchorStore
from scope_shared.store.records import anchor_id
from scope_shared.suites.graders import Grader, grader_named
from scope_shared.types import NO_ANSWER, Estimate, ModelCard, Outcome

__all__ = [
    "EstimatorFactory",
    "calibration_rows",
    "crossfit_estimates",
    "fit_calibration_from_store",
    "fit_from_anchors",
]

logger = logging.getLogger(__name__)

EstimatorFactory = Callable[[], Estimator]


def crossfit_estimates(
    rows: Sequence[Outcome],
    cards: Sequence[ModelCard],
    *,
    embedder: Any,
    estimator_factory: EstimatorFactory | None = None,
    k: int = 10,
    folds: int = 5,
    seed: int = 0,
    batch_size: int = 256,
    store_options: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Estimate]]:
    """Out-of-sample estimates of every anchor: each of ``folds`` folds estimated from a store of the others.

    Args:
        rows: the anchors' outcomes.
        cards: the priced models.
        embedder: the stores' embedder (share a cached one: every anchor is embedded once per fold otherwise).
        estimator_factory: a fresh estimator per fold (default: the engine's default, the learned estimator).
        k, batch_size: as in :func:`~scope_shared.evaluation.evaluate`.
        folds, seed: the folds, split by query at random.
        store_options: more keyword arguments of each fold's in-memory :class:`AnchorStore`.
    """
    if folds < 2:
        msg = f"folds must be >= 2, got {folds}"
        raise ConfigError(msg)
    queries = sorted({o.query for o in rows})
    if len(queries) < folds:
        msg = f"{len(queries)} anchor queries cannot make {folds} folds"
        raise DataError(msg)
    in_tok: dict[str, float] = {}
    for o in rows:
        if o.input_tokens is not None:
            in_tok.setdefault(o.query, float(o.input_tokens))
    known = sorted({o.model for o in rows} & {c.name for c in cards})
    by_name = {c.name: c for c in cards}
    perm = np.random.default_rng(seed).permutation(len(queries))
    out: dict[str, dict[str, Estimate]] = {}
    for f, part in enumerate(np.array_split(perm, folds)):
        t0 = time.perf_counter()
        held = {queries[i] for i in part}
        store = AnchorStore(embedder=embedder, **dict(store_options or {}))
        store.add([o for o in rows if o.query not in held and o.model in by_name], progress=False)
        engine = ScopeEngine(
            store=store,
            models=[by_name[m] for m in known],
            estimator=estimator_factory() if estimator_factory is not None else None,
            k=k,
            unsent=None,
        )
        engine.wait_ready()
        chunk_queries = sorted(held)
        for start in range(0, len(chunk_queries), batch_size):
            chunk = chunk_queries[start : start + batch_size]
            est, _ = engine.estimate(chunk, input_tokens=[in_tok.get(q) for q in chunk])
            out.update(zip(chunk, est, strict=True))
        engine.close()
        logger.info("cross-fit fold %d/%d: %d anchors in %.1fs", f + 1, folds, len(held), time.perf_counter() - t0)
    return out


def calibration_rows(
    rows: Sequence[Outcome],
    estimates: Mapping[str, Mapping[str, Estimate]],
    kind_of: Callable[[Outcome], str | None],
) -> list[CalibrationRow]:
    """Calibration rows from anchor outcomes that carry a recorded answer and out-of-sample ``estimates``.

    Args:
        rows: anchor outcomes; those without an ``answer`` are left out.
        estimates: out-of-sample estimates by query (:func:`crossfit_estimates`).
        kind_of: the grader kind of an outcome's query (None: leave it out).
    """
    by_q: dict[str, dict[str, tuple[float, str | None]]] = defaultdict(dict)
    kinds: dict[str, str] = {}
    tasks: dict[str, str | None] = {}
    for o in rows:
        if o.answer is None or o.query not in estimates:
            continue
        kind = kind_of(o)
        if kind is None:
            continue
        kinds[o.query] = kind
        tasks[o.query] = o.task
        by_q[o.query][o.model] = (o.correct, None if o.answer == NO_ANSWER else o.answer)
    out = []
    for q, outcomes in by_q.items():
        est = estimates[q]
        out.append(
            CalibrationRow(
                anchor_id=anchor_id(q),
                kind=kinds[q],
                outcomes=outcomes,
                prehoc={m: e.p_correct for m, e in est.items() if m in outcomes},
                neighbours=tuple(neighbours_of(est)),
                task=tasks[q],
            )
        )
    return out


def fit_from_anchors(
    anchors: Sequence[Outcome],
    recorded: RecordedAnswers,
    cards: Sequence[ModelCard],
    *,
    embedder: Any,
    estimator_factory: EstimatorFactory | None = None,
    k: int = 10,
    folds: int = 5,
    seed: int = 0,
    factors: int = 1,
) -> CascadeCalibration:
    """Calibrate on the anchors' recorded responses with cross-fitted estimates (never the test split).

    Args:
        anchors: the anchors' outcomes (their recorded responses give each its extracted answer).
        recorded: the dataset's recorded responses and references.
        cards: the priced models.
        embedder, estimator_factory, k, folds, seed: as in :func:`crossfit_estimates`.
        factors: latent difficulty factors of the posterior (:func:`~.calibration.fit_calibration`).
    """
    rows = with_answers(anchors, recorded)
    oof = crossfit_estimates(
        rows, cards, embedder=embedder, estimator_factory=estimator_factory, k=k, folds=folds, seed=seed
    )
    return fit_calibration(calibration_rows(rows, oof, recorded.kind_of), graders=recorded.graders, factors=factors)


def fit_calibration_from_store(
    store: AnchorStore,
    cards: Sequence[ModelCard],
    *,
    grader: str | Grader,
    estimator_factory: EstimatorFactory | None = None,
    k: int = 10,
    folds: int = 5,
    seed: int = 0,
    factors: int = 1,
) -> CascadeCalibration:
    """Calibrate a cascade on your own anchor store: the outcomes recorded with an ``answer``.

    An outcome carries the answer when it was added with ``Outcome(..., answer=...)``: the grader's extracted
    answer of the model's response (:data:`~scope_shared.types.NO_ANSWER` when none could be read). Every anchor
    is estimated out of sample (:func:`crossfit_estimates`, the store's embedder behind a cache, so each question
    is embedded once), and read with ``grader``: the store keeps no task or grader kind per anchor, so the
    parameters are the kind's (no per-task groups).

    Args:
        store: the anchor store.
        cards: the priced models (those of the engine the cascade will run with).
        grader: the kind of every anchor's question (``choice``, ``number``, ``exact``) or your own
            :class:`~scope_shared.suites.graders.Grader`.
        estimator_factory, k, folds, seed: as in :func:`crossfit_estimates` (use the engine's kind of estimator).
        factors: latent difficulty factors of the posterior (:func:`~.calibration.fit_calibration`).

    Raises:
        DataError: no outcome in the store carries an answer.
    """
    graders = {grader.kind: grader} if isinstance(grader, Grader) else None
    kind = grader_named(grader, extra=graders).kind if isinstance(grader, str) else grader.kind
    records, _, in_tokens = store.export()
    rows = [
        Outcome(
            query=r.question,
            model=m,
            correct=o.correct,
            output_tokens=round(o.output_tokens) if o.output_tokens is not None else None,
            input_tokens=round(tok) if tok is not None else None,
            answer=o.answer,
        )
        for r, tok in zip(records, in_tokens, strict=True)
        for m, o in r.outcomes.items()
    ]
    if not any(o.answer is not None for o in rows):
        msg = (
            f"none of the {len(rows)} outcomes in the store carries a recorded answer; add outcomes with "
            "Outcome(..., answer=<the grader's extracted answer>) to calibrate a cascade on them"
        )
        raise DataError(msg)
    embedder = CachedEmbedder(store.embedder, maxsize=max(4096, len(records)))
    oof = crossfit_estimates(
        rows, cards, embedder=embedder, estimator_factory=estimator_factory, k=k, folds=folds, seed=seed
    )
    return fit_calibration(calibration_rows(rows, oof, lambda _: kind), graders=graders, factors=factors)
