"""Features of the learned estimator: query text statistics, neighbour features, and the small numerics.

Fitting and predicting both describe a batch of queries by their retrieved anchors as dense arrays
(:class:`Neighbourhood`) and turn them into the same features (:func:`features`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "LENGTH_FEATURES",
    "P_FEATURES",
    "FloatArray",
    "Neighbourhood",
    "features",
    "logit",
    "rasch_easiness",
    "sigmoid",
    "text_stats",
]

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


def rasch_easiness(correct: FloatArray, *, iters: int = 30, l2: float = 0.1) -> FloatArray:
    """Item easiness of a Rasch model ``P = sigmoid(ability_model + easiness_item)`` (nan: missing outcome).

    Alternating Newton steps on the items (with an L2 penalty, so that items every model got right or wrong
    stay finite) and on the models; rows without outcomes get 0.
    """
    has = ~np.isnan(correct)
    y = np.nan_to_num(correct)
    counts = has.sum(axis=0)
    ability = logit(np.where(counts > 0, y.sum(axis=0) / np.maximum(counts, 1), 0.5))
    easy = np.zeros(correct.shape[0])
    for _ in range(iters):
        p = sigmoid(ability[None, :] + easy[:, None])
        grad = ((y - p) * has).sum(axis=1) - l2 * easy
        easy = np.clip(easy + grad / ((p * (1 - p) * has).sum(axis=1) + l2), -10.0, 10.0)
        p = sigmoid(ability[None, :] + easy[:, None])
        grad = ((y - p) * has).sum(axis=0) - 1e-3 * ability
        ability = np.clip(ability + grad / ((p * (1 - p) * has).sum(axis=0) + 1e-3), -10.0, 10.0)
    out: FloatArray = easy
    return out


def logit(p: FloatArray) -> FloatArray:
    """Log-odds, with ``p`` clipped to ``[0.001, 0.999]``."""
    q = np.clip(p, _EPS, 1.0 - _EPS)
    out: FloatArray = np.log(q / (1.0 - q))
    return out


def sigmoid(z: FloatArray) -> FloatArray:
    """The logistic function, with ``z`` clipped to ``[-30, 30]``."""
    out: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
    return out


@dataclass
class Neighbourhood:
    """A batch of queries' retrieved anchors as dense arrays over (query, anchor, model)."""

    sims: FloatArray  # B x R, nan where a query has fewer anchors
    correct: FloatArray  # B x R x M, nan where missing
    log_tokens: FloatArray  # B x R x M, nan where missing
    p_target: FloatArray  # B x M: the target model's overall accuracy (leave-one-out while fitting)
    lt_target: FloatArray  # B x M: its mean log1p tokens
    p_all: FloatArray  # M: every model's overall accuracy (for neighbour residuals)
    lt_all: FloatArray  # M
    log_input: FloatArray  # B


def features(nb: Neighbourhood, *, k: int, power: float, strength: float) -> dict[str, FloatArray]:
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
        "model": logit(nb.p_target),
        "knn": logit(p_knn),
        "p_knn": p_knn,
        "n_eff": w_sum,
        "difficulty": np.broadcast_to(difficulty[:, None], shape),
        "knn_length": lt_knn,
        "model_length": lt_target,
        "length_difficulty": np.broadcast_to(length_difficulty[:, None], shape),
        "input_tokens": np.broadcast_to(nb.log_input[:, None], shape),
    }
