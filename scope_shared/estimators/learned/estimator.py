"""The learned estimator itself: configuration, fit lifecycle (load, fit, refit on growth) and prediction."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from scope_shared.errors import ConfigError, EstimatorUnavailableError, StoreUnavailableError
from scope_shared.estimators.anchors import Prior
from scope_shared.estimators.base import AnchorSource, Estimator, Prediction, QueryContext
from scope_shared.estimators.learned.fit import fit_params
from scope_shared.estimators.learned.params import FitReport, FitSettings, Params, params_from_json, params_to_json
from scope_shared.estimators.learned.predict import predict
from scope_shared.types import AnchorRecord

__all__ = ["LearnedEstimator"]

logger = logging.getLogger(__name__)


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
        self._params: Params | None = None
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
    def _settings(self) -> FitSettings:
        return FitSettings(
            k=self.k,
            power=self.power,
            prior_strength=self.prior_strength,
            ridge_alpha=self.ridge_alpha,
            max_fit_anchors=self.max_fit_anchors,
            min_fit_pairs=self.min_fit_pairs,
            tail_chars=self.tail_chars,
            seed=self.seed,
            max_store_anchors=self.max_store_anchors,
        )

    @property
    def state_key(self) -> str:
        """The key of this configuration's fit in the store's saved state."""
        return self._settings.state_key

    def _save(self, store: AnchorSource) -> None:
        params = self._params
        if params is None:
            return
        try:
            store.save_state(self.state_key, json.dumps(params_to_json(params)))
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
            params = params_from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring an unreadable saved fit of the learned estimator (%s); refitting", exc)
            return None
        return self._set_params(params)

    def fit_anchors(
        self, anchors: Sequence[AnchorRecord], embeddings: npt.ArrayLike, input_tokens: Sequence[float]
    ) -> FitReport:
        """Fit on anchors given directly (row-aligned embeddings and input tokens); returns the report."""
        return self._set_params(fit_params(anchors, embeddings, input_tokens, self._settings))

    def _set_params(self, params: Params) -> FitReport:
        self._params = params
        return params.report

    # -- lazy fit and refit --------------------------------------------------------------------

    def _ensure_fitted(self, ctxs: Sequence[QueryContext]) -> Params:
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

    def _maybe_refit(self, version: str | None, params: Params) -> None:
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
        return predict(
            queries,
            models,
            params,
            self._settings,
            prior=self.prior,
            exact_weight=self.exact_weight,
            evidence=self.evidence,
        )
