"""Errors raised by scope-router.

Every error derives from :class:`ScopeError`; leaves also subclass the builtin a caller would expect::

    ScopeError
    ├── ConfigError (ValueError)              bad constructor or call arguments
    ├── DataError (ValueError)                malformed outcome rows, price tables, files
    ├── UnknownModelError (KeyError)          a model name the engine does not know
    ├── NoAnchorDataError (LookupError)       a model has no recorded outcome in the store
    ├── EmptyStoreError (LookupError)         the anchor store holds no anchors
    ├── BudgetExceededError (RuntimeError)    no candidate fits the remaining budget or per-call cap
    ├── StoreUnavailableError (ConnectionError)   the Chroma backend cannot be reached (or does not answer)
    │   └── StoreAccessError                      reached, but TLS verification failed or credentials were refused
    ├── EstimatorUnavailableError (ConnectionError)  an estimator backend (vLLM) cannot be reached, or not ready
    ├── EmbedderError (RuntimeError)          the embedding model could not be loaded or run
    ├── ModelCallError (RuntimeError)         a model being profiled cannot be called (down, refused, broken)
    └── ReplayMissError (LookupError)         a replay model was asked a query it has no record of
"""

from __future__ import annotations

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "DataError",
    "EmbedderError",
    "EmptyStoreError",
    "EstimatorUnavailableError",
    "ModelCallError",
    "NoAnchorDataError",
    "ReplayMissError",
    "ScopeError",
    "StoreAccessError",
    "StoreUnavailableError",
    "UnknownModelError",
]


class ScopeError(Exception):
    """Root of every error raised by scope-router."""


class ConfigError(ScopeError, ValueError):
    """An argument or setting is invalid."""


class DataError(ScopeError, ValueError):
    """Input data (outcome rows, prices, files) is malformed."""


class UnknownModelError(ScopeError, KeyError):
    """A model name is not among the engine's model cards."""

    def __str__(self) -> str:
        # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class NoAnchorDataError(ScopeError, LookupError):
    """A model has no recorded outcome on any anchor, and no prior was configured."""


class EmptyStoreError(ScopeError, LookupError):
    """The anchor store holds no anchors to estimate from."""


class BudgetExceededError(ScopeError, RuntimeError):
    """No candidate fits the remaining budget or the per-call cost cap."""


class StoreUnavailableError(ScopeError, ConnectionError):
    """The anchor store backend (a Chroma server) cannot be reached."""


class StoreAccessError(StoreUnavailableError):
    """The Chroma server (or the proxy in front of it) was reached but refused us: the TLS handshake failed
    (certificate not verified) or the credentials were refused (HTTP 401/403); or an embedded store's directory
    is read-only.

    A :class:`StoreUnavailableError`, so a running engine routes degraded and keeps recorded outcomes for
    retry, as for an outage; a new engine or the CLI fails with the one-line reason.
    """


class EstimatorUnavailableError(ScopeError, ConnectionError):
    """An estimator backend (a vLLM server) cannot be reached or keeps failing, or the estimator is not ready yet
    (the learned estimator's first fit runs in the background)."""


class EmbedderError(ScopeError, RuntimeError):
    """The embedding model could not be loaded or failed to embed."""


class ModelCallError(ScopeError, RuntimeError):
    """A model being profiled could not be called: its endpoint is unreachable, refused the credentials, kept
    failing after retries, or answered with something that is not a completion. Outcomes recorded before it
    stay in the store; a re-run resumes where it stopped."""


class ReplayMissError(ScopeError, LookupError):
    """A replay model (answering from recorded outcomes) was asked a query it has no record of."""
