"""Learned anchor estimator: shared logistic and length models over neighbour features, fitted on the store.

For a query and a candidate model, the features come from the anchors the engine retrieved and from the
query itself:

- ``model``: logit of the model's overall accuracy;
- ``knn``: logit of the model's similarity-weighted accuracy on its ``k`` nearest anchors, shrunk toward
  its overall accuracy (the anchor-statistics estimate);
- ``difficulty``: how the nearest anchors went for *every* model, as the weighted mean of each anchor's
  mean residual ``correct - model accuracy`` (far less noisy than one model's record on ten anchors);
- ``text``: a ridge regression of each anchor's easiness on the query embedding and length and structure
  statistics of the query text (:func:`text_stats`). Easiness is the item parameter of a Rasch model
  ``P(correct) = sigmoid(ability_model + easiness_anchor)`` fitted on all anchor outcomes; unlike a mean
  residual it is not biased when different models answered different anchors.

``p_correct = sigmoid(w . features + b)`` with one weight vector shared by all models, so a model added to
the store later (even with outcomes on a few anchors) is estimated without any training step of its own.
Output length is a shared Huber regression in ``log1p`` space on the model's neighbour lengths, its
overall length, the other models' length residuals on the neighbours and the query's input tokens.

A query that is itself an anchor (the same text, e.g. an answer recorded through ``engine.record``) moves
``exact_weight`` of the way to each model's recorded outcome and length on it. Leave-one-out fitting never
sees such repeats (and near-duplicates can disagree: Winogrande twins differ by one word and flip the
answer), so this weight is a stated choice, not a fitted one.

Fitting is leave-one-out over the anchors themselves: each anchor is treated as a query whose neighbours
are the other anchors, so the weights (and the calibration they imply) come from the anchors only. Call
:meth:`LearnedEstimator.fit` explicitly, or let the engine bind its store and fit on first use; the
estimator refits in a background thread when the number of anchors changes by more than ``refit_growth``
(the previous fit keeps serving meanwhile).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scope_shared.errors import (
    ConfigError,
    EstimatorUnavailableError,
    NoAnchorDataError,
    StoreUnavailableError,
)
from scope_shared.estimators.anchors import Prior
from scope_shared.estimators.base import AnchorSource, Estimator, Prediction, QueryContext
from scope_shared.metrics import auroc, expected_calibration_error
from scope_shared.types import DEFAULT_OUTPUT_TOKENS, AnchorEvidence, AnchorRecord, ModelStats

__all__ = ["FitReport", "LearnedEstimator", "P_FEATURES", "LENGTH_FEATURES", "text_stats"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Features of the correctness model, in coefficient order (the intercept comes last).
P_FEATURES = ("model", "knn", "difficulty", "text")
#: Features of the length model, in coefficient order (the intercept comes last).
LENGTH_FEATURES = ("knn_length", "model_length", "length_difficulty", "input_tokens")

_EPS = 1e-3
_DIGITS = re.compile(r"\d+")
_NUMBERS = re.compile(r"\d+(?:\.\d+)?")
_OPERATORS = re.compile(r"[+\-*/=%]")
_WORDS = re.compile(r"[a-z]+")


def text_stats(query: str, *, tail_chars: int = 1000) -> list[float]:
    """Length and structure statistics of a query (all but the first read only its tail).

    Log characters, log words, digit runs, lines, numbers, arithmetic operators, parentheses, distinct
    words, function definitions, indented lines and sentences, each on a scale of about 0..1.
    """
    tail = query[-tail_chars:]
    return [
        math.log1p(len(query)),
        math.log1p(len(tail.split())),
        len(_DIGITS.findall(tail)) / 50.0,
        tail.count("\n") / 20.0,
        len(_NUMBERS.findall(tail)) / 10.0,
        len(_OPERATORS.findall(tail)) / 20.0,
        tail.count("(") / 10.0,
        len(set(_WORDS.findall(tail.lower()))) / 100.0,
        float(tail.count("def ")),
        tail.count("    ") / 10.0,
        len(tail.split(".")) / 10.0,
    ]


def _rasch_easiness(correct: FloatArray, *, iters: int = 30, l2: float = 0.1) -> FloatArray:
    """Item easiness of a Rasch model ``P = sigmoid(ability_model + easiness_item)`` (nan: missing outcome).

    Alternating Newton steps on the items (with an L2 penalty, so that items every model got right or wrong
    stay finite) and on the models; rows without outcomes get 0.
    """
    has = ~np.isnan(correct)
    y = np.nan_to_num(correct)
    counts = has.sum(axis=0)
    ability = _logit(np.where(counts > 0, y.sum(axis=0) / np.maximum(counts, 1), 0.5))
    easy = np.zeros(correct.shape[0])
    for _ in range(iters):
        p = _sigmoid(ability[None, :] + easy[:, None])
        grad = ((y - p) * has).sum(axis=1) - l2 * easy
        easy = np.clip(easy + grad / ((p * (1 - p) * has).sum(axis=1) + l2), -10.0, 10.0)
        p = _sigmoid(ability[None, :] + easy[:, None])
        grad = ((y - p) * has).sum(axis=0) - 1e-3 * ability
        ability = np.clip(ability + grad / ((p * (1 - p) * has).sum(axis=0) + 1e-3), -10.0, 10.0)
    out: FloatArray = easy
    return out


def _logit(p: FloatArray) -> FloatArray:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    out: FloatArray = np.log(q / (1.0 - q))
    return out


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
    return out


@dataclass(frozen=True)
class FitReport:
    """What a fit saw and how well its leave-one-out predictions did on the anchors themselves."""

    anchors: int
    fit_anchors: int
    pairs: int
    models: int
    coef: dict[str, float]
    length_coef: dict[str, float]
    loo_auroc_within_model: float | None
    loo_ece: float | None
    loo_length_log_mae: float | None
    seconds: float
    note: str = ""


@dataclass(frozen=True)
class _Params:
    coef: FloatArray  # P_FEATURES + intercept
    coef_no_text: FloatArray  # P_FEATURES without "text" + intercept
    length_coef: FloatArray | None  # LENGTH_FEATURES + intercept; None: no token counts to fit on
    ridge_w: FloatArray | None
    ridge_mu: FloatArray | None
    ridge_b: float
    max_log_tokens: float
    anchors: int
    report: FitReport


@dataclass
class _Neighbourhood:
    """A batch of queries' retrieved anchors as dense arrays over (query, anchor, model)."""

    sims: FloatArray  # B x R, nan where a query has fewer anchors
    correct: FloatArray  # B x R x M, nan where missing
    log_tokens: FloatArray  # B x R x M, nan where missing
    p_target: FloatArray  # B x M: the target model's overall accuracy (leave-one-out while fitting)
    lt_target: FloatArray  # B x M: its mean log1p tokens
    p_all: FloatArray  # M: every model's overall accuracy (for neighbour residuals)
    lt_all: FloatArray  # M
    log_input: FloatArray  # B


