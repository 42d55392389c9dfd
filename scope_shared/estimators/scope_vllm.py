"""SCOPE served by vLLM: the model predicts each candidate's correctness and output length.

For every (query, candidate) pair the estimator shows SCOPE the candidate's own record on the ``k`` most
similar retrieved anchors (see :mod:`scope_prompt`), samples ``samples`` answers in one request (``n``),
and aggregates them as the model card advises: ``p_correct`` is the share of parsed samples that say
``yes``, ``output_tokens`` the median of the parsed lengths. Unparsable samples are counted and reported.

Two backends sit behind :class:`ScopeBackend`:

* :class:`HTTPBackend` - a vLLM OpenAI-compatible server (``vllm serve Cooolder/SCOPE``), the production
  path. All prompts of a batch go out concurrently, at most ``max_concurrency`` at a time; connection
  errors, timeouts, 429 and 5xx are retried with tenacity, after which :class:`EstimatorUnavailableError`
  is raised (the engine then falls back to anchor statistics and marks the decision degraded).
* :class:`InProcessBackend` - ``vllm.LLM`` in this process, for offline batch jobs. vLLM is imported only
  when this backend first generates.

This is the only module that knows vLLM's request fields (``n``, ``top_k``, ``structured_outputs``; the
old ``guided_*`` fields are silently ignored by vLLM 0.32 and never sent).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import logging
import math
import statistics
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from scope_shared.errors import ConfigError, EstimatorUnavailableError, NoAnchorDataError
from scope_shared.estimators.base import (
    AnchorOutcome,
    AnchorRecord,
    Estimator,
    ModelStats,
    Prediction,
    QueryContext,
)
from scope_shared.estimators.scope_prompt import (
    SCOPE_COT,
    AnchorExample,
    ParsedSample,
    PromptTemplate,
    build_prompt,
    parse_output,
)
from scope_shared.types import DEFAULT_OUTPUT_TOKENS, AnchorEvidence

__all__ = [
    "DEFAULT_SCOPE_MODEL",
    "Completion",
    "EstimatorCounters",
    "HTTPBackend",
    "InProcessBackend",
    "SamplingConfig",
    "ScopeBackend",
    "ScopeLLMEstimator",
    "aggregate_samples",
]

logger = logging.getLogger(__name__)

DEFAULT_SCOPE_MODEL = "Cooolder/SCOPE"
#: Output tokens assumed when neither the anchors shown nor the model's record carry token counts.

OnNoAnchorData = Literal["raise", "degrade"]


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
    """The samples SCOPE returned for one prompt, and how many tokens it generated for them."""

    texts: tuple[str, ...]
    generated_tokens: int


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


class _TransientError(Exception):
    """A response worth retrying (429 or 5xx)."""


class _BatchAborted(EstimatorUnavailableError):
    """Raised in a request whose batch already failed elsewhere; never the error a caller sees first."""

    def __init__(self) -> None:
        super().__init__("another request of this batch failed")


def _normalize_base_url(base_url: str) -> str:
    url = base_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        msg = f"base_url must be an http(s) URL like 'http://127.0.0.1:8000/v1', got {base_url!r}"
        raise ConfigError(msg)
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def _request_body(model: str, prompt: str, sampling: SamplingConfig) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.structured_outputs is not None:
        body["structured_outputs"] = dict(sampling.structured_outputs)
    return body


def _error_detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message", err))[:300]
        return str(err)[:300]
    return str(data)[:300]


def _read_response(response: httpx.Response, url: str) -> Completion:
    status = response.status_code
    if status == 429 or status >= 500:
        msg = f"vLLM server at {url} answered {status}: {_error_detail(response)}"
        raise _TransientError(msg)
    if status in (401, 403, 404):
        msg = (
            f"vLLM server at {url} answered {status}: {_error_detail(response)}; "
            "check base_url, api_key and the served model name (GET /v1/models lists it)"
        )
        raise ConfigError(msg)
    if status >= 400:
        msg = f"vLLM server at {url} rejected the request ({status}): {_error_detail(response)}"
        raise EstimatorUnavailableError(msg)
    try:
        data = response.json()
        texts = tuple(str(c["message"]["content"] or "") for c in data["choices"])
        usage = data.get("usage") or {}
        generated = int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"vLLM server at {url} sent an unreadable chat completion: {exc!r}"
        raise EstimatorUnavailableError(msg) from exc
    return Completion(texts=texts, generated_tokens=generated)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | _TransientError)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    logger.warning("SCOPE request failed (attempt %d): %s; retrying", state.attempt_number, exc)


class HTTPBackend(ScopeBackend):
    """A vLLM OpenAI-compatible server (``/v1/chat/completions``).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added when the URL has no path).
        model: the served model name (``--served-model-name``, else the path or hub id it was started
            with); ``None`` asks the server (``GET /v1/models``) on first use and needs it to serve one model.
        api_key: sent as a bearer token (``vllm serve --api-key``); never shown in repr or logs.
        timeout: seconds to wait for one completion (8 chain-of-thought samples can take a while).
        connect_timeout: seconds to wait for a connection.
        max_concurrency: requests in flight at once within one batch.
        retries: further attempts after a connection error, timeout, 429 or 5xx.
        backoff: first wait between attempts in seconds (exponential with jitter, capped at 8x).
        transport, async_transport: httpx transports to use instead of the network (tests).
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str | None = DEFAULT_SCOPE_MODEL,
        api_key: str | None = None,
        timeout: float = 300.0,
        connect_timeout: float = 5.0,
        max_concurrency: int = 16,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_concurrency < 1:
            msg = f"max_concurrency must be >= 1, got {max_concurrency}"
            raise ConfigError(msg)
        if retries < 0 or backoff < 0 or timeout <= 0 or connect_timeout <= 0:
            msg = "retries and backoff must be >= 0, timeouts > 0"
            raise ConfigError(msg)
        self.base_url = _normalize_base_url(base_url)
        self.model = model
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.backoff = backoff
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self.identity = f"http:{self.base_url}:{model or '(served model)'}"

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return (
            f"HTTPBackend(base_url={self.base_url!r}, model={self.model!r}, api_key={key}, "
            f"max_concurrency={self.max_concurrency}, retries={self.retries})"
        )

    def _served(self) -> str:
        assert self.model is not None
        return self.model

    def _set_model(self, response: httpx.Response) -> None:
        """Adopt the server's only model from a ``GET /v1/models`` answer."""
        if response.status_code == 429 or response.status_code >= 500:
            msg = f"vLLM server at {self.base_url} answered {response.status_code} to GET /models"
            raise _TransientError(msg)
        try:
            response.raise_for_status()
            names = [str(m["id"]) for m in response.json()["data"]]
        except (httpx.HTTPStatusError, ValueError, KeyError, TypeError) as exc:
            msg = f"cannot list the models of {self.base_url} ({exc}); pass model=... explicitly"
            raise ConfigError(msg) from exc
        if len(names) != 1:
            msg = f"{self.base_url} serves {names}; pass model=... to choose one"
            raise ConfigError(msg)
        self.model = names[0]
        logger.info("SCOPE server %s serves %s", self.base_url, self.model)

    @property
    def _url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=self._timeout,
                    headers=self._headers(),
                    transport=self._transport,
                    limits=httpx.Limits(max_connections=self.max_concurrency),
                )
            return self._client

    def _unavailable(self, exc: BaseException) -> EstimatorUnavailableError:
        msg = (
            f"vLLM server at {self.base_url} unavailable after {self.retries + 1} attempts: {type(exc).__name__}: {exc}"
        )
        logger.warning("%s", msg)
        return EstimatorUnavailableError(msg)

    def _stop(self) -> stop_base:
        return stop_after_attempt(self.retries + 1)

    def _retry_policy(self) -> dict[str, Any]:
        """Retry connection errors, timeouts, 429 and 5xx with exponential backoff and jitter."""
        return {
            "wait": wait_exponential_jitter(initial=self.backoff, max=self.backoff * 8, jitter=self.backoff),
            "retry": retry_if_exception(_is_transient),
            "before_sleep": _log_retry,
            "reraise": True,
        }

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]:
        if not prompts:
            return []
        client = self._sync_client()
        failed = threading.Event()

        def one(prompt: str) -> Completion:
            retrying = Retrying(stop=self._stop() | stop_when_event_set(failed), **self._retry_policy())

            def attempt() -> Completion:
                if failed.is_set():
                    raise _BatchAborted
                if self.model is None:
                    self._set_model(client.get(f"{self.base_url}/models"))
                body = _request_body(self._served(), prompt, sampling)
                return _read_response(client.post(self._url, json=body), self.base_url)

            try:
                return retrying(attempt)
            except (httpx.TransportError, _TransientError) as exc:
                failed.set()
                raise self._unavailable(exc) from exc
            except BaseException:
                failed.set()
                raise

        workers = min(self.max_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scope-vllm") as pool:
            futures = [pool.submit(one, p) for p in prompts]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                failed.set()
                for fut in pending:
                    fut.cancel()
        # Leaving the pool waited for the requests in flight, so every failure is known here.
        errors: list[BaseException] = []
        for fut in futures:
            err = None if fut.cancelled() else fut.exception()
            if err is not None:
                errors.append(err)
        if errors:
            real = [e for e in errors if not isinstance(e, _BatchAborted)]
            raise (real or errors)[0]
        return [f.result() for f in futures]

    async def agenerate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]:
        if not prompts:
            return []
        semaphore = asyncio.Semaphore(self.max_concurrency)
        # One client per call: an httpx.AsyncClient is bound to the event loop it was first used on.
        async with httpx.AsyncClient(
            timeout=self._timeout,
            headers=self._headers(),
            transport=self._async_transport,
            limits=httpx.Limits(max_connections=self.max_concurrency),
        ) as client:

            async def one(prompt: str) -> Completion:
                retrying = AsyncRetrying(stop=self._stop(), **self._retry_policy())

                async def attempt() -> Completion:
                    async with semaphore:
                        if self.model is None:
                            self._set_model(await client.get(f"{self.base_url}/models"))
                        body = _request_body(self._served(), prompt, sampling)
                        response = await client.post(self._url, json=body)
                    return _read_response(response, self.base_url)

                try:
                    return await retrying(attempt)
                except (httpx.TransportError, _TransientError) as exc:
                    raise self._unavailable(exc) from exc

            tasks = [asyncio.ensure_future(one(p)) for p in prompts]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


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
            )
            for out in outputs
        ]

    async def agenerate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]:
        return await asyncio.to_thread(self.generate, prompts, sampling)


