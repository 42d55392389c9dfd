"""Exact replay of cascades from recorded responses: the figures a user would have got.

Each held-out query is replayed as a user's cascade would run: the engine's pre-hoc estimates start it, each
model it calls answers with its real recorded response (``responses.csv.gz``), the answer is read by the
query's grader, the posterior moves, and the cascade stops or calls again; what it returns is graded against the
gold reference (``references.csv.gz``) and it pays the recorded tokens x prices of every model it called.

The posterior is calibrated on the anchors only (:func:`calibration_rows`), with out-of-sample estimates of the
anchors from :func:`crossfit_estimates`: each fold of anchors is estimated by an estimator fitted on the others.
:func:`cascade_report` puts the pre-hoc router, the cascade, the single models' hull and the oracle side by side
on the same queries and pool.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scope_shared.cascade.calibration import CalibrationRow, CascadeCalibration, fit_calibration
from scope_shared.cascade.checkers import ModelAnswer
from scope_shared.cascade.plan import Cascade, final_answer
from scope_shared.cascade.planner import value_array
from scope_shared.cascade.state import neighbours_of
from scope_shared.engine import ScopeEngine
from scope_shared.errors import ConfigError, DataError
from scope_shared.estimators.base import Estimator
from scope_shared.metrics import aiq, hull_aiq, upper_hull
from scope_shared.store import AnchorStore
from scope_shared.store.records import anchor_id
from scope_shared.suites.graders import Grader, grader_named
from scope_shared.types import DEFAULT_TOKENS_PER_CHAR, NO_ANSWER, Estimate, ModelCard, Outcome

__all__ = [
    "CascadeReplay",
    "RecordedAnswers",
    "Reference",
    "ReplayItem",
    "calibration_rows",
    "cascade_report",
    "crossfit_estimates",
    "replay_cascade",
    "replay_items",
    "summary_lines",
    "with_answers",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
EstimatorFactory = Callable[[], Estimator]

_FIELD_LIMIT = 50_000_000


@dataclass(frozen=True)
class Reference:
    """A query's gold answer and how to grade a response against it."""

    task: str
    reference: str
    kind: str


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        msg = f"{path}: no such file"
        raise DataError(msg)
    csv.field_size_limit(_FIELD_LIMIT)
    opener = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    with io.TextIOWrapper(opener, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


class RecordedAnswers:
    """Recorded raw responses and gold references of a dataset (see ``../shared/data/README.md``).

    Args:
        responses: (query_id, model) -> the model's raw response.
        references: query_id -> its reference.
        graders: graders of kinds beyond the built-in ones.
    """

    def __init__(
        self,
        *,
        responses: Mapping[tuple[str, str], str],
        references: Mapping[str, Reference],
        graders: Mapping[str, Grader] | None = None,
    ) -> None:
        self.responses = dict(responses)
        self.references = dict(references)
        self.graders = dict(graders or {})

    def __repr__(self) -> str:
        return f"RecordedAnswers(responses={len(self.responses)}, references={len(self.references)})"

    @classmethod
    def load(
        cls, responses: str | Path, references: str | Path, *, graders: Mapping[str, Grader] | None = None
    ) -> RecordedAnswers:
        """Read ``responses.csv.gz`` (query_id, model, response) and ``references.csv.gz`` (query_id, task,
        reference, grader); every value is text, ``NA`` and empty strings included."""
        resp: dict[tuple[str, str], str] = {}
        for i, row in enumerate(_csv_rows(Path(responses))):
            try:
                resp[(row["query_id"], row["model"])] = row["response"]
            except KeyError as exc:
                msg = f"{responses}: row {i + 1} lacks column {exc}; need query_id, model, response"
                raise DataError(msg) from None
        refs: dict[str, Reference] = {}
        for i, row in enumerate(_csv_rows(Path(references))):
            try:
                refs[row["query_id"]] = Reference(task=row["task"], reference=row["reference"], kind=row["grader"])
            except KeyError as exc:
                msg = f"{references}: row {i + 1} lacks column {exc}; need query_id, task, reference, grader"
                raise DataError(msg) from None
        return cls(responses=resp, references=refs, graders=graders)

    def grader(self, kind: str) -> Grader:
        return grader_named(kind, extra=self.graders)

    def answer(self, query_id: str | None, model: str) -> str | None:
        """The extracted answer of a recorded response (:data:`NO_ANSWER` when unreadable; None: no record)."""
        if query_id is None:
            return None
        ref = self.references.get(query_id)
        text = self.responses.get((query_id, model))
        if ref is None or text is None:
            return None
        found = self.grader(ref.kind).extract(text) if text.strip() else None
        return NO_ANSWER if found is None else found


def with_answers(rows: Sequence[Outcome], recorded: RecordedAnswers) -> list[Outcome]:
    """``rows`` with the extracted answer of their recorded response (rows without one are unchanged)."""
    out = []
    for o in rows:
        a = recorded.answer(o.query_id, o.model)
        out.append(o if a is None else o.model_copy(update={"answer": a}))
    return out


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


@dataclass(frozen=True)
class ReplayItem:
    """One held-out query with everything its replay needs."""

    query: str
    query_id: str
    kind: str
    estimates: Mapping[str, Estimate]
    texts: Mapping[str, str]
    correct: Mapping[str, float]
    costs: Mapping[str, float]


def replay_items(
    test: Sequence[Outcome],
    estimates: Mapping[str, Mapping[str, Estimate]],
    recorded: RecordedAnswers,
    cards: Mapping[str, ModelCard],
    pool: Sequence[str],
    *,
    tokens_per_char: float = DEFAULT_TOKENS_PER_CHAR,
) -> list[ReplayItem]:
    """The test queries with a reference, an estimate and a recorded response of every ``pool`` model.

    Each response is graded by the query's grader against its reference; costs are the recorded tokens x prices.
    """
    by_q: dict[str, dict[str, Outcome]] = defaultdict(dict)
    for o in test:
        by_q[o.query][o.model] = o
    items = []
    for q, per in by_q.items():
        if q not in estimates or not all(m in per for m in pool):
            continue
        qid = per[pool[0]].query_id
        ref = recorded.references.get(qid) if qid is not None else None
        if ref is None or qid is None or not all((qid, m) in recorded.responses for m in pool):
            continue
        grader = recorded.grader(ref.kind)
        texts = {m: recorded.responses[(qid, m)] for m in pool}
        costs = {}
        for m in pool:
            o = per[m]
            in_tok = o.input_tokens if o.input_tokens is not None else len(q) * tokens_per_char
            costs[m] = cards[m].cost(in_tok, o.output_tokens or 0)
        items.append(
            ReplayItem(
                query=q,
                query_id=qid,
                kind=ref.kind,
                estimates={m: estimates[q][m] for m in pool},
                texts=texts,
                correct={m: grader.grade(texts[m], ref.reference) for m in pool},
                costs=costs,
            )
        )
    return items


def _replay_one(
    cascade: Cascade, item: ReplayItem, values: FloatArray, graders: Mapping[str, Grader] | None
) -> tuple[FloatArray, FloatArray, FloatArray, list[dict[str, int]]]:
    grader = cascade.grader if cascade.grader.kind == item.kind else grader_named(item.kind, extra=graders)
    qm = cascade.query_model(item.estimates, grader=grader)
    planner = qm.planner(values, depth=cascade.depth, max_calls=cascade.max_calls)
    n = len(values)
    acc, cost, calls = np.zeros(n), np.zeros(n), np.zeros(n)
    answered: list[dict[str, int]] = [{} for _ in range(n)]
    extracted = {m: (grader.extract(t) if t.strip() else None) for m, t in item.texts.items()}

    def go(node: Any, idx: npt.NDArray[np.int64]) -> None:
        verdict = planner.decide(node)
        picks = verdict.choice[idx]
        for c in np.unique(picks):
            sub = idx[picks == c]
            if c < 0:
                model, _, _ = final_answer(qm, node)
                acc[sub] = item.correct[model] if model is not None else 0.0
                cost[sub] = sum(item.costs[m] for m in node.called)
                calls[sub] = len(node.called)
                if model is not None:
                    for i in sub:
                        answered[i][model] = 1
                continue
            m = verdict.models[int(c)]
            obs = qm.observe(node, ModelAnswer(model=m, text=item.texts[m], answer=extracted[m]), cascade.checkers)
            go(obs.node, sub)

    go(qm.root(), np.arange(n))
    return acc, cost, calls, answered


def replay_cascade(
    items: Sequence[ReplayItem],
    cascade: Cascade,
    values: Sequence[float | None],
    *,
    graders: Mapping[str, Grader] | None = None,
) -> list[dict[str, Any]]:
    """The cascade's replayed accuracy, mean cost and mean calls at each value of a correct answer.

    Each item is read by the grader of its kind (``cascade.grader`` for its own kind, else a built-in one or one
    of ``graders``).
    """
    vals = value_array(values)
    acc, cost, calls = np.zeros(len(vals)), np.zeros(len(vals)), np.zeros(len(vals))
    share: list[dict[str, float]] = [defaultdict(float) for _ in vals]
    for item in items:
        a, c, k, answered = _replay_one(cascade, item, vals, graders)
        acc += a
        cost += c
        calls += k
        for i, per in enumerate(answered):
            for m in per:
                share[i][m] += 1.0
    n = max(len(items), 1)
    return [
        {
            "value_per_correct": v,
            "accuracy": float(acc[i] / n),
            "cost": float(cost[i] / n),
            "calls": float(calls[i] / n),
            "answer_share": {m: s / n for m, s in sorted(share[i].items())},
        }
        for i, v in enumerate(values)
    ]


def _curve_summary(
    curve: Sequence[Mapping[str, Any]], singles: Mapping[str, Mapping[str, float]], steps: int
) -> dict[str, Any]:
    """The figures of :func:`~scope_shared.evaluation.routing_report` for any accuracy/cost curve."""
    best = max(singles, key=lambda m: (singles[m]["accuracy"], -singles[m]["cost"]))
    cheap = min(singles, key=lambda m: (singles[m]["cost"], -singles[m]["accuracy"]))
    best_acc, best_cost = singles[best]["accuracy"], singles[best]["cost"]
    lo = singles[cheap]["cost"]
    points = [(pt["cost"], pt["accuracy"]) for pt in curve]
    within = [a for c, a in points if c <= best_cost + 1e-15]
    matched = [c for c, a in points if a >= best_acc - 1e-12]
    router = aiq(points, lo, best_cost, steps=steps)
    hull = hull_aiq([(s["cost"], s["accuracy"]) for s in singles.values()], lo, best_cost, steps=steps)
    return {
        "aiq": router,
        "hull_aiq": hull,
        "lift_over_singles": None if router is None or hull is None else router - hull,
        "acc_at_best_single_cost": max(within, default=None),
        "cost_to_match_best_single": (min(matched) / best_cost) if matched and best_cost else None,
        "max_accuracy": max((a for _, a in points), default=None),
    }


def cascade_report(
    items: Sequence[ReplayItem],
    cascade: Cascade,
    *,
    values: Sequence[float | None],
    graders: Mapping[str, Grader] | None = None,
    aiq_steps: int = 200,
) -> dict[str, Any]:
    """Pre-hoc router, cascade, single models' hull and oracle on the same queries and pool, side by side."""
    from scope_shared.evaluation import ReplayTable, routing_report

    if not items:
        msg = "no test query has a reference and a recorded response of every pool model; nothing to replay"
        raise DataError(msg)
    pool = list(items[0].estimates)
    table = ReplayTable(
        queries=[it.query for it in items],
        models=pool,
        p=np.array([[it.estimates[m].p_correct for m in pool] for it in items]),
        est_cost=np.array([[it.estimates[m].cost for m in pool] for it in items]),
        correct=np.array([[it.correct[m] for m in pool] for it in items]),
        cost=np.array([[it.costs[m] for m in pool] for it in items]),
    )
    t0 = time.perf_counter()
    prehoc = routing_report(table, values=values, aiq_steps=aiq_steps)
    curve = replay_cascade(items, cascade, values, graders=graders)
    seconds = time.perf_counter() - t0
    singles = prehoc["singles"]
    return {
        "pool": pool,
        "queries": len(items),
        "kinds": dict(sorted(_count(it.kind for it in items).items())),
        "settings": {
            "max_calls": cascade.max_calls,
            "depth": cascade.depth,
            "max_candidates": cascade.max_candidates,
            "checkers": [c.name for c in cascade.checkers],
        },
        "singles": singles,
        "singles_hull": [
            {"cost": c, "accuracy": a} for c, a in upper_hull([(s["cost"], s["accuracy"]) for s in singles.values()])
        ],
        "best_single": prehoc["best_single"],
        "cheapest": prehoc["cheapest"],
        "oracle": prehoc["oracle"],
        "prehoc": {
            "aiq": prehoc["aiq"],
            "hull_aiq": prehoc["hull_aiq"],
            "lift_over_singles": prehoc["lift_over_singles"],
            "acc_at_best_single_cost": prehoc["router_acc_at_best_single_cost"],
            "cost_to_match_best_single": prehoc["router_cost_to_match_best_single"],
            "max_accuracy": prehoc["router_max_accuracy"],
            "curve": prehoc["curve"],
        },
        "cascade": {**_curve_summary(curve, singles, aiq_steps), "curve": curve},
        "calibration": dict(cascade.calibration.report),
        "replay_s": round(seconds, 2),
    }


def _count(kinds: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for k in kinds:
        out[k] += 1
    return dict(out)


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
) -> CascadeCalibration:
    """Calibrate on the anchors' recorded responses with cross-fitted estimates (never the test split)."""
    rows = with_answers(anchors, recorded)
    oof = crossfit_estimates(
        rows, cards, embedder=embedder, estimator_factory=estimator_factory, k=k, folds=folds, seed=seed
    )

    def kind_of(o: Outcome) -> str | None:
        ref = recorded.references.get(o.query_id) if o.query_id is not None else None
        return ref.kind if ref is not None else None

    return fit_calibration(calibration_rows(rows, oof, kind_of), graders=recorded.graders)


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
        rows = with_answers(anchors, recorded)
        oof = crossfit_estimates(
            rows,
            list(cards.values()),
            embedder=embedder,
            estimator_factory=self.estimator_factory,
            k=k,
            folds=self.folds,
            seed=self.seed,
        )

        def kind_of(o: Outcome) -> str | None:
            ref = recorded.references.get(o.query_id) if o.query_id is not None else None
            return ref.kind if ref is not None else None

        calibration = fit_calibration(
            calibration_rows(rows, oof, kind_of), graders=recorded.graders, factors=self.factors
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


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The side-by-side table of a :func:`cascade_report`, as text lines."""

    def fmt(x: float | None, spec: str = ".4f") -> str:
        return "n/a" if x is None else format(x, spec)

    best = report["best_single"]
    oracle = report["oracle"]
    rows = [("pre-hoc router", report["prehoc"]), ("cascade", report["cascade"])]
    lines = [
        f"side by side on {report['queries']} test queries with references, {len(report['pool'])} models with "
        f"recorded responses; best single {best['model']} (accuracy {best['accuracy']:.3f}, ${best['cost']:.6f})",
        f"{'':16} {'AIQ':>7} {'lift over singles':>18} {'acc at best cost':>17} {'cost to match best':>19}",
    ]
    for name, r in rows:
        match = r["cost_to_match_best_single"]
        lines.append(
            f"{name:16} {fmt(r['aiq']):>7} {fmt(r['lift_over_singles'], '+.4f'):>18} "
            f"{fmt(r['acc_at_best_single_cost'], '.3f'):>17} {('never' if match is None else f'{match:.2f}x'):>19}"
        )
    hull = fmt(report["cascade"]["hull_aiq"])
    lines.append(f"{'singles hull':16} {hull:>7} {'+0.0000':>18} {best['accuracy']:>17.3f} {'1.00x':>19}")
    lines.append(
        f"{'oracle':16} {'':>7} {'':>18} {oracle['accuracy']:>17.3f} "
        f"{oracle['cost'] / best['cost'] if best['cost'] else float('nan'):>18.2f}x"
    )
    return lines