def _features(nb: _Neighbourhood, *, k: int, power: float, strength: float) -> dict[str, FloatArray]:
    """The shared feature computation of fitting and predicting (B x M arrays)."""
    w = np.where(np.isnan(nb.sims), 0.0, np.maximum(np.nan_to_num(nb.sims), 0.0) ** power)  # B x R
    has = ~np.isnan(nb.correct)
    use = has & (np.cumsum(has, axis=1) <= k)
    wm = w[:, :, None] * use
    w_sum = wm.sum(axis=1)
    s = np.einsum("brm,brm->bm", wm, np.nan_to_num(nb.correct))
    p_knn = (s + strength * nb.p_target) / np.maximum(w_sum + strength, 1e-12)
    p_knn = np.where(w_sum + strength > 0, p_knn, nb.p_target)
    first_k = np.zeros_like(w)
    first_k[:, :k] = w[:, :k]

    def row_residual(values: FloatArray, centre: FloatArray) -> FloatArray:
        resid = values - centre[None, None, :]
        ok = ~np.isnan(resid)
        count = ok.sum(axis=2)
        row = np.where(count > 0, np.nansum(resid, axis=2) / np.maximum(count, 1), np.nan)  # B x R
        valid = ~np.isnan(row)
        num = (first_k * np.nan_to_num(row)).sum(axis=1)
        den = (first_k * valid).sum(axis=1)
        out: FloatArray = np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)
        return out

    difficulty = row_residual(nb.correct, nb.p_all)
    has_t = ~np.isnan(nb.log_tokens)
    use_t = has_t & (np.cumsum(has_t, axis=1) <= k)
    wt = w[:, :, None] * use_t
    wt_sum = wt.sum(axis=1)
    lt_target = np.where(np.isnan(nb.lt_target), 0.0, nb.lt_target)
    lt_knn = (np.einsum("brm,brm->bm", wt, np.nan_to_num(nb.log_tokens)) + strength * lt_target) / np.maximum(
        wt_sum + strength, 1e-12
    )
    length_difficulty = row_residual(nb.log_tokens, nb.lt_all)
    shape = p_knn.shape
    return {
        "model": _logit(nb.p_target),
        "knn": _logit(p_knn),
        "p_knn": p_knn,
        "n_eff": w_sum,
        "difficulty": np.broadcast_to(difficulty[:, None], shape),
        "knn_length": lt_knn,
        "model_length": lt_target,
        "length_difficulty": np.broadcast_to(length_difficulty[:, None], shape),
        "input_tokens": np.broadcast_to(nb.log_input[:, None], shape),
    }