@dataclass(slots=True)
class EstimatorCounters:
    """Running totals of what the estimator asked the backend for (for benchmarks and evaluation)."""

    prompts: int = 0
    cache_hits: int = 0
    generated_tokens: int = 0
    samples: int = 0
    unparsed_samples: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, value in deltas.items():
                setattr(self, name, getattr(self, name) + value)


def _typical_tokens(stats: ModelStats | None) -> float | None:
    if stats is None or stats.mean_log_tokens is None or stats.n_tokens == 0:
        return None
    return math.expm1(stats.mean_log_tokens)


def _beta_std(yes: int, no: int) -> float:
    """Std of the Jeffreys Beta(yes + 1/2, no + 1/2) posterior over the share of 'yes'."""
    a, b = yes + 0.5, no + 0.5
    return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))


@dataclass(frozen=True, slots=True)
class _Aggregate:
    p_correct: float | None
    output_tokens: float | None
    p_std: float | None
    parsed: int
    unparsed: int
    explanation: str | None


def aggregate_samples(samples: Sequence[ParsedSample]) -> _Aggregate:
    """Combine parsed samples: share of 'yes' among verdicts, median of stated lengths.

    ``p_std`` is the standard deviation of the Jeffreys posterior over that share, so 8 agreeing samples
    still carry some doubt. The explanation is the analysis of the first sample agreeing with the majority.
    """
    verdicts = [s.correct for s in samples if s.correct is not None]
    lengths = [s.length for s in samples if s.length is not None]
    yes = sum(1 for v in verdicts if v)
    p = yes / len(verdicts) if verdicts else None
    explanation = None
    if p is not None:
        majority = p >= 0.5
        explanation = next((s.analysis for s in samples if s.correct is majority and s.analysis), None)
    return _Aggregate(
        p_correct=p,
        output_tokens=float(statistics.median(lengths)) if lengths else None,
        p_std=_beta_std(yes, len(verdicts) - yes) if verdicts else None,
        parsed=len(verdicts),
        unparsed=len(samples) - len(verdicts),
        explanation=explanation,
    )


