"""SCOPE on a vLLM OpenAI-compatible server (``vllm serve Cooolder/SCOPE``), the production path.

All prompts of a batch go out concurrently, at most ``max_concurrency`` at a time; connection errors,
timeouts, 429 and 5xx are retried with tenacity, after which :class:`EstimatorUnavailableError` is raised
(the engine then falls back to anchor statistics and marks the decision degraded).

This is the only module that knows vLLM's request fields (``n``, ``top_k``, ``structured_outputs``; the
old ``guided_*`` fields are silently ignored by vLLM 0.32 and never sent).

Credentials in the server's URL (``http://user:password@host/v1``, ``?token=...``) are used for requests
only: everything this module shows (repr, ``base_url``, ``identity``, errors, logs) passes through
:func:`redact_url`, and userinfo goes out as HTTP basic auth, so that httpx's own request log (INFO)
never carries it. That log does show each request's query string: prefer ``api_key`` (a bearer token).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base

from scope_shared.errors import ConfigError, EstimatorUnavailableError
from scope_shared.estimators.scope.backends import DEFAULT_SCOPE_MODEL, Completion, SamplingConfig, ScopeBackend

__all__ = ["HTTPBackend", "redact_url"]

logger = logging.getLogger(__name__)


class _TransientError(Exception):
    """A response worth retrying (429 or 5xx)."""


class _BatchAborted(EstimatorUnavailableError):
    """Raised in a request whose batch already failed elsewhere; never the error a caller sees first."""

    def __init__(self) -> None:
        super().__init__("another request of this batch failed")


# Everything from the scheme's "//" (or the start) to the last "@" before the query: the userinfo, also
# when a password holds an unescaped "@" or "/" (over-redacting a strange path is harmless in a display).
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.\-]*:)?//)?[^?#]*@")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """``url`` fit to show: userinfo becomes ``***@``, each query value and a fragment ``***``."""
    url = _USERINFO.sub(lambda m: f"{m.group(1) or ''}***@", url, count=1)
    url, hashmark, fragment = url.partition("#")
    base, question, query = url.partition("?")
    if question:
        params = [p.partition("=")[0] + "=***" if "=" in p else ("***" if p else p) for p in query.split("&")]
        base += "?" + "&".join(params)
    if hashmark:
        base += "#***" if fragment else "#"
    return base


def _redact_urls_in(text: str) -> str:
    """``text`` (an error from another library) with every URL in it redacted."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)


def _parse_base_url(base_url: str) -> SplitResult:
    parts = urlsplit(base_url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # not a number
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        msg = f"base_url must be an http(s) URL like 'http://127.0.0.1:8000/v1', got {redact_url(base_url)!r}"
        raise ConfigError(msg)
    return parts._replace(path=parts.path.rstrip("/") or "/v1", fragment="")


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
        choices = data["choices"]
        texts = tuple(str(c["message"]["content"] or "") for c in choices)
        cut = tuple(c.get("finish_reason") == "length" for c in choices)
        usage = data.get("usage") or {}
        generated = int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"vLLM server at {url} sent an unreadable chat completion: {exc!r}"
        raise EstimatorUnavailableError(msg) from exc
    return Completion(texts=texts, generated_tokens=generated, cut=cut)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | _TransientError)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    logger.warning("SCOPE request failed (attempt %d): %s; retrying", state.attempt_number, _redact_urls_in(str(exc)))


class HTTPBackend(ScopeBackend):
    """A vLLM OpenAI-compatible server (``/v1/chat/completions``).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added when the URL has no path). Userinfo
            (``user:password@``) is sent as basic auth and a query string with every request; the attribute
            ``base_url`` is the URL as shown, with both redacted (:func:`redact_url`).
        model: the served model name (``--served-model-name``, else the path or hub id it was started
            with); ``None`` asks the server (``GET /v1/models``) on first use and needs it to serve one model.
        api_key: sent as a bearer token (``vllm serve --api-key``); never shown in repr or logs.
        timeout: seconds to wait for one completion (8 chain-of-thought samples can take a while).
        connect_timeout: seconds to wait for a connection.
        max_concurrency: requests in flight at once within one batch.
        retries: further attempts after a connection error, timeout, 429 or 5xx.
        backoff: first wait between attempts in seconds, doubling each time up to 8x, plus up to
            ``backoff`` of random jitter.
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
        parts = _parse_base_url(base_url)
        self.base_url = redact_url(parts.geturl())
        userinfo, _, host = parts.netloc.rpartition("@")
        self._parts = parts._replace(netloc=host)
        self._auth = httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or "")) if userinfo else None
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
        status = response.status_code
        if status == 429 or status >= 500:
            msg = f"vLLM server at {self.base_url} answered {status} to GET /models"
            raise _TransientError(msg)
        if status >= 400:
            msg = (
                f"cannot list the models of {self.base_url} (GET /models answered {status}: "
                f"{_error_detail(response)}); check base_url and api_key, or pass model=... explicitly"
            )
            raise ConfigError(msg)
        try:
            names = [str(m["id"]) for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"cannot list the models of {self.base_url} ({exc!r}); pass model=... explicitly"
            raise ConfigError(msg) from exc
        if len(names) != 1:
            msg = f"{self.base_url} serves {names}; pass model=... to choose one"
            raise ConfigError(msg)
        self.model = names[0]
        logger.info("SCOPE server %s serves %s", self.base_url, self.model)

    def _endpoint(self, name: str) -> str:
        """The real URL of ``base_url/name`` (with the base URL's query), for requests only."""
        return urlunsplit(self._parts._replace(path=f"{self._parts.path}/{name}"))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=self._timeout,
                    headers=self._headers(),
                    auth=self._auth,
                    transport=self._transport,
                    limits=httpx.Limits(max_connections=self.max_concurrency),
                )
            return self._client

    def _unavailable(self, exc: BaseException) -> EstimatorUnavailableError:
        msg = (
            f"vLLM server at {self.base_url} unavailable after {self.retries + 1} attempts: "
            f"{type(exc).__name__}: {_redact_urls_in(str(exc))}"
        )
        logger.warning("%s", msg)
        return EstimatorUnavailableError(msg)

    def _stop(self) -> stop_base:
        return stop_after_attempt(self.retries + 1)

    def _retry_policy(self) -> dict[str, Any]:
        """Retry connection errors, timeouts, 429 and 5xx with exponential backoff and jitter."""
        # Not wait_exponential_jitter: its `initial` is deprecated since tenacity 9.2.1, and the
        # `multiplier` that replaces it does not exist before (we support tenacity >= 8.2).
        return {
            "wait": wait_exponential(multiplier=self.backoff, max=self.backoff * 8) + wait_random(0, self.backoff),
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
                    self._set_model(client.get(self._endpoint("models")))
                body = _request_body(self._served(), prompt, sampling)
                return _read_response(client.post(self._endpoint("chat/completions"), json=body), self.base_url)

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
            auth=self._auth,
            transport=self._async_transport,
            limits=httpx.Limits(max_connections=self.max_concurrency),
        ) as client:

            async def one(prompt: str) -> Completion:
                retrying = AsyncRetrying(stop=self._stop(), **self._retry_policy())

                async def attempt() -> Completion:
                    async with semaphore:
                        if self.model is None:
                            self._set_model(await client.get(self._endpoint("models")))
                        body = _request_body(self._served(), prompt, sampling)
                        response = await client.post(self._endpoint("chat/completions"), json=body)
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
