"""Choosing the anchors a new model is profiled on, from the store's data only.

Profiling a model costs money per question, so a new model answers only ``n`` anchors; the router then
estimates it on any query from those outcomes and from everything else the store holds. Which ``n``
anchors it answers decides how good that start is. :func:`select_anchors` picks them from what the store
already knows, and never from the new model's own outcomes:

- the *reference models'* outcomes on the candidates (an anchors x models matrix, NaN where a model did not
  answer an anchor), through a two-parameter IRT model ``P(correct) = sigmoid(a_i (theta_m - b_i))``:
  each anchor's difficulty ``b_i`` and discrimination ``a_i``;
- the candidates' embeddings, through spherical k-means clusters that cover the question space.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from scope_shared.errors import ConfigError

__all__ = [
    "DEFAULT_STRATEGY",
    "SELECTION_STRATEGIES",
    "ItemParameters",
    "Strategy",
    "fit_2pl",
    "kmeans",
    "select_anchors",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

Strategy = Literal["balanced", "cluster-strata", "strata", "fisher", "cluster", "coverage"]
#: Every strategy :func:`select_anchors` knows.
SELECTION_STRATEGIES: tuple[str, ...] = get_args(Strategy)
#: The strategy ``evaluate(holdout_select="informative")`` and ``--holdout-select informative`` use.
DEFAULT_STRATEGY: Strategy = "balanced"


@dataclass(frozen=True)
class ItemParameters:
    """A 2PL IRT fit: per anchor ``difficulty`` and ``discrimination``, per reference model ``ability``."""

    difficulty: FloatArray
    discrimination: FloatArray
    ability: FloatArray

    def information(self, ability: FloatArray | None = None) -> FloatArray:
        """Each anchor's Fisher information, averaged over ``ability`` (default: the reference models')."""
        theta = self.ability if ability is None else ability
        if theta.size == 0:
            return np.zeros_like(self.difficulty)
        a = self.discrimination[:, None]
        p = _sigmoid(a * (theta[None, :] - self.difficulty[:, None]))
        out: FloatArray = (a**2 * p * (1.0 - p)).mean(axis=1)
        return out


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
    return out


def fit_2pl(
    outcomes: FloatArray, *, iters: int = 100, difficulty_sd: float = 3.0, log_discrimination_sd: float = 0.5
) -> ItemParameters:
    """Fit a 2PL IRT model to an anchors x models matrix of graded outcomes in [0, 1] (NaN: missing).

    Maximum a posteriori by alternating Fisher-scoring steps on abilities (prior N(0, 1)), difficulties
    (prior N(0, ``difficulty_sd``)) and log discriminations (prior N(0, ``log_discrimination_sd``)); the
    priors keep anchors every model got right (or wrong) finite. An anchor no reference model answered gets
    the prior's difficulty 0 and discrimination 1.
    """
    has = ~np.isnan(outcomes)
    y = np.nan_to_num(outcomes)
    n_items, n_models = outcomes.shape
    counts = has.sum(axis=0)
    acc = np.where(counts > 0, y.sum(axis=0) / np.maximum(counts, 1), 0.5)
    theta = np.log(np.clip(acc, 0.02, 0.98) / (1.0 - np.clip(acc, 0.02, 0.98)))
    item_acc = np.where(has.any(axis=1), y.sum(axis=1) / np.maximum(has.sum(axis=1), 1), 0.5)
    b = -np.log(np.clip(item_acc, 0.02, 0.98) / (1.0 - np.clip(item_acc, 0.02, 0.98)))
    log_a = np.zeros(n_items)
    for _ in range(iters):
        a = np.exp(log_a)
        p = _sigmoid(a[:, None] * (theta[None, :] - b[:, None]))
        r, w = (y - p) * has, p * (1.0 - p) * has
        theta = theta + ((a[:, None] * r).sum(axis=0) - theta) / ((a[:, None] ** 2 * w).sum(axis=0) + 1.0)
        p = _sigmoid(a[:, None] * (theta[None, :] - b[:, None]))
        r, w = (y - p) * has, p * (1.0 - p) * has
        b_prec = 1.0 / difficulty_sd**2
        b = b + (-a * r.sum(axis=1) - b * b_prec) / (a**2 * w.sum(axis=1) + b_prec)
        p = _sigmoid(a[:, None] * (theta[None, :] - b[:, None]))
        r, w = (y - p) * has, p * (1.0 - p) * has
        d = theta[None, :] - b[:, None]
        a_prec = 1.0 / log_discrimination_sd**2
        grad = a * (r * d).sum(axis=1) - log_a * a_prec
        log_a = np.clip(log_a + grad / (a**2 * (w * d**2).sum(axis=1) + a_prec), -3.0, 3.0)
    if n_models == 0:
        b = np.zeros(n_items)
    return ItemParameters(difficulty=b, discrimination=np.exp(log_a), ability=theta)


def kmeans(x: FloatArray, k: int, *, seed: int | Sequence[int] = 0, iters: int = 50) -> IntArray:
    """Spherical k-means (cosine) labels of the rows of ``x``, seeded k-means++ initialisation."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / np.where(norms > 0, norms, 1.0)
    n = len(u)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = np.empty((k, u.shape[1]))
    centres[0] = u[rng.integers(n)]
    dist = 1.0 - u @ centres[0]
    for c in range(1, k):
        weights = np.maximum(dist, 0.0)
        total = weights.sum()
        pick = rng.choice(n, p=weights / total) if total > 0 else int(rng.integers(n))
        centres[c] = u[pick]
        dist = np.minimum(dist, 1.0 - u @ centres[c])
    labels: IntArray = np.full(n, -1, dtype=np.int64)
    for _ in range(iters):
        new: IntArray = np.argmax(u @ centres.T, axis=1).astype(np.int64)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = u[labels == c]
            if len(members):
                mean = members.mean(axis=0)
                norm = np.linalg.norm(mean)
                centres[c] = mean / norm if norm > 0 else members[0]
            else:  # an empty cluster restarts at the point farthest from its centre
                far = int(np.argmin((u * centres[labels]).sum(axis=1)))
                centres[c] = u[far]
    return labels


