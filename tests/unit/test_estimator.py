from __future__ import annotations

import pytest

from scope_shared import AnchorStatsEstimator, ModelCard, NoAnchorDataError, Prior
from scope_shared.estimators import AnchorOutcome, AnchorRecord, ModelStats, QueryContext

CARD = ModelCard(name="m", input_per_mtok=1.0, output_per_mtok=2.0)


def ctx(anchors: list[tuple[float, float, float]], stats: ModelStats | None = None) -> QueryContext:
    recs = tuple(
        AnchorRecord(anchor_id=f"a{i}", question=f"q{i}", similarity=s, outcomes={"m": AnchorOutcome(c, t)})
        for i, (s, c, t) in enumerate(anchors)
    )
    st = {"m": stats or ModelStats(n=100, p_correct=0.5, mean_log_tokens=4.0, n_tokens=100)}
    return QueryContext(query="q", input_tokens=100, anchors=recs, stats=st)


def test_weighted_and_shrunk_toward_model_record() -> None:
    est = AnchorStatsEstimator(k=10, power=2.0, prior_strength=1.0)
    [row] = est.estimate([ctx([(1.0, 1.0, 99.0), (1.0, 1.0, 99.0), (0.5, 0.0, 9.0)])], [CARD])
    e = row["m"]
    # (1 + 1 + 0.25*0) + 1*0.5 over (1 + 1 + 0.25 + 1)
    assert e.p_correct == pytest.approx(2.5 / 3.25)
    assert 0 < e.p_correct < 1
    assert e.cost == pytest.approx((100 * 1.0 + e.output_tokens * 2.0) / 1e6)
    assert [a.anchor_id for a in e.evidence] == ["a0", "a1", "a2"]


def test_all_correct_neighbours_do_not_give_one() -> None:
    est = AnchorStatsEstimator(k=3)
    [row] = est.estimate([ctx([(0.9, 1.0, 5.0)] * 3)], [CARD])
    assert 0.5 < row["m"].p_correct < 1.0


def test_only_k_anchors_used() -> None:
    est = AnchorStatsEstimator(k=2, prior_strength=0.0)
    [row] = est.estimate([ctx([(0.9, 1.0, 5.0), (0.9, 1.0, 5.0), (0.9, 0.0, 5.0)])], [CARD])
    assert row["m"].p_correct == pytest.approx(1.0)


def test_no_anchor_data_is_an_error_unless_prior() -> None:
    c = QueryContext(query="q", input_tokens=10, anchors=(), stats={})
    with pytest.raises(NoAnchorDataError, match="'m' has no recorded outcome"):
        AnchorStatsEstimator().estimate([c], [CARD])
    [row] = AnchorStatsEstimator(prior=Prior(p_correct=0.3, output_tokens=100)).estimate([c], [CARD])
    assert row["m"].p_correct == pytest.approx(0.3)
    assert row["m"].output_tokens == pytest.approx(100)
    assert row["m"].degraded and "prior" in row["m"].reason
