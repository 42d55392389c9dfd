"""The answer posterior: agreement raises P(correct), disagreement lowers it, unreadable answers weigh nothing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scope_shared.cascade.checkers import LogprobCalibration, LogprobChecker, ModelAnswer, ParseChecker
from scope_shared.cascade.posterior import AnswerPosterior, Quadrature, correct_curves
from scope_shared.errors import ConfigError

QUAD = Quadrature.of(10)


def curve(p: float, loading: float = 0.0, shift: float = 0.0) -> np.ndarray:
    return correct_curves([p], [loading], QUAD, shift=[shift])[0]


def test_curves_average_to_the_prehoc_probability() -> None:
    p = np.array([0.05, 0.4, 0.7, 0.97])
    for loading in (0.0, 0.5, 1.5, 3.0):
        q = correct_curves(p, np.full(4, loading), QUAD)
        np.testing.assert_allclose(q @ QUAD.weights, p, atol=1e-9)
        if loading:
            assert np.all(np.diff(q, axis=1) > 0)  # easier queries (higher d) are answered correctly more often


def test_one_answer_keeps_its_prehoc_probability() -> None:
    post = AnswerPosterior(collision=0.3, quad=QUAD).add(curve(0.7, 1.0), None, answer="B")
    assert post.best() == (0, pytest.approx(0.7))


def test_agreement_raises_and_disagreement_lowers_p_correct() -> None:
    first = AnswerPosterior(collision=0.3, quad=QUAD).add(curve(0.7), None, answer="B")
    agree = first.add(curve(0.6), 0, answer="B")
    disagree = first.add(curve(0.6), None, answer="C")
    p_first = first.best()[1]
    assert agree.best() == (0, pytest.approx(agree.probabilities()[0]))
    assert agree.probabilities()[0] > p_first + 0.1
    assert disagree.probabilities()[0] < p_first - 0.1
    # independent models, collision rho: odds of "B correct" vs "none correct" after agreement
    p1, p2, rho = 0.7, 0.6, 0.3
    correct = p1 * p2
    neither = (1 - p1) * (1 - p2) * rho  # both wrong, and the second wrong answer hit the first
    assert agree.probabilities()[0] == pytest.approx(correct / (correct + neither))


def test_agreement_means_less_when_wrong_answers_often_coincide() -> None:
    rare = AnswerPosterior(collision=0.05, quad=QUAD).add(curve(0.6), None, answer="7").add(curve(0.6), 0, answer="7")
    common = AnswerPosterior(collision=0.9, quad=QUAD).add(curve(0.6), None, answer="A").add(curve(0.6), 0, answer="A")
    assert rare.best()[1] > common.best()[1] + 0.1


def test_the_stronger_model_wins_a_disagreement() -> None:
    post = AnswerPosterior(collision=0.5, quad=QUAD).add(curve(0.55), None, answer="A", p=0.55)
    post = post.add(curve(0.95), None, answer="B", p=0.95)
    assert post.best()[0] == 1
    assert post.probabilities()[1] > 0.8


def test_correlated_errors_make_agreement_weaker() -> None:
    def agreed(loading: float) -> float:
        post = AnswerPosterior(collision=0.5, quad=QUAD).add(curve(0.7, loading), None, answer="A")
        return post.add(curve(0.7, loading), 0, answer="A").best()[1]

    assert agreed(0.0) > agreed(2.0) + 0.02


def test_disagreement_lowers_a_third_models_chances() -> None:
    """What the answers say about the query's difficulty carries over to models not called yet."""
    post = AnswerPosterior(collision=0.3, quad=QUAD).add(curve(0.8, 1.5), None, answer="A")
    strong = curve(0.9, 1.5)
    before = post.p_correct(strong)
    after = post.add(curve(0.8, 1.5), None, answer="B").p_correct(strong)
    assert after < before - 0.02
    assert post.add(curve(0.8, 1.5), 0, answer="A").p_correct(strong) > before


def test_branches_sum_to_one_and_average_back_to_the_posterior() -> None:
    post = AnswerPosterior(collision=0.4, quad=QUAD).add(curve(0.6, 1.0), None, answer="A")
    post = post.add(curve(0.5, 1.0), None, answer="B")
    q = curve(0.8, 1.0)
    branches = post.branches(q)
    assert len(branches) == 3  # agrees with A, agrees with B, a new answer
    assert sum(p for p, _, _ in branches) == pytest.approx(1.0)
    # the martingale property: expected posterior of A after the next answer is the posterior of A now
    expected_a = sum(p * child.probabilities()[0] for p, _, child in branches)
    assert expected_a == pytest.approx(post.probabilities()[0])
    assert post.p_correct(q) == pytest.approx(
        sum(p * child.probabilities()[k] for p, k, child in branches if k is not None)
        + branches[-1][0] * branches[-1][2].probabilities()[-1]
    )