@dataclass(slots=True)
class _Job:
    """One distinct prompt of a batch and the (query index, model) slots waiting on it."""

    prompt: str
    key: str
    model: str
    ctx: QueryContext
    shown: list[tuple[AnchorRecord, AnchorOutcome]]
    slots: list[tuple[int, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Plan:
    rows: list[dict[str, Prediction]]
    jobs: dict[str, _Job]


class ScopeLLMEstimator(Estimator):
    """SCOPE (Cooolder/SCOPE) predicting each candidate's correctness and output length.

    Pass ``base_url`` for a vLLM server (the production path), or ``backend=InProcessBackend(...)`` for
    in-process vLLM.

    Args:
        base_url: a vLLM OpenAI-compatible server, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name; ``None`` uses the server's only model.
        api_key: bearer token for the server; never shown in repr or logs.
        backend: a :class:`ScopeBackend` to use instead of building an :class:`HTTPBackend`.
        k: anchors shown per prompt: the most similar retrieved anchors on which the target model has an
            outcome (SCOPE was trained with 5).
        samples, temperature, top_p, top_k, max_tokens, seed, structured_outputs: see
            :class:`SamplingConfig`.
        template: :data:`SCOPE_COT` (default) or :data:`SCOPE_NOCOT` for Cooolder/SCOPE_NoCoT.
        max_question_chars: cut the target and anchor questions to this many characters in the prompt,
            to keep long questions within the server's ``--max-model-len``; ``None`` (default) sends them
            whole, as in training. A prompt over the limit is rejected (400) and the engine falls back.
        cache_size: predictions kept, keyed by (template, backend, sampling, anchor_version, prompt);
            the prompt holds the query, the model and its anchor records. 0 disables the cache.
        on_no_anchor_data: when no retrieved anchor has an outcome for a candidate, ``"raise"``
            :class:`NoAnchorDataError`, or ``"degrade"``: use the model's overall record from the store,
            marked degraded (still raises when the model has no record at all).
        max_concurrency, timeout, connect_timeout, retries, backoff: see :class:`HTTPBackend`.
    """

    name = "scope"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str | None = DEFAULT_SCOPE_MODEL,
        api_key: str | None = None,
        backend: ScopeBackend | None = None,
        k: int = 5,
        samples: int = 8,
        temperature: float = 0.6,
        top_p: float = 0.95,
        top_k: int = 20,
        max_tokens: int = 1536,
        seed: int | None = None,
        structured_outputs: Mapping[str, Any] | None = None,
        template: PromptTemplate = SCOPE_COT,
        max_question_chars: int | None = None,
        cache_size: int = 4096,
        on_no_anchor_data: OnNoAnchorData = "raise",
        max_concurrency: int = 16,
        timeout: float = 300.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if backend is None and base_url is None:
            msg = "ScopeLLMEstimator needs base_url=... (a vLLM server) or backend=InProcessBackend(...)"
            raise ConfigError(msg)
        if backend is not None and base_url is not None:
            msg = "pass either base_url or backend, not both"
            raise ConfigError(msg)
        if k < 1:
            msg = f"k must be >= 1, got {k}"
            raise ConfigError(msg)
        if max_question_chars is not None and max_question_chars < 1:
            msg = f"max_question_chars must be >= 1 or None, got {max_question_chars}"
            raise ConfigError(msg)
        if cache_size < 0:
            msg = f"cache_size must be >= 0, got {cache_size}"
            raise ConfigError(msg)
        if on_no_anchor_data not in ("raise", "degrade"):
            msg = f"on_no_anchor_data must be 'raise' or 'degrade', got {on_no_anchor_data!r}"
            raise ConfigError(msg)
        self.sampling = SamplingConfig(
            n=samples,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            seed=seed,
            structured_outputs=structured_outputs,
        )
        if backend is None:
            assert base_url is not None
            backend = HTTPBackend(
                base_url=base_url,
                model=model,
                api_key=api_key,
                timeout=timeout,
                connect_timeout=connect_timeout,
                max_concurrency=max_concurrency,
                retries=retries,
                backoff=backoff,
            )
        self.backend = backend
        self.k = k
        self.template = template
        self.on_no_anchor_data: OnNoAnchorData = on_no_anchor_data
        self.cache_size = cache_size
        self.max_question_chars = max_question_chars
        self.counters = EstimatorCounters()
        self._cache: OrderedDict[str, Prediction] = OrderedDict()
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ScopeLLMEstimator(backend={self.backend!r}, k={self.k}, samples={self.sampling.n}, "
            f"temperature={self.sampling.temperature}, template={self.template.version!r}, "
            f"cache_size={self.cache_size})"
        )

    # -- the two entry points differ only by `await` ------------------------------------------

    @property
    def anchors_per_model(self) -> int | None:
        return self.k

    def _predict(self, queries: Sequence[QueryContext], models: Sequence[str]) -> list[dict[str, Prediction]]:
        plan = self._plan(queries, models)
        jobs = list(plan.jobs.values())
        completions = self.backend.generate([j.prompt for j in jobs], self.sampling)
        return self._finish(plan, jobs, completions)

    async def _apredict(self, queries: Sequence[QueryContext], models: Sequence[str]) -> list[dict[str, Prediction]]:
        plan = self._plan(queries, models)
        jobs = list(plan.jobs.values())
        completions = await self.backend.agenerate([j.prompt for j in jobs], self.sampling)
        return self._finish(plan, jobs, completions)

    def close(self) -> None:
        self.backend.close()

    def clear_cache(self) -> None:
        """Forget every cached prediction."""
        with self._cache_lock:
            self._cache.clear()

    # -- shared pure-ish helpers --------------------------------------------------------------

    def select_anchors(self, ctx: QueryContext, model: str) -> list[tuple[AnchorRecord, AnchorOutcome]]:
        """The ``k`` most similar retrieved anchors on which ``model`` has an outcome."""
        shown: list[tuple[AnchorRecord, AnchorOutcome]] = []
        for anchor in ctx.anchors:
            outcome = anchor.outcomes.get(model)
            if outcome is not None:
                shown.append((anchor, outcome))
                if len(shown) == self.k:
                    break
        return shown

    def build_prompt(self, ctx: QueryContext, model: str) -> str:
        """The exact prompt SCOPE gets for ``model`` on ``ctx`` (raises when no anchor has its record)."""
        shown = self.select_anchors(ctx, model)
        if not shown:
            raise NoAnchorDataError(self._no_anchor_message(model))
        return self._render(ctx, model, shown)

    def _render(self, ctx: QueryContext, model: str, shown: Sequence[tuple[AnchorRecord, AnchorOutcome]]) -> str:
        # Unknown lengths are shown as the model's typical length, else 0 (the authors' convention).
        fill = _typical_tokens(ctx.stats.get(model)) or 0.0
        examples = [
            AnchorExample(
                question=self._cut(anchor.question),
                output_tokens=round(out.output_tokens if out.output_tokens is not None else fill),
                correct=out.correct >= 0.5,
            )
            for anchor, out in shown
        ]
        return build_prompt(self.template, target_question=self._cut(ctx.query), target_model=model, examples=examples)

    def _cut(self, text: str) -> str:
        return text if self.max_question_chars is None else text[: self.max_question_chars]

    def _no_anchor_message(self, model: str) -> str:
        return (
            f"no retrieved anchor has an outcome for model {model!r}, so SCOPE has nothing to reason "
            "from; record outcomes for it, retrieve more anchors, or pass on_no_anchor_data='degrade'"
        )

    def _cache_key(self, ctx: QueryContext, prompt: str) -> str:
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        return "|".join((self.template.version, self.backend.identity, self.sampling.key(), ctx.anchor_version, digest))

    def _cache_get(self, key: str) -> Prediction | None:
        if self.cache_size == 0:
            return None
        with self._cache_lock:
            pred = self._cache.get(key)
            if pred is not None:
                self._cache.move_to_end(key)
            return pred

    def _cache_put(self, key: str, pred: Prediction) -> None:
        if self.cache_size == 0 or pred.degraded:
            return
        with self._cache_lock:
            self._cache[key] = pred
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _plan(self, queries: Sequence[QueryContext], models: Sequence[str]) -> _Plan:
        rows: list[dict[str, Prediction]] = [{} for _ in queries]
        jobs: dict[str, _Job] = {}
        hits = 0
        for qi, ctx in enumerate(queries):
            for model in models:
                shown = self.select_anchors(ctx, model)
                if not shown:
                    rows[qi][model] = self._no_anchor_prediction(ctx, model)
                    continue
                prompt = self._render(ctx, model, shown)
                key = self._cache_key(ctx, prompt)
                cached = self._cache_get(key)
                if cached is not None:
                    hits += 1
                    rows[qi][model] = replace(cached, estimator_tokens=0)
                    continue
                job = jobs.get(key)
                if job is None:
                    job = jobs[key] = _Job(prompt=prompt, key=key, model=model, ctx=ctx, shown=shown)
                job.slots.append((qi, model))
        self.counters.add(cache_hits=hits, prompts=len(jobs))
        return _Plan(rows=rows, jobs=jobs)

    def _finish(
        self, plan: _Plan, jobs: Sequence[_Job], completions: Sequence[Completion]
    ) -> list[dict[str, Prediction]]:
        if len(completions) != len(jobs):
            msg = f"SCOPE backend returned {len(completions)} completions for {len(jobs)} prompts"
            raise EstimatorUnavailableError(msg)
        for job, completion in zip(jobs, completions, strict=True):
            pred = self._prediction(job, completion)
            self._cache_put(job.key, pred)
            for i, (qi, model) in enumerate(job.slots):
                # A duplicate slot in the same batch cost nothing extra.
                plan.rows[qi][model] = pred if i == 0 else replace(pred, estimator_tokens=0)
        return plan.rows

    def _no_anchor_prediction(self, ctx: QueryContext, model: str) -> Prediction:
        stats = ctx.stats.get(model)
        if self.on_no_anchor_data == "raise" or stats is None or stats.n == 0:
            raise NoAnchorDataError(self._no_anchor_message(model))
        reason = f"no retrieved anchor has an outcome for {model!r}; used its overall record (n={stats.n})"
        logger.warning("%s", reason)
        return Prediction(
            p_correct=stats.p_correct,
            output_tokens=_typical_tokens(stats) or DEFAULT_OUTPUT_TOKENS,
            degraded=True,
            reason=reason,
        )

    def _prediction(self, job: _Job, completion: Completion) -> Prediction:
        quoted = [job.ctx.query, *(a.question for a, _ in job.shown)]
        parsed = [parse_output(text, quoted=quoted) for text in completion.texts]
        agg = aggregate_samples(parsed)
        shown_tokens = [o.output_tokens for _, o in job.shown if o.output_tokens is not None]
        evidence = tuple(
            AnchorEvidence(
                anchor_id=a.anchor_id,
                similarity=max(-1.0, min(1.0, a.similarity)),
                correct=o.correct,
                output_tokens=o.output_tokens,
            )
            for a, o in job.shown
        )
        self.counters.add(
            generated_tokens=completion.generated_tokens,
            samples=len(parsed),
            unparsed_samples=agg.unparsed,
        )
        fallback_tokens = (
            float(statistics.median(shown_tokens))
            if shown_tokens
            else _typical_tokens(job.ctx.stats.get(job.model)) or DEFAULT_OUTPUT_TOKENS
        )
        reasons: list[str] = []
        degraded = False
        p = agg.p_correct
        if p is None:
            degraded = True
            p = sum(o.correct for _, o in job.shown) / len(job.shown)
            reasons.append(
                f"SCOPE gave no parsable verdict in {len(parsed)} samples; used the mean of the "
                f"{len(job.shown)} anchor records in its prompt"
            )
            logger.warning("SCOPE unparsable for model %s: %s", job.model, reasons[-1])
        tokens = agg.output_tokens
        if not shown_tokens:
            tokens = fallback_tokens
            reasons.append(
                "no token counts among the anchors shown; output_tokens from the model's overall "
                "record or a default, not from SCOPE"
            )
        elif tokens is None:
            tokens = fallback_tokens
            reasons.append("SCOPE stated no length; output_tokens is the median of the anchors shown")
        return Prediction(
            p_correct=p,
            output_tokens=tokens,
            evidence=evidence,
            p_std=agg.p_std,
            explanation=agg.explanation,
            samples=len(parsed),
            unparsed_samples=agg.unparsed,
            degraded=degraded,
            reason="; ".join(reasons),
            estimator_tokens=completion.generated_tokens,
        )
