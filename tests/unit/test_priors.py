"""A model with no recorded outcome yet is routed on an explicit prior until it is profiled (issue 17, item 5)."""

from __future__ import annotations

import pytest

from scope_shared import AnchorStore, ConfigError, ModelCard, NoAnchorDataError, Outcome, ScopeEngine, UnknownModelError
from scope_shared.estimators import AnchorStatsEstimator, Prior

from .conftest import CARDS, MATH

FRESH = ModelCard(name="fresh", input_per_mtok=1.0, output_per_mtok=1.0)
SUM = "what is 41 plus 42 in arithmetic"


def _engine(store: AnchorStore, **kw: object) -> ScopeEngine:
    return ScopeEngine(store=store, models=[*CARDS, FRESH], estimator=AnchorStatsEstimator(), **kw)  # type: ignore[arg-type]


def test_without_a_prior_a_model_with_no_outcome_cannot_be_estimated(store: AnchorStore) -> None:
    with pytest.raises(NoAnchorDataError):
        _engine(store).route(SUM)


def test_a_stated_prior_routes_the_model_and_every_decision_says_so(store: AnchorStore) -> None:
    engine = _engine(store, priors={"fresh": Prior(p_correct=1.0, output_tokens=10)})  # ties big, cheaper
    d = engine.route(SUM, options={"value_per_correct": None})
    fresh = d.estimates["fresh"]
    assert d.model == "fresh" and fresh.p_correct == 1.0 and fresh.estimator == "prior"
    assert fresh.output_tokens == pytest.approx(10) and fresh.cost == pytest.approx(FRESH.cost(fresh.input_tokens, 10))
    assert d.degraded and "fresh has no recorded outcome yet" in d.reason and "scope-router profile" in d.reason
    assert d.estimates["big"].estimator == "anchors" and not d.estimates["big"].degraded


def test_a_like_prior_borrows_a_similar_models_estimate_at_its_own_prices(store: AnchorStore) -> None:
    engine = _engine(store, priors={"fresh": "small"}, value_per_correct=1.0)
    d = engine.route(SUM, options={"candidates": ["big", "fresh"]})
    fresh, small = d.estimates["fresh"], engine.estimate([SUM], options={"candidates": ["small"]})[0][0]["small"]
    assert set(d.estimates) == {"big", "fresh"}  # the borrowed-from model is not a candidate here
    assert fresh.p_correct == small.p_correct and fresh.output_tokens == small.output_tokens
    assert fresh.cost == pytest.approx(FRESH.cost(small.input_tokens, small.output_tokens)) != small.cost
    assert fresh.estimator == "like:small" and fresh.degraded


def test_once_profiled_the_prior_is_no_longer_used(store: AnchorStore) -> None:
    engine = _engine(store, priors={"fresh": Prior(p_correct=0.99)}, write_behind=0)
    store.add([Outcome(query=q, model="fresh", correct=0.0, output_tokens=5) for q in MATH])
    d = engine.route(SUM, options={"value_per_correct": None})
    assert d.estimates["fresh"].estimator == "anchors" and d.estimates["fresh"].p_correct < 0.5
    assert not d.estimates["fresh"].degraded


def test_priors_are_checked_when_the_engine_is_built(store: AnchorStore) -> None:
    with pytest.raises(UnknownModelError, match="not a model of the engine"):
        _engine(store, priors={"nope": Prior()})
    with pytest.raises(UnknownModelError, match="name another model"):
        _engine(store, priors={"fresh": "fresh"})
    with pytest.raises(ConfigError, match="must be a Prior"):
        _engine(store, priors={"fresh": 0.9})
