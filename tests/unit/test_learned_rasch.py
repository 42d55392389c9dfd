"""The learned estimator's text target (Rasch item easiness) and its text statistics."""

from __future__ import annotations

import math

import numpy as np

from scope_shared.estimators.learned.features import rasch_easiness, text_stats


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_rasch_easiness_is_unbiased_when_models_answered_different_items() -> None:
    rng = np.random.default_rng(0)
    n_items = 800
    easiness = rng.normal(0.0, 1.5, n_items)
    easiness[:300] -= 1.0  # the items only the strong models answered are harder
    ability = np.array([1.5, 1.0, 2.0, -1.0, -0.5, 0.0])
    p = 1.0 / (1.0 + np.exp(-(ability[None, :] + easiness[:, None])))
    correct = (rng.random(p.shape) < p).astype(float)
    correct[:300, 3:] = np.nan  # weak models: items 300.. only
    correct[600:, :3] = np.nan  # strong models: items ..599 only (200 items overlap)
    est = rasch_easiness(correct)
    has = ~np.isnan(correct)
    p_model = np.nansum(correct, axis=0) / has.sum(axis=0)
    mean_resid = np.nanmean(correct - p_model[None, :], axis=1)
    assert est.shape == (n_items,) and np.all(np.isfinite(est))
    assert _spearman(est, easiness) > 0.65
    assert _spearman(est, easiness) > _spearman(mean_resid, easiness)
    # the strong-model-only items are 1 logit harder by construction: the estimate sees most of that shift
    assert est[:300].mean() - est[300:].mean() < -0.5


def test_rasch_easiness_stays_finite_for_unanimous_and_empty_items() -> None:
    correct = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [np.nan, np.nan, np.nan], [1.0, 0.0, np.nan]])
    est = rasch_easiness(correct)
    assert np.all(np.isfinite(est))
    assert est[0] > est[3] > est[1]
    assert est[2] == 0.0


def test_text_stats_are_finite_and_of_fixed_length() -> None:
    texts = ["", "What is 2 + 3 * (4 - 1)?", "def f(x):\n    return x + 1\n" * 40, "word. " * 500]
    rows = [text_stats(t) for t in texts]
    assert len({len(r) for r in rows}) == 1
    assert all(math.isfinite(v) for r in rows for v in r)
    code, prose = rows[2], rows[3]
    names = ["chars", "words", "digits", "lines", "numbers", "ops", "parens", "distinct", "defs", "indent", "sentences"]
    assert len(rows[0]) == len(names)
    assert code[names.index("defs")] > 0 and prose[names.index("defs")] == 0
    assert prose[names.index("sentences")] > code[names.index("sentences")]
    # the tail alone is read after the first statistic
    assert text_stats("x" * 5000 + "tail", tail_chars=4)[1:] == text_stats("tail", tail_chars=4)[1:]