def _systematic(order: IntArray, weights: FloatArray, n: int, rng: np.random.Generator) -> IntArray:
    """Systematic sample of ``n`` positions of ``order`` with probability proportional to ``weights``."""
    w = weights[order]
    cum = np.cumsum(w) / w.sum()
    points = (rng.random() + np.arange(n)) / n
    pos = np.searchsorted(cum, points, side="left")
    pos = np.minimum(pos, len(order) - 1)
    chosen = list(dict.fromkeys(pos.tolist()))
    if len(chosen) < n:  # heavy items hit twice: fill with their unused neighbours in the order
        taken = set(chosen)
        free = [i for i in range(len(order)) if i not in taken]
        extra = sorted(free, key=lambda i: min(abs(i - c) for c in chosen))[: n - len(chosen)]
        chosen.extend(extra)
    out: IntArray = order[np.asarray(sorted(chosen), dtype=np.int64)]
    return out


def _ordered(labels: IntArray, difficulty: FloatArray, rng: np.random.Generator) -> IntArray:
    """Anchors ordered by cluster (clusters by mean difficulty), serpentine by difficulty within each."""
    clusters = np.unique(labels)
    mean_d = np.array([difficulty[labels == c].mean() for c in clusters])
    jitter = rng.random(len(difficulty)) * 1e-9
    parts = []
    for rank, c in enumerate(clusters[np.argsort(mean_d, kind="stable")]):
        members = np.flatnonzero(labels == c)
        members = members[np.argsort(difficulty[members] + jitter[members], kind="stable")]
        parts.append(members if rank % 2 == 0 else members[::-1])
    out: IntArray = np.concatenate(parts).astype(np.int64)
    return out


