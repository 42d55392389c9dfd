"""The learned estimator itself: configuration, fit lifecycle (load, fit, refit on growth) and prediction.

Lifecycle: :meth:`LearnedEstimator.bind` (the engine calls it at construction) starts loading the fit saved
with the store, or fitting, in a background thread; until a fit is ready a prediction raises
:class:`EstimatorUnavailableError` at once, so the engine answers from its fallback and marks the decision
degraded. :meth:`~LearnedEstimator.wait_ready` waits for the fit; :meth:`~LearnedEstimator.fit` and
:meth:`~LearnedEstimator.from_store` fit in the caller's thread.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import math
import threading
import time
import weakref
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
        min_own_coverage: a model with outcomes on fewer than this share of the anchors (a new model profiled on
            a few dozen) is estimated without its own outcomes among the query's neighbours: there are one or
            two at most, far noisier than the ~``k`` every model had when the weights were fitted, so its overall
            accuracy (which a representative profiling selection estimates well) stands in; the difficulty and
            text features still come from every other model. Measured in docs/anchor_selection.md.
        ready_wait_s: a prediction made in the first this-many seconds after :meth:`bind` waits for the
            background load or fit to finish until then (loading a saved fit takes well under a second), then
            raises :class:`EstimatorUnavailableError` (the engine's fallback answers, degraded) while a fit runs.
        fit_retry_s: after the background load or fit of an unfitted estimator fails (e.g. the store is
            down), a prediction starts another attempt once this many seconds have passed; the wait doubles
            with each failure in a row, up to 10 minutes.
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
        min_own_coverage: float = 0.1,
        fit_retry_s: float = 10.0,
        ready_wait_s: float = 2.0,
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
        if refit_check_s < 0 or fit_retry_s < 0:
            msg = f"refit_check_s and fit_retry_s must be >= 0, got {refit_check_s}, {fit_retry_s}"
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
        if not 0.0 <= min_own_coverage <= 1.0:
            msg = f"min_own_coverage must be in [0, 1], got {min_own_coverage}"
            raise ConfigError(msg)
        self.min_own_coverage = min_own_coverage
        if not 0.0 <= ready_wait_s < math.inf:
            msg = f"ready_wait_s must be >= 0 seconds, got {ready_wait_s}"
            raise ConfigError(msg)
        self.ready_wait_s = ready_wait_s
        self.seed = seed
        self.max_store_anchors = max_store_anchors
        self.persist = persist
        self.fit_retry_s = fit_retry_s
        self._store: AnchorSource | None = None
        self._params: Params | None = None
        self._lock = threading.Lock()
        self._seen_version: str | None = None
        self._counted_at = -math.inf
        self._thread: threading.Thread | None = None  # the background first fit or refit
        self._started_at = -math.inf
        self._failures = 0  # background first fits failed in a row
        self._failed_at = -math.inf
        self._last_error = ""

    # -- fitting -------------------------------------------------------------------------------

    @classmethod
    def from_store(cls, store: AnchorSource, **options: Any) -> LearnedEstimator:
        """Build, fit on ``store`` now (in this thread) and bind to it."""
        est = cls(**options)
        est.fit(store)
        est.bind(store)
        return est

    def bind(self, store: AnchorSource) -> None:
        """Keep ``store`` for refits and, if not fitted yet, start loading or fitting in the background.

        The engine calls this at construction. Nothing here touches the store: a store that is down makes
        the background attempt fail (logged at WARNING and retried, see ``fit_retry_s``), never this call.
        """
        self._store = store
        if self._params is None:
            self._start(store, first=True)

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
        self._counted_at = time.monotonic()  # the growth check need not count again right away
        if total > self.max_store_anchors:
            records, embeddings, in_tokens = store.sample(self.max_store_anchors, seed=self.seed)
        else:
            records, embeddings, in_tokens = store.export()
        store.model_stats()  # refreshes tokens_per_char
        tpc = store.tokens_per_char
        tokens = [
            t if t is not None else max(1.0, len(r.question) * tpc) for r, t in zip(records, in_tokens, strict=True)
        ]
        params = fit_params(records, np.asarray(embeddings, dtype=np.float64), tokens, self._settings)
        if len(records) < total:
            note = f"fitted on a random {len(records)} of {total} anchors"
            report = dataclasses.replace(
                params.report, anchors=total, note="; ".join(x for x in (params.report.note, note) if x)
            )
            params = dataclasses.replace(params, anchors=total, report=report)
        self._set_params(params)
        if self.persist:
            self._save(store)
        return params.report

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

    # -- background fit and refit ------------------------------------------------------------

    def _start(self, store: AnchorSource, *, first: bool) -> bool:
        """Start a background first fit (load the saved one, else fit) or refit, unless one is running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._started_at = time.monotonic()
            target = self._first_fit if first else self._refit
            self._thread = threading.Thread(target=target, args=(store,), name="scope-learned-fit", daemon=True)
            self._thread.start()
            _join_at_exit(self._thread)
            return True

    def _first_fit(self, store: AnchorSource) -> None:
        try:
            if not (self.persist and self.load(store) is not None):
                self.fit(store)
        except Exception as exc:
            self._failures += 1
            self._failed_at = time.monotonic()
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "learned estimator could not load or fit on its anchors (%s); the fallback estimates until a "
                "later prediction retries in %.0fs",
                self._last_error,
                self._retry_delay(),
                exc_info=not isinstance(exc, StoreUnavailableError),
            )
        else:
            self._failures = 0

    def _refit(self, store: AnchorSource) -> None:
        try:
            self.fit(store)
        except Exception:
            logger.exception("learned estimator refit failed; the previous fit keeps serving")

    def _retry_delay(self) -> float:
        return float(min(self.fit_retry_s * 2.0 ** max(self._failures - 1, 0), 600.0))

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for a background first fit in progress; returns whether a fit is ready.

        Returns False at once when none is in progress and there is no fit (not bound, or the last attempt
        failed: a later prediction retries it).
        """
        thread = self._thread
        if self._params is None and thread is not None:
            thread.join(timeout)
        return self._params is not None

    def wait_refit(self, timeout: float | None = None) -> None:
        """Wait for a background fit or refit in progress (if any) to finish."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _ensure_fitted(self, ctxs: Sequence[QueryContext]) -> Params:
        params = self._params
        if params is None:
            params = self._not_ready()
        self._maybe_refit(ctxs[0].anchor_version if ctxs else None, params)
        return params

    def _not_ready(self) -> Params:
        """The fit if it became ready meanwhile; else raise, after starting a retry that is due."""
        store = self._store
        if store is None:
            msg = (
                "LearnedEstimator is not fitted: call fit(store) or from_store(store), or use it through "
                "ScopeEngine, which binds its store and fits in the background"
            )
            raise ConfigError(msg)
        thread = self._thread
        if thread is not None and thread.is_alive() and self.ready_wait_s > 0:
            # a saved fit loads in well under a second: the first decisions need not go to the fallback
            thread.join(max(0.0, self._started_at + self.ready_wait_s - time.monotonic()))
        running = thread is not None and thread.is_alive()
        params = self._params  # read after the thread's state: a fit that finished just now is seen here
        if params is not None:
            return params
        now = time.monotonic()
        if not running and (not self._failures or now - self._failed_at >= self._retry_delay()):
            if self._start(store, first=True):
                logger.info("retrying the learned estimator's load or fit on its anchors")
            running = True  # by this call or by a concurrent one
        if running:
            msg = (
                f"learned estimator is still fitting on its anchors (started {now - self._started_at:.1f}s ago); "
                "wait_ready() waits for it"
            )
        else:
            msg = (
                f"learned estimator has no fit: loading or fitting on its anchors failed ({self._last_error}); "
                f"retried in {max(0.0, self._failed_at + self._retry_delay() - now):.0f}s"
            )
        raise EstimatorUnavailableError(msg)

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
        if self._start(store, first=False):
            logger.info("anchors changed from %d to %d; refitting the learned estimator", params.anchors, count)

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
            min_own_coverage=self.min_own_coverage,
        )


#: How long the interpreter's exit waits for a fit in progress (a daemon thread inside Chroma's or numpy's native
#: code while the interpreter finalizes can crash the process, e.g. on SIGTERM while a store is being fitted).
EXIT_JOIN_S = 10.0
_FITS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_FITS_LOCK = threading.Lock()
_hooked = False


def _join_at_exit(thread: threading.Thread) -> None:
    global _hooked
    with _FITS_LOCK:
        if not _hooked:
            atexit.register(_join_fits)
            _hooked = True
        _FITS.add(thread)


def _join_fits() -> None:
    """At exit: wait (at most ``EXIT_JOIN_S`` in all) for the background fits still running."""
    deadline = time.monotonic() + EXIT_JOIN_S
    with _FITS_LOCK:
        threads = list(_FITS)
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