def test_with_two_options_a_third_distinct_answer_is_impossible_under_none_correct() -> None:
    """collision near 1 (Winogrande: one wrong option): when A and B were both given, one of them is right."""
    post = (
        AnswerPosterior(collision=0.99, quad=QUAD).add(curve(0.6), None, answer="A").add(curve(0.6), None, answer="B")
    )
    assert post.probabilities().sum() > 0.98


def test_collision_must_be_a_probability() -> None:
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="collision"):
            AnswerPosterior(collision=bad, quad=QUAD)


def test_unparseable_answers_are_set_aside() -> None:
    checker = ParseChecker()
    assert not checker.check(ModelAnswer(model="m", text="  ", answer=None), kind="choice").usable
    unreadable = checker.check(ModelAnswer(model="m", text="I think so", answer=None), kind="choice")
    assert not unreadable.usable and "choice" in unreadable.note
    assert checker.check(ModelAnswer(model="m", text="(B)", answer="B"), kind="choice").usable


def test_logprob_checker_is_honest_without_logprobs_or_calibration() -> None:
    answer = ModelAnswer(model="m", text="(B)", answer="B", logprobs=[-0.1, -0.2])
    assert LogprobChecker().check(ModelAnswer(model="m", text="(B)", answer="B"), kind="choice").log_odds == 0.0
    uncalibrated = LogprobChecker().check(answer, kind="choice")
    assert uncalibrated.log_odds == 0.0 and "not calibrated" in uncalibrated.note


def test_logprob_calibration_learns_what_logprobs_add() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(2000):
        p = float(rng.uniform(0.3, 0.9))
        feature = float(rng.normal(-0.5, 0.3))
        true_logit = np.log(p / (1 - p)) + 4.0 * (feature + 0.5)
        y = float(rng.random() < 1 / (1 + np.exp(-true_logit)))
        rows.append(("choice", feature, p, y))
    cal = LogprobCalibration.fit(rows)
    bias, weight = cal.coef["choice"]
    assert 3.0 < weight < 5.0
    confident = LogprobChecker(calibration=cal).check(
        ModelAnswer(model="m", text="(B)", answer="B", logprobs=[-0.05]), kind="choice"
    )
    unsure = LogprobChecker(calibration=cal).check(
        ModelAnswer(model="m", text="(B)", answer="B", logprobs=[-1.5]), kind="choice"
    )
    assert confident.log_odds > 1.0 > -1.0 > unsure.log_odds
    assert (
        LogprobChecker(calibration=cal)
        .check(ModelAnswer(model="m", text="7", answer="7", logprobs=[-0.05]), kind="number")
        .log_odds
        == 0.0
    )  # no fit for that kind


def test_posterior_is_calibrated_when_its_assumptions_hold() -> None:
    """Simulated answers from the model itself: the best answer's posterior matches its hit rate."""
    rng = np.random.default_rng(1)
    collision, loading = 0.4, 1.0
    ps, hits = [], []
    for _ in range(3000):
        d = rng.normal()
        priors = rng.uniform(0.3, 0.9, size=3)
        q_all = correct_curves(priors, np.full(3, loading), QUAD)
        b = np.log(priors / (1 - priors))
        # the true per-query chance: solve like correct_curves does, then evaluate at this d
        probs = np.array([np.interp(d, QUAD.nodes[:, 0], q_all[i]) for i in range(3)])
        post = AnswerPosterior(collision=collision, quad=QUAD)
        truth: list[bool] = []
        wrong_values: list[str] = []
        for i in range(3):
            if rng.random() < probs[i]:
                ans = "T"
            elif wrong_values and rng.random() < min(collision * len(wrong_values), 1.0):
                ans = wrong_values[int(rng.integers(len(wrong_values)))]
            else:
                ans = f"W{len(wrong_values)}"
                wrong_values.append(ans)
            k = next((j for j, a in enumerate(post.answers) if a == ans), None)
            if k is None:
                truth.append(ans == "T")
            post = post.add(q_all[i], k, answer=ans, p=float(priors[i]))
        best, p = post.best()
        assert best is not None
        ps.append(p)
        hits.append(truth[best])
        del b
    ps_arr, hits_arr = np.array(ps), np.array(hits, dtype=float)
    for lo, hi in itertools.pairwise([0.0, 0.6, 0.8, 0.9, 1.0]):
        mask = (ps_arr >= lo) & (ps_arr < hi)
        if mask.sum() > 100:
            assert abs(ps_arr[mask].mean() - hits_arr[mask].mean()) < 0.05, (lo, hi)


def test_leaf_best_is_what_the_branches_give() -> None:
    post = AnswerPosterior(collision=0.4, quad=QUAD).add(curve(0.6, 1.0), None, answer="A")
    post = post.add(curve(0.5, 1.0), None, answer="B").add(curve(0.7, 1.0), 0, answer="A")
    q = curve(0.8, 1.0)
    fast = post.leaf_best(q)
    slow = [(p, child.best()[1]) for p, _, child in post.branches(q)]
    assert len(fast) == len(slow) == 3
    for (pf, bf), (ps, bs) in zip(fast, slow, strict=True):
        assert pf == pytest.approx(ps) and bf == pytest.approx(bs)