def _balance(
    chosen: IntArray, labels: IntArray, outcomes: FloatArray, rng: np.random.Generator, *, rounds: int = 4
) -> IntArray:
    """Swap anchors within their cluster while that brings the reference models' accuracies on the
    selection closer to their accuracies on all candidates (each model's gap in standard errors)."""
    has = ~np.isnan(outcomes)
    y = np.nan_to_num(outcomes)
    if outcomes.shape[1] == 0:
        return chosen
    target = np.where(has.sum(axis=0) > 0, (y * has).sum(axis=0) / np.maximum(has.sum(axis=0), 1), 0.5)
    scale = np.sqrt(np.maximum(target * (1 - target), 0.02))
    sel = chosen.copy()
    in_sel = np.zeros(len(labels), dtype=bool)
    in_sel[sel] = True

    def loss(s_y: FloatArray, s_n: FloatArray) -> float:
        mean = np.where(s_n > 0, s_y / np.maximum(s_n, 1), target)
        z = (mean - target) / scale * np.sqrt(np.maximum(s_n, 1))
        return float((z**2).mean())

    s_y, s_n = (y * has)[sel].sum(axis=0), has[sel].sum(axis=0).astype(np.float64)
    best = loss(s_y, s_n)
    for _ in range(rounds):
        improved = False
        for pos in rng.permutation(len(sel)):
            old = sel[pos]
            mates = np.flatnonzero((labels == labels[old]) & ~in_sel)
            if not len(mates):
                continue
            base_y, base_n = s_y - y[old] * has[old], s_n - has[old]
            cand_y = base_y[None, :] + y[mates] * has[mates]
            cand_n = base_n[None, :] + has[mates]
            mean = np.where(cand_n > 0, cand_y / np.maximum(cand_n, 1), target)
            z = (mean - target) / scale * np.sqrt(np.maximum(cand_n, 1))
            losses = (z**2).mean(axis=1)
            j = int(np.argmin(losses))
            if losses[j] < best - 1e-12:
                new = mates[j]
                in_sel[old], in_sel[new] = False, True
                sel[pos] = new
                s_y, s_n, best = cand_y[j], cand_n[j], float(losses[j])
                improved = True
        if not improved:
            break
    return sel


