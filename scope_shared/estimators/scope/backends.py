"""What every SCOPE backend shares: the sampling settings, what comes back, and the backend interface.

Two backends implement :class:`ScopeBackend`: :class:`~scope_shared.estimators.scope.http.HTTPBackend`
(a vLLM OpenAI-compatible server, the production path) and
:class:`~scope_shared.estimators.scope.inprocess.InProcessBackend` (``vllm.LLM`` in this process).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scope_shared.errors import ConfigError

__all__ = ["DEFAULT_SCOPE_MODEL", "Completion", "SamplingConfig", "ScopeBackend"]

DEFAULT_SCOPE_MODEL = "Cooolder/SCOPE"


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """How SCOPE is sampled. Defaults follow the model card (8 samples, temperature 0.6-0.7) and the
    authors' script (``top_p=0.95``, ``top_k=20``, up to 1536 new tokens).

    ``structured_outputs`` is passed to vLLM as is (e.g. ``{"regex": ...}``) to constrain the answer.
    """

    n: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_tokens: int = 1536
    seed: int | None = None
    structured_outputs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.n < 1:
            problems.append(f"samples must be >= 1, got {self.n}")
        if not 0.0 <= self.temperature <= 2.0:
            problems.append(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k != -1 and self.top_k < 1:
            problems.append(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1, got {self.max_tokens}")
        if problems:
            msg = "; ".join(problems)
            raise ConfigError(msg)

    def key(self) -> str:
        """A stable string of every setting, for cache keys."""
        so = None if self.structured_outputs is None else dict(self.structured_outputs)
        return json.dumps(
            [self.n, self.temperature, self.top_p, self.top_k, self.max_tokens, self.seed, so],
            sort_keys=True,
            default=str,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """The samples SCOPE returned for one prompt, and how many tokens it generated for them.

    ``cut`` holds, per sample, whether it stopped at ``max_tokens`` before ending on its own (empty when
    the backend does not say): such a sample has no final line, and is not read.
    """

    texts: tuple[str, ...]
    generated_tokens: int
    cut: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if self.cut and len(self.cut) != len(self.texts):
            msg = f"Completion has {len(self.texts)} texts but {len(self.cut)} cut flags"
            raise ValueError(msg)


class ScopeBackend(ABC):
    """Runs rendered SCOPE prompts; one :class:`Completion` (``n`` samples) per prompt, in order."""

    #: Identifies the model and where it runs; part of cache keys.
    identity: str = ""

    @abstractmethod
    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]:
        """Generate for every prompt; raises :class:`EstimatorUnavailableError` when the backend fails."""

    @abstractmethod
    async def agenerate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]:
        """Async form of :meth:`generate`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or engines."""
