"""SCOPE on ``vllm.LLM`` in this process, for offline batch jobs; vLLM is imported only when it first generates."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from scope_shared.errors import ConfigError, EstimatorUnavailableError
from scope_shared.estimators.scope.backends import DEFAULT_SCOPE_MODEL, Completion, SamplingConfig, ScopeBackend

__all__ = ["InProcessBackend"]

logger = logging.getLogger(__name__)


class InProcessBackend(ScopeBackend):
    """``vllm.LLM`` in this process, for offline batch jobs (needs the ``vllm`` extra and, for the real
    model, a GPU). vLLM batches all prompts itself; the engine is built on first use.

    Args:
        model: hub id or local directory of the SCOPE weights.
        llm: an already-built ``vllm.LLM`` to use instead of building one.
        llm_kwargs: passed to ``vllm.LLM`` (e.g. ``max_model_len=8192``, ``dtype="bfloat16"``).
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_SCOPE_MODEL,
        llm: Any | None = None,
        llm_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self._llm = llm
        self._llm_kwargs = dict(llm_kwargs or {})
        self._lock = threading.Lock()
        self.identity = f"inprocess:{model}"

    def __repr__(self) -> str:
        return f"InProcessBackend(model={self.model!r}, built={self._llm is not None})"

    @staticmethod
    def _vllm() -> Any:
        try:
            return importlib.import_module("vllm")
        except ImportError as exc:
            msg = (
                "the in-process SCOPE backend needs vLLM: pip install 'scope-router[vllm]' "
                "(or serve the model and use base_url=... instead)"
            )
            raise ConfigError(msg) from exc

    def _engine(self) -> Any:
        if self._llm is None:
            vllm = self._vllm()
            logger.info("loading SCOPE model %s in-process with vLLM", self.model)
            self._llm = vllm.LLM(model=self.model, **self._llm_kwargs)
        return self._llm

    def _params(self, sampling: SamplingConfig) -> Any:
        vllm = self._vllm()
        structured = None
        if sampling.structured_outputs is not None:
            params_mod = importlib.import_module("vllm.sampling_params")
            structured = params_mod.StructuredOutputsParams(**dict(sampling.structured_outputs))
        return vllm.SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            structured_outputs=structured,
        )

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]:
        if not prompts:
            return []
        with self._lock:
            llm = self._engine()
            params = self._params(sampling)
            conversations = [[{"role": "user", "content": p}] for p in prompts]
            try:
                outputs = llm.chat(conversations, params, use_tqdm=False)
            except (RuntimeError, OSError) as exc:
                msg = f"in-process vLLM engine failed: {type(exc).__name__}: {exc}"
                raise EstimatorUnavailableError(msg) from exc
        return [
            Completion(
                texts=tuple(str(o.text) for o in out.outputs),
                generated_tokens=sum(len(o.token_ids) for o in out.outputs),
                cut=tuple(getattr(o, "finish_reason", None) == "length" for o in out.outputs),
            )
            for out in outputs
        ]

    async def agenerate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]:
        return await asyncio.to_thread(self.generate, prompts, sampling)