def _fit_logistic(x: FloatArray, y: FloatArray, *, l2: float = 1e-2, iters: int = 50) -> FloatArray:
    """Logistic regression with soft labels by Newton's method; returns weights with the intercept last."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    beta = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = _sigmoid(xb @ beta)
        grad = xb.T @ (p - y) + reg * beta
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return beta


def _fit_huber(x: FloatArray, y: FloatArray, *, iters: int = 50) -> FloatArray:
    """Huber regression by iteratively reweighted least squares; returns weights with the intercept last."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    beta: FloatArray = np.linalg.lstsq(xb, y, rcond=None)[0].astype(np.float64)
    for _ in range(iters):
        r = y - xb @ beta
        scale = max(float(np.median(np.abs(r - np.median(r)))) / 0.6745, 1e-6)
        delta = 1.345 * scale
        wts = np.where(np.abs(r) <= delta, 1.0, delta / np.maximum(np.abs(r), 1e-12))
        new: FloatArray = np.linalg.solve(
            (xb * wts[:, None]).T @ xb + 1e-9 * np.eye(xb.shape[1]), (xb * wts[:, None]).T @ y
        ).astype(np.float64)
        if np.max(np.abs(new - beta)) < 1e-7:
            beta = new
            break
        beta = new
    out: FloatArray = beta
    return out


def _ridge(x: FloatArray, y: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray, float]:
    mu = x.mean(axis=0)
    xc = x - mu
    b = float(y.mean())
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - b))
    return w, mu, b


_STATE_VERSION = 2
_ARRAYS = ("coef", "coef_no_text", "length_coef", "ridge_w", "ridge_mu")


def _params_to_json(params: _Params) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: (None if getattr(params, name) is None else getattr(params, name).tolist()) for name in _ARRAYS
    }
    out |= {
        "ridge_b": params.ridge_b,
        "max_log_tokens": params.max_log_tokens,
        "anchors": params.anchors,
        "report": dataclasses.asdict(params.report),
        "version": _STATE_VERSION,
    }
    return out


def _params_from_json(data: dict[str, Any]) -> _Params:
    if data.get("version") != _STATE_VERSION:
        msg = f"saved fit version {data.get('version')!r}, expected {_STATE_VERSION}"
        raise ValueError(msg)
    arrays = {name: None if data[name] is None else np.asarray(data[name], dtype=np.float64) for name in _ARRAYS}
    if arrays["coef"] is None or arrays["coef_no_text"] is None:
        msg = "saved fit has no coefficients"
        raise ValueError(msg)
    return _Params(
        coef=arrays["coef"],
        coef_no_text=arrays["coef_no_text"],
        length_coef=arrays["length_coef"],
        ridge_w=arrays["ridge_w"],
        ridge_mu=arrays["ridge_mu"],
        ridge_b=float(data["ridge_b"]),
        max_log_tokens=float(data["max_log_tokens"]),
        anchors=int(data["anchors"]),
        report=FitReport(**data["report"]),
    )


