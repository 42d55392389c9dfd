"""A profiling ``call`` for any OpenAI-compatible chat endpoint (vLLM, OpenAI, OpenRouter, ...), with the
``openai`` client, imported on first use.

The client's own retries are turned off: :func:`~scope_shared.profile.profile` retries transient errors
(429, 5xx, timeouts, connection errors, a body that is not a chat completion) with tenacity. Errors are raised
as what they mean for a run: ``ConnectionError`` / ``TimeoutError`` (transient) naming the endpoint,
:class:`MalformedResponseError` (transient) for a body that is not a completion, the client's status errors as
they are (their ``status_code`` says: 401 stops the run, 400 fails the one anchor).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from scope_shared.errors import ConfigError, ModelCallError
from scope_shared.profile.calls import Usage, as_usage

__all__ = ["MalformedResponseError", "OpenAIChatCall"]

logger = logging.getLogger(__name__)


class MalformedResponseError(ConnectionError):
    """The endpoint answered with something that is not a chat completion (retried as transient)."""


class OpenAIChatCall:
    """``call(prompt) -> (text, usage)`` over ``/chat/completions`` of an OpenAI-compatible endpoint.

    The prompt is the single user message (after ``system``, if given). Nothing connects until the first call
    (or :meth:`check`).

    Args:
        base_url: the endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name sent in each request.
        api_key: the key sent as a bearer token (never shown); None sends a placeholder (local servers).
        system: a system message sent before each prompt.
        max_tokens: cap on each answer's tokens (None: the server's default).
        temperature: sampling temperature (None: the server's default).
        timeout: seconds to wait for one answer.
        client: an ``openai.OpenAI`` client to use instead (tests; its retries are yours to set).
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        timeout: float = 300.0,
        client: Any = None,
    ) -> None:
        if not model:
            msg = "model must name the served model"
            raise ConfigError(msg)
        if max_tokens is not None and max_tokens < 1:
            msg = f"max_tokens must be >= 1 or None, got {max_tokens}"
            raise ConfigError(msg)
        if not timeout > 0:
            msg = f"timeout must be > 0 seconds, got {timeout}"
            raise ConfigError(msg)
        self.base_url = base_url
        self.model = model
        self.system = system
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self._api_key = api_key
        self._client = client
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIChatCall(base_url={self.base_url!r}, model={self.model!r})"

    def _openai(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import openai
                except ImportError:
                    msg = "profiling an OpenAI-compatible endpoint needs the openai package: pip install openai"
                    raise ConfigError(msg) from None
                self._client = openai.OpenAI(
                    base_url=self.base_url, api_key=self._api_key or "EMPTY", timeout=self.timeout, max_retries=0
                )
            return self._client

    def _translated(self, exc: Exception) -> Exception:
        """A transport error as the builtin that says what it is, naming the endpoint; others unchanged."""
        name = type(exc).__name__
        if name == "APITimeoutError":
            return TimeoutError(f"{self.base_url} did not answer within {self.timeout:g} s")
        if name == "APIConnectionError":
            cause = exc.__cause__ or exc
            return ConnectionError(f"cannot reach {self.base_url}: {type(cause).__name__}: {cause}")
        if name in ("APIResponseValidationError",) or isinstance(exc, ValueError):
            return MalformedResponseError(f"{self.base_url} sent a malformed response: {exc}")
        return exc

    def __call__(self, prompt: str) -> tuple[str, Usage]:
        client = self._openai()
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": prompt})
        options: dict[str, Any] = {}
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            options["temperature"] = self.temperature
        try:
            response = client.chat.completions.create(model=self.model, messages=messages, **options)
        except Exception as exc:
            raise self._translated(exc) from exc
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            body = str(response)[:120]
            msg = f"{self.base_url} sent a body that is not a chat completion (no choices): {body!r}"
            raise MalformedResponseError(msg)
        text = choices[0].message.content
        return (text if isinstance(text, str) else ""), as_usage(getattr(response, "usage", None))

    def check(self) -> list[str]:
        """Ask the endpoint for its models (``GET /models``): the served ids, or [] if it does not list them.

        Raises:
            ModelCallError: the endpoint cannot be reached, or refused the key.
        """
        client = self._openai()
        try:
            page = client.models.list()
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if status in (401, 403):
                msg = f"{self.base_url} refused the API key (HTTP {status}); check the key's environment variable"
                raise ModelCallError(msg) from None
            translated = self._translated(exc)
            if isinstance(translated, ConnectionError | TimeoutError) and not isinstance(
                translated, MalformedResponseError
            ):
                raise ModelCallError(str(translated)) from None
            logger.info("%s does not list its models (%s); not checked", self.base_url, type(exc).__name__)
            return []
        ids = [str(getattr(m, "id", "")) for m in getattr(page, "data", []) or []]
        if ids and self.model not in ids:
            logger.warning("%s does not list model %r (it lists %s)", self.base_url, self.model, ids[:10])
        return ids