def _neighbour_lists(x: FloatArray, k: int, chunk: int = 2048) -> IntArray:
    """Each row's ``k`` most similar other rows (cosine), as a rows x k index matrix."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / np.where(norms > 0, norms, 1.0)
    k = min(k, len(u) - 1)
    out = np.empty((len(u), k), dtype=np.int64)
    for start in range(0, len(u), chunk):
        sims = u[start : start + chunk] @ u.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[start : start + chunk] = part
    return out


def _coverage(nbrs: IntArray, n: int, rng: np.random.Generator, *, cap: int = 3) -> IntArray:
    """Greedy: each step adds the anchor that appears in the most neighbour lists still short of ``cap``
    chosen anchors (ties at random), so that every candidate has a few chosen anchors among its neighbours."""
    m = len(nbrs)
    rows = np.repeat(np.arange(m), nbrs.shape[1])
    hits = np.zeros(m)
    chosen: list[int] = []
    free = np.ones(m, dtype=bool)
    tie = rng.random(m) * 1e-6
    for _ in range(n):
        short = (hits < cap).astype(np.float64)
        gain = np.bincount(nbrs.ravel(), weights=short[rows], minlength=m) + tie
        gain[~free] = -np.inf
        a = int(np.argmax(gain))
        chosen.append(a)
        free[a] = False
        hits[np.any(nbrs == a, axis=1)] += 1
    return np.asarray(chosen, dtype=np.int64)


def select_anchors(
    ids: Sequence[str],
    embeddings: npt.ArrayLike,
    outcomes: npt.ArrayLike,
    *,
    n: int,
    seed: int | Sequence[int] = 0,
    strategy: Strategy = DEFAULT_STRATEGY,
    clusters: int | None = None,
) -> list[str]:
    """Choose ``n`` of the candidate anchors ``ids`` for a new model to be profiled on.

    Uses only the store's data: the candidates' ``embeddings`` (one row per id) and the reference models'
    ``outcomes`` on them (one row per id, one column per reference model, NaN where missing). The new
    model's own outcomes must not be among the columns.

    Strategies (docs/anchor_selection.md has their measured figures):
        ``balanced`` (default): ``cluster-strata``, then swaps within clusters while they bring each
            reference model's accuracy on the selection closer to its accuracy on all candidates (each gap
            in standard errors): the selection is a representative miniature of the candidates as seen
            through every reference model, so its plain mean is a closer estimate of a new model's accuracy.
        ``cluster-strata``: spherical k-means clusters of the embeddings, anchors ordered by cluster and,
            within each, by IRT difficulty; a systematic sample (random start) takes anchors evenly along
            that order, so each cluster gets a share proportional to its size and each share spans its
            difficulty range.
        ``strata``: ``n`` equal-count strata of IRT difficulty, one random anchor in each.
        ``fisher``: as ``cluster-strata`` with probability proportional to each anchor's Fisher information
            averaged over the reference models' abilities (favours discriminating, mid-difficulty anchors,
            which biases the plain mean).
        ``cluster``: one anchor per k-means cluster (``n`` clusters), the one nearest its centre.
        ``coverage``: greedy, the anchor in the most candidates' 30 nearest neighbours that still have fewer
            than 3 chosen neighbours: most queries then find some of the model's own outcomes nearby.

    Args:
        ids: candidate anchor ids (distinct).
        embeddings: candidates x dimensions.
        outcomes: candidates x reference models, graded outcomes in [0, 1], NaN where missing.
        n: anchors to choose, 0 <= n <= len(ids).
        seed: seeds the clustering's initialisation and the sample's random start (an int or a sequence of
            ints, as :func:`numpy.random.default_rng` takes).
        strategy: one of :data:`SELECTION_STRATEGIES`.
        clusters: k-means clusters (default: ``n`` for ``cluster``, ``max(1, n // 2)`` otherwise).

    Returns:
        ``n`` distinct ids, in the order of ``ids``.
    """
    ids = list(ids)
    emb = np.asarray(embeddings, dtype=np.float64)
    out = np.asarray(outcomes, dtype=np.float64)
    if out.ndim == 1 and out.size == 0:
        out = out.reshape(len(ids), 0)
    if len(set(ids)) != len(ids):
        msg = "anchor ids must be distinct; pass each candidate once"
        raise ConfigError(msg)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        msg = f"embeddings must be a (candidates x dimensions) matrix with {len(ids)} rows, got shape {emb.shape}"
        raise ConfigError(msg)
    if out.ndim != 2 or out.shape[0] != len(ids):
        msg = f"outcomes must be a (candidates x reference models) matrix with {len(ids)} rows, got {out.shape}"
        raise ConfigError(msg)
    if not np.isfinite(emb).all():
        msg = "embeddings hold NaN or infinite values"
        raise ConfigError(msg)
    seen = out[~np.isnan(out)]
    if seen.size and (seen.min() < 0.0 or seen.max() > 1.0):
        msg = "outcomes must be graded in [0, 1] (NaN where missing)"
        raise ConfigError(msg)
    if not 0 <= n <= len(ids):
        msg = f"n must be in 0..{len(ids)} (the number of candidates), got {n}"
        raise ConfigError(msg)
    if strategy not in SELECTION_STRATEGIES:
        msg = f"unknown selection strategy {strategy!r}; known: {', '.join(SELECTION_STRATEGIES)}"
        raise ConfigError(msg)
    if clusters is not None and clusters < 1:
        msg = f"clusters must be >= 1, got {clusters}"
        raise ConfigError(msg)
    if n == 0:
        return []
    if n == len(ids):
        return ids
    rng = np.random.default_rng(seed)
    if out.shape[1] == 0 and strategy != "cluster":
        logger.warning("no reference model outcomes on the candidates: anchors are selected on coverage only")
    k = clusters if clusters is not None else (n if strategy == "cluster" else max(1, n // 2))
    labels = kmeans(emb, k, seed=seed)
    if strategy == "cluster":
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        u = emb / np.where(norms > 0, norms, 1.0)
        chosen_list = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            centre = u[members].mean(axis=0)
            chosen_list.append(int(members[np.argmax(u[members] @ centre)]))
        chosen = np.asarray(chosen_list, dtype=np.int64)
        if len(chosen) < n:  # fewer distinct clusters than n (duplicate vectors): fill at random
            rest = np.setdiff1d(np.arange(len(ids)), chosen)
            chosen = np.concatenate([chosen, rng.choice(rest, size=n - len(chosen), replace=False)])
        return [ids[i] for i in np.sort(chosen)]
    if strategy == "coverage":
        chosen = _coverage(_neighbour_lists(emb, 30), n, rng)
        return [ids[i] for i in np.sort(chosen)]
    items = fit_2pl(out)
    if strategy == "strata":
        order = np.argsort(items.difficulty + rng.random(len(ids)) * 1e-9, kind="stable").astype(np.int64)
        bounds = np.linspace(0, len(ids), n + 1).astype(int)
        chosen = np.array([order[rng.integers(lo, hi)] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)])
        return [ids[i] for i in np.sort(chosen)]
    order = _ordered(labels, items.difficulty, rng)
    weights = items.information() if strategy == "fisher" else np.ones(len(ids))
    if not (weights > 0).any():
        weights = np.ones(len(ids))
    chosen = _systematic(order, np.maximum(weights, 1e-12), n, rng)
    if strategy == "balanced":
        chosen = _balance(chosen, labels, out, rng)
    return [ids[i] for i in np.sort(chosen)]