class LearnedEstimator(Estimator):
    """Shared logistic (correctness) and Huber (length) models over neighbour features; see the module doc.

    Args:
        k: anchors per model used for the model's own neighbour statistics, and anchors used for the
            difficulty features (among those the store retrieved; the engine retrieves ``3 * k``).
        power: similarity weight exponent (``w = max(sim, 0) ** power``).
        prior_strength: pseudo-anchors of the model's overall record in its neighbour statistics.
        ridge_alpha: L2 penalty of the embedding-difficulty regression.
        max_fit_anchors: anchors used as leave-one-out queries when fitting (a seeded random subset above
            this; their neighbours are searched among all anchors).
        min_fit_pairs: below this many (anchor, model) outcomes the fit is skipped and estimates are the
            anchor statistics (weight 1 on ``knn``), which each estimate's ``reason`` says.
        refit_growth: refit when the number of anchors differs from the fitted one by more than this
            fraction.
        refit_check_s: after the store's version changes (any write), its anchors are counted to decide on
            a refit at most this often. Counting is a round trip that grows with the store (~13 ms at 100k
            anchors), so routers that record every call's outcome do not pay it on every decision.
        prior: used for models with no outcome on any anchor; without it those models raise
            :class:`NoAnchorDataError`.
        evidence: anchors kept per estimate as evidence (most similar first).
        tail_chars: characters at the end of a query that :func:`text_stats` reads.
        exact_weight: how far the estimate moves toward a model's recorded outcome on the query itself
            when the query is an anchor (0 ignores it, 1 repeats it).
        seed: seed of the fit subset and the ridge folds.
        max_store_anchors: a store with more anchors is fitted on a seeded random sample of this many (their
            neighbours searched within the sample), so a fit reads a bounded amount whatever the store's size.
        persist: save each fit with the store (:meth:`AnchorStore.save_state`) and, before fitting, load the
            one saved there: a fitted store opens ready in every process, and only growth refits.
    """

    name = "learned"

    def __init__(
        self,
        *,
        k: int = 10,
        power: float = 2.0,
        prior_strength: float = 1.0,
        ridge_alpha: float = 10.0,
        max_fit_anchors: int = 4000,
        min_fit_pairs: int = 200,
        refit_growth: float = 0.1,
        refit_check_s: float = 5.0,
        prior: Prior | None = None,
        evidence: int = 5,
        tail_chars: int = 1000,
        exact_weight: float = 0.5,
        seed: int = 0,
        max_store_anchors: int = 10_000,
        persist: bool = True,
    ) -> None:
        if k < 1:
            msg = f"k must be >= 1, got {k}"
            raise ConfigError(msg)
        if power < 0 or prior_strength < 0 or ridge_alpha <= 0:
            msg = (
                f"power and prior_strength must be >= 0 and ridge_alpha > 0, got {power}, {prior_strength}, "
                f"{ridge_alpha}"
            )
            raise ConfigError(msg)
        if not 0.0 <= exact_weight <= 1.0:
            msg = f"exact_weight must be in [0, 1], got {exact_weight}"
            raise ConfigError(msg)
        if max_fit_anchors < 2 or min_fit_pairs < 1 or refit_growth < 0 or max_store_anchors < max_fit_anchors:
            msg = (
                f"max_fit_anchors must be >= 2, min_fit_pairs >= 1, refit_growth >= 0 and max_store_anchors >= "
                f"max_fit_anchors, got {max_fit_anchors}, {min_fit_pairs}, {refit_growth}, {max_store_anchors}"
            )
            raise ConfigError(msg)
        if refit_check_s < 0:
            msg = f"refit_check_s must be >= 0, got {refit_check_s}"
            raise ConfigError(msg)
        self.k = k
        self.power = power
        self.prior_strength = prior_strength
        self.ridge_alpha = ridge_alpha
        self.max_fit_anchors = max_fit_anchors
        self.min_fit_pairs = min_fit_pairs
        self.refit_growth = refit_growth
        self.refit_check_s = refit_check_s
        self.prior = prior
        self.evidence = evidence
        self.tail_chars = tail_chars
        self.exact_weight = exact_weight
        self.seed = seed
        self.max_store_anchors = max_store_anchors
        self.persist = persist
        self._store: AnchorSource | None = None
        self._params: _Params | None = None
        self._lock = threading.Lock()
        self._seen_version: str | None = None
        self._counted_at = -math.inf
        self._refit_thread: threading.Thread | None = None

    # -- fitting -------------------------------------------------------------------------------

    @classmethod
    def from_store(cls, store: AnchorSource, **options: Any) -> LearnedEstimator:
        """Build, bind to ``store`` and fit now."""
        est = cls(**options)
        est.bind(store)
        est.fit(store)
        return est

    def bind(self, store: AnchorSource) -> None:
        """Keep ``store`` for the lazy first fit and later refits (the engine calls this)."""
        self._store = store

    @property
    def fitted(self) -> bool:
        return self._params is not None

    @property
    def report(self) -> FitReport | None:
        """The last fit's report (None before the first fit)."""
        return self._params.report if self._params is not None else None

    def fit(self, store: AnchorSource | None = None) -> FitReport:
        """Fit on every anchor of ``store`` (default: the bound one) by leave-one-out; returns the report."""
        store = store or self._store
        if store is None:
            msg = "LearnedEstimator has no store to fit on: call fit(store), or use it through ScopeEngine"
            raise ConfigError(msg)
        total = store.count()
        if total > self.max_store_anchors:
            records, embeddings, in_tokens = store.sample(self.max_store_anchors, seed=self.seed)
        else:
            records, embeddings, in_tokens = store.export()
        store.model_stats()  # refreshes tokens_per_char
        tpc = store.tokens_per_char
        tokens = [
            t if t is not None else max(1.0, len(r.question) * tpc) for r, t in zip(records, in_tokens, strict=True)
        ]
        report = self.fit_anchors(records, np.asarray(embeddings, dtype=np.float64), tokens)
        if len(records) < total:
            params = self._params
            assert params is not None
            note = f"fitted on a random {len(records)} of {total} anchors"
            report = dataclasses.replace(report, anchors=total, note="; ".join(x for x in (report.note, note) if x))
            self._set_params(dataclasses.replace(params, anchors=total, report=report))
        if self.persist:
            self._save(store)
        return report

    # -- persistence ---------------------------------------------------------------------------

    @property
    def state_key(self) -> str:
        """The key of this configuration's fit in the store's saved state."""
        config = [
            self.k,
            self.power,
            self.prior_strength,
            self.ridge_alpha,
            self.max_fit_anchors,
            self.min_fit_pairs,
            self.tail_chars,
            self.seed,
            self.max_store_anchors,
            _STATE_VERSION,
        ]
        return "learned-" + hashlib.sha256(json.dumps(config).encode()).hexdigest()[:16]

    def _save(self, store: AnchorSource) -> None:
        params = self._params
        if params is None:
            return
        try:
            store.save_state(self.state_key, json.dumps(_params_to_json(params)))
        except StoreUnavailableError as exc:
            logger.warning("could not save the learned estimator's fit with the store: %s", exc)

    def load(self, store: AnchorSource | None = None) -> FitReport | None:
        """Use the fit saved with ``store`` (default: the bound one) if there is one; returns its report."""
        store = store or self._store
        if store is None:
            return None
        text = store.load_state(self.state_key)
        if text is None:
            return None
        try:
            params = _params_from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring an unreadable saved fit of the learned estimator (%s); refitting", exc)
            return None
        return self._set_params(params)

    def fit_anchors(
        self, anchors: Sequence[AnchorRecord], embeddings: npt.ArrayLike, input_tokens: Sequence[float]
    ) -> FitReport:
        """Fit on anchors given directly (row-aligned embeddings and input tokens); returns the report."""
        t0 = time.perf_counter()
        emb = np.asarray(embeddings, dtype=np.float64)
        n = len(anchors)
        if emb.ndim != 2 or emb.shape[0] != n or len(input_tokens) != n:
            msg = (
                f"{n} anchors need {n} embedding rows and {n} input token counts; "
                f"got {emb.shape} and {len(input_tokens)}"
            )
            raise ConfigError(msg)
        models = sorted({m for a in anchors for m in a.outcomes})
        col = {m: j for j, m in enumerate(models)}
        correct = np.full((n, len(models)), np.nan)
        log_tokens = np.full((n, len(models)), np.nan)
        for i, a in enumerate(anchors):
            for m, out in a.outcomes.items():
                correct[i, col[m]] = out.correct
                if out.output_tokens is not None:
                    log_tokens[i, col[m]] = math.log1p(max(0.0, out.output_tokens))
        has = ~np.isnan(correct)
        pairs = int(has.sum())
        counts = has.sum(axis=0)
        sums = np.nansum(correct, axis=0)
        p_all = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        has_t = ~np.isnan(log_tokens)
        t_counts = has_t.sum(axis=0)
        t_sums = np.nansum(log_tokens, axis=0)
        lt_all = np.where(t_counts > 0, t_sums / np.maximum(t_counts, 1), np.nan)
        max_lt = float(np.nanmax(log_tokens)) if has_t.any() else math.log1p(DEFAULT_OUTPUT_TOKENS)
        labels = correct[has]
        if pairs < self.min_fit_pairs or n < 3 or labels.min() >= 0.5 or labels.max() < 0.5:
            note = f"too few anchor outcomes to fit ({pairs} pairs over {n} anchors); using anchor statistics"
            return self._set_params(self._statistics_params(n, len(models), max_lt, note, t0))

        rng = np.random.default_rng(self.seed)
        fit_idx = np.sort(rng.permutation(n)[: min(n, self.max_fit_anchors)])
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        unit = emb / np.maximum(norms, 1e-12)
        r = min(3 * self.k, n - 1)
        nbrs = np.empty((len(fit_idx), r), dtype=np.int64)
        sims = np.empty((len(fit_idx), r))
        for start in range(0, len(fit_idx), 512):
            rows = fit_idx[start : start + 512]
            s = unit[rows] @ unit.T
            s[np.arange(len(rows)), rows] = -np.inf
            part = np.argpartition(-s, r - 1, axis=1)[:, :r]
            ps = np.take_along_axis(s, part, axis=1)
            order = np.argsort(-ps, axis=1, kind="stable")
            nbrs[start : start + len(rows)] = np.take_along_axis(part, order, axis=1)
            sims[start : start + len(rows)] = np.take_along_axis(ps, order, axis=1)

        # Text difficulty: ridge of each anchor's Rasch easiness on [embedding, text statistics].
        stats = np.array([text_stats(a.question, tail_chars=self.tail_chars) for a in anchors])
        x_text = np.hstack([emb, stats])
        r_count = has.sum(axis=1)
        target = np.where(r_count > 0, _rasch_easiness(correct), np.nan)
        valid = np.flatnonzero(~np.isnan(target))
        text_oof = np.zeros(n)
        folds = np.array_split(rng.permutation(valid), 5)
        for fold in folds:
            train = np.setdiff1d(valid, fold, assume_unique=True)
            w, mu, b = _ridge(x_text[train], target[train], self.ridge_alpha)
            text_oof[fold] = (x_text[fold] - mu) @ w + b
        ridge_w, ridge_mu, ridge_b = _ridge(x_text[valid], target[valid], self.ridge_alpha)

        # Leave-one-out features: each fit anchor against its neighbours among the other anchors.
        c_fit = correct[fit_idx]
        p_loo = np.where(
            ~np.isnan(c_fit) & (counts > 1), (sums - np.nan_to_num(c_fit)) / np.maximum(counts - 1, 1), p_all
        )
        lt_fit = log_tokens[fit_idx]
        lt_loo = np.where(
            ~np.isnan(lt_fit) & (t_counts > 1),
            (t_sums - np.nan_to_num(lt_fit)) / np.maximum(t_counts - 1, 1),
            lt_all,
        )
        feats: dict[str, list[FloatArray]] = {}
        for start in range(0, len(fit_idx), 256):
            sl = slice(start, start + 256)
            nb = _Neighbourhood(
                sims=sims[sl],
                correct=correct[nbrs[sl]],
                log_tokens=log_tokens[nbrs[sl]],
                p_target=p_loo[sl],
                lt_target=lt_loo[sl],
                p_all=p_all,
                lt_all=lt_all,
                log_input=np.log1p(np.asarray(input_tokens, dtype=np.float64)[fit_idx[sl]]),
            )
            for key, val in _features(nb, k=self.k, power=self.power, strength=self.prior_strength).items():
                feats.setdefault(key, []).append(np.asarray(val))
        f = {key: np.concatenate(v) for key, v in feats.items()}
        f["text"] = np.broadcast_to(text_oof[fit_idx][:, None], c_fit.shape)
        ok = ~np.isnan(c_fit) & ~np.isnan(p_loo)
        x = np.stack([f[name][ok] for name in P_FEATURES], axis=1)
        y = c_fit[ok]
        coef = _fit_logistic(x, y)
        coef_no_text = _fit_logistic(x[:, :-1], y)
        p_loo_pred = _sigmoid(np.hstack([x, np.ones((len(x), 1))]) @ coef)
        by_model = np.broadcast_to(np.arange(len(models))[None, :], c_fit.shape)[ok]
        aucs = [
            auc for j in range(len(models)) if (auc := auroc(p_loo_pred[by_model == j], y[by_model == j])) is not None
        ]

        ok_t = ~np.isnan(lt_fit) & ~np.isnan(lt_loo)
        length_coef: FloatArray | None = None
        length_mae: float | None = None
        if ok_t.sum() >= max(20, len(LENGTH_FEATURES) * 5):
            xl = np.stack([f[name][ok_t] for name in LENGTH_FEATURES], axis=1)
            yl = lt_fit[ok_t]
            length_coef = _fit_huber(xl, yl)
            pred = np.clip(np.hstack([xl, np.ones((len(xl), 1))]) @ length_coef, 0.0, max_lt + 1.0)
            length_mae = float(np.mean(np.abs(pred - yl)))
        report = FitReport(
            anchors=n,
            fit_anchors=len(fit_idx),
            pairs=int(ok.sum()),
            models=len(models),
            coef=dict(zip((*P_FEATURES, "intercept"), (float(c) for c in coef), strict=True)),
            length_coef=(
                dict(zip((*LENGTH_FEATURES, "intercept"), (float(c) for c in length_coef), strict=True))
                if length_coef is not None
                else {}
            ),
            loo_auroc_within_model=float(np.mean(aucs)) if aucs else None,
            loo_ece=expected_calibration_error(p_loo_pred, y),
            loo_length_log_mae=length_mae,
            seconds=time.perf_counter() - t0,
            note=""
            if length_coef is not None
            else "too few token counts to fit the length model; lengths are anchor statistics",
        )
        params = _Params(
            coef=coef,
            coef_no_text=coef_no_text,
            length_coef=length_coef,
            ridge_w=ridge_w,
            ridge_mu=ridge_mu,
            ridge_b=ridge_b,
            max_log_tokens=max_lt,
            anchors=n,
            report=report,
        )
        logger.info(
            "learned estimator fitted on %d anchors (%d pairs) in %.2fs: loo auroc %s, ece %.3f",
            n,
            report.pairs,
            report.seconds,
            report.loo_auroc_within_model,
            report.loo_ece or float("nan"),
        )
        return self._set_params(params)

    def _statistics_params(self, n: int, models: int, max_lt: float, note: str, t0: float) -> _Params:
        coef = np.zeros(len(P_FEATURES) + 1)
        coef[P_FEATURES.index("knn")] = 1.0
        report = FitReport(
            anchors=n,
            fit_anchors=0,
            pairs=0,
            models=models,
            coef=dict(zip((*P_FEATURES, "intercept"), (float(c) for c in coef), strict=True)),
            length_coef={},
            loo_auroc_within_model=None,
            loo_ece=None,
            loo_length_log_mae=None,
            seconds=time.perf_counter() - t0,
            note=note,
        )
        logger.info("learned estimator: %s", note)
        return _Params(
            coef=coef,
            coef_no_text=np.delete(coef, P_FEATURES.index("text")),
            length_coef=None,
            ridge_w=None,
            ridge_mu=None,
            ridge_b=0.0,
            max_log_tokens=max_lt,
            anchors=n,
            report=report,
        )

    def _set_params(self, params: _Params) -> FitReport:
        self._params = params
        return params.report

    # -- lazy fit and refit --------------------------------------------------------------------

    def _ensure_fitted(self, ctxs: Sequence[QueryContext]) -> _Params:
        version = ctxs[0].anchor_version if ctxs else None
        params = self._params
        if params is None:
            with self._lock:
                if self._params is None:
                    if self._store is None:
                        msg = (
                            "LearnedEstimator is not fitted: call fit(store) or from_store(store), or use it "
                            "through ScopeEngine, which binds its store for a fit on first use"
                        )
                        raise ConfigError(msg)
                    try:
                        loaded = self.persist and self.load(self._store) is not None
                        if not loaded:
                            self.fit(self._store)
                    except StoreUnavailableError as exc:
                        msg = f"cannot fit the learned estimator: {exc}"
                        raise EstimatorUnavailableError(msg) from exc
                    # A saved fit may predate later writes: let the growth check below look at it once.
                    self._seen_version = None if loaded else version
            params = self._params
            assert params is not None
        self._maybe_refit(version, params)
        return params

    def _maybe_refit(self, version: str | None, params: _Params) -> None:
        store = self._store
        if store is None or not version or version == "degraded" or version == self._seen_version:
            return
        now = time.monotonic()
        if now - self._counted_at < self.refit_check_s:
            return  # counted recently: a later decision looks at this version
        self._seen_version, self._counted_at = version, now
        try:
            count = store.count()
        except StoreUnavailableError:
            return
        if abs(count - params.anchors) <= self.refit_growth * max(params.anchors, 1):
            return
        with self._lock:
            if self._refit_thread is not None and self._refit_thread.is_alive():
                return
            logger.info("anchors changed from %d to %d; refitting the learned estimator", params.anchors, count)
            self._refit_thread = threading.Thread(target=self._refit, args=(store,), name="scope-refit", daemon=True)
            self._refit_thread.start()

    def _refit(self, store: AnchorSource) -> None:
        try:
            self.fit(store)
        except Exception:
            logger.exception("learned estimator refit failed; the previous fit keeps serving")

    def wait_refit(self, timeout: float | None = None) -> None:
        """Wait for a background refit in progress (if any) to finish."""
        thread = self._refit_thread
        if thread is not None:
            thread.join(timeout)

    # -- prediction ----------------------------------------------------------------------------

    @property
    def anchors_per_model(self) -> int | None:
        return self.k

    def _predict(self, queries: Sequence[QueryContext], models: Sequence[str]) -> list[dict[str, Prediction]]:
        params = self._ensure_fitted(queries)
        # One vectorised pass per group of queries with the same model statistics (a batch from the engine is
        # one group: it reads them once per call).
        groups: list[tuple[Mapping[str, ModelStats], list[int]]] = []
        for i, ctx in enumerate(queries):
            group = next((g for g in reversed(groups) if g[0] is ctx.stats or g[0] == ctx.stats), None)
            if group is None:
                groups.append((ctx.stats, [i]))
            else:
                group[1].append(i)
        out: dict[int, dict[str, Prediction]] = {}
        for _, rows in groups:
            out.update(zip(rows, self._group([queries[i] for i in rows], models, params), strict=True))
        return [out[i] for i in range(len(queries))]

    def _group(
        self, ctxs: Sequence[QueryContext], models: Sequence[str], params: _Params
    ) -> list[dict[str, Prediction]]:
        """Predict for queries that share one statistics mapping: one (queries x anchors x models) pass."""
        all_stats_in = ctxs[0].stats
        stats: dict[str, ModelStats] = {}
        degraded: dict[str, str] = {}
        for m in models:
            st = all_stats_in.get(m)
            if st is None or st.n == 0:
                if self.prior is None:
                    msg = (
                        f"model {m!r} has no recorded outcome on any anchor; add some "
                        "(AnchorStore.add / engine.record) or pass LearnedEstimator(prior=Prior(...))"
                    )
                    raise NoAnchorDataError(msg)
                st = self.prior
                degraded[m] = f"no anchor outcomes for {m!r}; used the prior"
            stats[m] = st
        # Columns: the candidates first, then every other model with a record (for the difficulty features).
        others = sorted(n for n, st in all_stats_in.items() if st.n > 0 and n not in stats)
        cols = [*models, *others]
        col = {m: j for j, m in enumerate(cols)}
        all_stats = {**{n: all_stats_in[n] for n in others}, **stats}
        default_lt = math.log1p(DEFAULT_OUTPUT_TOKENS)
        p_all = np.array([all_stats[m].p_correct for m in cols])
        lt_all = np.array(
            [all_stats[m].mean_log_tokens if all_stats[m].mean_log_tokens is not None else np.nan for m in cols]
        )
        b_n = len(ctxs)
        n_r = max(1, *(len(c.anchors) for c in ctxs))
        sims = np.full((b_n, n_r), np.nan)
        correct = np.full((b_n, n_r, len(cols)), np.nan)
        log_tokens = np.full((b_n, n_r, len(cols)), np.nan)
        for b, ctx in enumerate(ctxs):
            for i, a in enumerate(ctx.anchors):
                sims[b, i] = a.similarity
                for m, o in a.outcomes.items():
                    j = col.get(m)
                    if j is None:
                        continue
                    correct[b, i, j] = o.correct
                    if o.output_tokens is not None:
                        log_tokens[b, i, j] = math.log1p(max(0.0, o.output_tokens))
        nb = _Neighbourhood(
            sims=sims,
            correct=correct,
            log_tokens=log_tokens,
            p_target=np.broadcast_to(p_all, (b_n, len(cols))),
            lt_target=np.broadcast_to(np.where(np.isnan(lt_all), default_lt, lt_all), (b_n, len(cols))),
            p_all=p_all,
            lt_all=lt_all,
            log_input=np.log1p(np.maximum(0.0, np.array([c.input_tokens for c in ctxs], dtype=np.float64))),
        )
        f = _features(nb, k=self.k, power=self.power, strength=self.prior_strength)
        # The text feature needs the query's embedding; a query without one uses the weights fitted without it.
        with_text = np.array([params.ridge_w is not None and c.embedding is not None for c in ctxs])
        z = np.empty((b_n, len(cols)))
        x_base = np.stack([np.asarray(f[name]) for name in P_FEATURES[:-1]], axis=2)  # B x M x features
        if with_text.any():
            assert params.ridge_w is not None and params.ridge_mu is not None
            idx = np.flatnonzero(with_text)
            x = np.hstack(
                [
                    np.asarray([ctxs[i].embedding for i in idx.tolist()], dtype=np.float64),
                    np.array([text_stats(ctxs[i].query, tail_chars=self.tail_chars) for i in idx.tolist()]),
                ]
            )
            text = (x - params.ridge_mu) @ params.ridge_w + params.ridge_b
            z[idx] = x_base[idx] @ params.coef[:-2] + text[:, None] * params.coef[-2] + params.coef[-1]
        if not with_text.all():
            idx = np.flatnonzero(~with_text)
            z[idx] = x_base[idx] @ params.coef_no_text[:-1] + params.coef_no_text[-1]
        p = _sigmoid(z)
        if params.length_coef is not None:
            x_l = np.stack([np.asarray(f[name]) for name in LENGTH_FEATURES], axis=2)
            lt = np.clip(x_l @ params.length_coef[:-1] + params.length_coef[-1], 0.0, params.max_log_tokens + 1.0)
        else:
            lt = np.asarray(f["knn_length"])
        n_eff = np.asarray(f["n_eff"])
        no_text_reason = ""
        if params.ridge_w is not None:
            no_text_reason = "no query embedding in the context; estimated without the text-difficulty feature"
        elif params.report.note:
            no_text_reason = params.report.note
        w = self.exact_weight
        results: list[dict[str, Prediction]] = []
        for b, ctx in enumerate(ctxs):
            anchors = ctx.anchors
            reason = "" if with_text[b] else no_text_reason
            exact = next((a for a in anchors if a.question == ctx.query), None)
            p_b, lt_b, n_b = p[b].tolist(), lt[b].tolist(), n_eff[b].tolist()
            result: dict[str, Prediction] = {}
            for m in models:
                j = col[m]
                pj, ltj = p_b[j], lt_b[j]
                seen = exact.outcomes.get(m) if exact is not None else None
                if seen is not None and w > 0:
                    pj = (1.0 - w) * pj + w * seen.correct
                    if seen.output_tokens is not None:
                        ltj = (1.0 - w) * ltj + w * math.log1p(max(0.0, seen.output_tokens))
                notes = (degraded.get(m, ""), reason, "the query itself is an anchor" if seen is not None else "")
                result[m] = Prediction(
                    p_correct=pj,
                    output_tokens=math.expm1(ltj),
                    evidence=self._evidence(anchors, m),
                    p_std=math.sqrt(max(pj * (1.0 - pj), 1e-9) / max(n_b[j] + self.prior_strength, 1e-9)),
                    degraded=m in degraded or (params.ridge_w is not None and not with_text[b]),
                    reason="; ".join(r for r in notes if r),
                )
            results.append(result)
        return results

    def _evidence(self, anchors: Sequence[AnchorRecord], model: str) -> tuple[AnchorEvidence, ...]:
        used: list[AnchorEvidence] = []
        limit = min(self.evidence, self.k)
        for a in anchors:
            if len(used) >= limit:
                break
            o = a.outcomes.get(model)
            if o is None:
                continue
            # Validated construction: pydantic-core builds these ~3x faster than model_construct.
            used.append(
                AnchorEvidence(
                    anchor_id=a.anchor_id, similarity=a.similarity, correct=o.correct, output_tokens=o.output_tokens
                )
            )
        return tuple(used)
