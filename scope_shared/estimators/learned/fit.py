"""Leave-one-out fitting of the learned estimator on the anchors themselves.

Each anchor is treated as a query whose neighbours are the other anchors: a logistic regression of its
outcomes on the neighbour features (:func:`fit_logistic`), a Huber regression of its lengths
(:func:`fit_huber`), and a ridge regression of its Rasch easiness on its embedding and text statistics for
the ``text`` feature (:func:`ridge`). :func:`fit_params` returns the parameters and their report.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from scope_shared.errors import ConfigError
from scope_shared.estimators.learned.features import (
    LENGTH_FEATURES,
    P_FEATURES,
    FloatArray,
    Neighbourhood,
    features,
    rasch_easiness,
    sigmoid,
    text_stats,
)
from scope_shared.estimators.learned.params import FitReport, FitSettings, Params
from scope_shared.metrics import auroc, expected_calibration_error
from scope_shared.types import DEFAULT_OUTPUT_TOKENS, AnchorRecord

__all__ = ["fit_huber", "fit_logistic", "fit_params", "ridge", "statistics_params"]

logger = logging.getLogger(__name__)


def fit_logistic(x: FloatArray, y: FloatArray, *, l2: float = 1e-2, iters: int = 50) -> FloatArray:
    """Logistic regression with soft labels by Newton's method; returns weights with the intercept last."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    beta = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = sigmoid(xb @ beta)
        grad = xb.T @ (p - y) + reg * beta
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return beta


def fit_huber(x: FloatArray, y: FloatArray, *, iters: int = 50) -> FloatArray:
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


def ridge(x: FloatArray, y: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray, float]:
    """Ridge regression on centred ``x``; returns the weights, the centre and the intercept."""
    mu = x.mean(axis=0)
    xc = x - mu
    b = float(y.mean())
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - b))
    return w, mu, b


def _nearest(emb: FloatArray, fit_idx: npt.NDArray[np.int64], r: int) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Each fit anchor's ``r`` most similar other anchors (cosine), most similar first, and their similarities."""
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = emb / np.maximum(norms, 1e-12)
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
    return nbrs, sims


def fit_params(
    anchors: Sequence[AnchorRecord], embeddings: npt.ArrayLike, input_tokens: Sequence[float], settings: FitSettings
) -> Params:
    """Fit on anchors (row-aligned embeddings and input tokens) by leave-one-out; see the module doc."""
    t0 = time.perf_counter()
    emb = np.asarray(embeddings, dtype=np.float64)
    n = len(anchors)
    if emb.ndim != 2 or emb.shape[0] != n or len(input_tokens) != n:
        msg = f"{n} anchors need {n} embedding rows and {n} input token counts; got {emb.shape} and {len(input_tokens)}"
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
    if pairs < settings.min_fit_pairs or n < 3 or labels.min() >= 0.5 or labels.max() < 0.5:
        note = f"too few anchor outcomes to fit ({pairs} pairs over {n} anchors); using anchor statistics"
        return statistics_params(n, len(models), max_lt, note, t0)

    rng = np.random.default_rng(settings.seed)
    fit_idx = np.sort(rng.permutation(n)[: min(n, settings.max_fit_anchors)])
    nbrs, sims = _nearest(emb, fit_idx, min(3 * settings.k, n - 1))

    # Text difficulty: ridge of each anchor's Rasch easiness on [embedding, text statistics].
    stats = np.array([text_stats(a.question, tail_chars=settings.tail_chars) for a in anchors])
    x_text = np.hstack([emb, stats])
    r_count = has.sum(axis=1)
    target = np.where(r_count > 0, rasch_easiness(correct), np.nan)
    valid = np.flatnonzero(~np.isnan(target))
    text_oof = np.zeros(n)
    folds = np.array_split(rng.permutation(valid), 5)
    for fold in folds:
        train = np.setdiff1d(valid, fold, assume_unique=True)
        w, mu, b = ridge(x_text[train], target[train], settings.ridge_alpha)
        text_oof[fold] = (x_text[fold] - mu) @ w + b
    ridge_w, ridge_mu, ridge_b = ridge(x_text[valid], target[valid], settings.ridge_alpha)

    # Leave-one-out features: each fit anchor against its neighbours among the other anchors.
    c_fit = correct[fit_idx]
    p_loo = np.where(~np.isnan(c_fit) & (counts > 1), (sums - np.nan_to_num(c_fit)) / np.maximum(counts - 1, 1), p_all)
    lt_fit = log_tokens[fit_idx]
    lt_loo = np.where(
        ~np.isnan(lt_fit) & (t_counts > 1),
        (t_sums - np.nan_to_num(lt_fit)) / np.maximum(t_counts - 1, 1),
        lt_all,
    )
    feats: dict[str, list[FloatArray]] = {}
    for start in range(0, len(fit_idx), 256):
        sl = slice(start, start + 256)
        nb = Neighbourhood(
            sims=sims[sl],
            correct=correct[nbrs[sl]],
            log_tokens=log_tokens[nbrs[sl]],
            p_target=p_loo[sl],
            lt_target=lt_loo[sl],
            p_all=p_all,
            lt_all=lt_all,
            log_input=np.log1p(np.asarray(input_tokens, dtype=np.float64)[fit_idx[sl]]),
        )
        for key, val in features(nb, k=settings.k, power=settings.power, strength=settings.prior_strength).items():
            feats.setdefault(key, []).append(np.asarray(val))
    f = {key: np.concatenate(v) for key, v in feats.items()}
    f["text"] = np.broadcast_to(text_oof[fit_idx][:, None], c_fit.shape)
    ok = ~np.isnan(c_fit) & ~np.isnan(p_loo)
    x = np.stack([f[name][ok] for name in P_FEATURES], axis=1)
    y = c_fit[ok]
    coef = fit_logistic(x, y)
    coef_no_text = fit_logistic(x[:, :-1], y)
    p_loo_pred = sigmoid(np.hstack([x, np.ones((len(x), 1))]) @ coef)
    by_model = np.broadcast_to(np.arange(len(models))[None, :], c_fit.shape)[ok]
    aucs = [auc for j in range(len(models)) if (auc := auroc(p_loo_pred[by_model == j], y[by_model == j])) is not None]

    ok_t = ~np.isnan(lt_fit) & ~np.isnan(lt_loo)
    length_coef: FloatArray | None = None
    length_mae: float | None = None
    if ok_t.sum() >= max(20, len(LENGTH_FEATURES) * 5):
        xl = np.stack([f[name][ok_t] for name in LENGTH_FEATURES], axis=1)
        yl = lt_fit[ok_t]
        length_coef = fit_huber(xl, yl)
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
    logger.info(
        "learned estimator fitted on %d anchors (%d pairs) in %.2fs: loo auroc %s, ece %.3f",
        n,
        report.pairs,
        report.seconds,
        report.loo_auroc_within_model,
        report.loo_ece or float("nan"),
    )
    return Params(
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


def statistics_params(n: int, models: int, max_lt: float, note: str, t0: float) -> Params:
    """Parameters that reproduce the anchor statistics (weight 1 on ``knn``), for a store too thin to fit."""
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
    return Params(
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
