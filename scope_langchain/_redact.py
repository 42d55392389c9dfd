"""Error text made safe to show: a provider's exception may quote a key, a signed URL or a header, and the
router copies the errors of failed models into ``response_metadata`` and its log lines."""

from __future__ import annotations

import re

#: Longest error message kept (the rest is cut, with an ellipsis).
MAX_CHARS = 300

_MASK = "***"
_SECRET_NAMES = (
    r"api[_-]?key|apikey|key|access[_-]?token|refresh[_-]?token|token|secret|client[_-]?secret|password|passwd|pwd"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host -> scheme://***@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@]+@"), rf"\1{_MASK}@"),
    # Authorization: Bearer xyz / "authorization": "Basic xyz"
    (
        re.compile(r"""(?i)(authorization["']?\s*[:=]\s*["']?)((?:bearer|basic|token)\s+)?[^\s"',;]+"""),
        rf"\1\2{_MASK}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {_MASK}"),
    # api_key=..., "token": "...", password: ...
    (re.compile(rf"""(?i)\b({_SECRET_NAMES})(["']?\s*[:=]\s*["']?)[^\s"'&,;)]+"""), rf"\1\2{_MASK}"),
    # well-known key shapes: OpenAI/Anthropic sk-..., Hugging Face hf_..., GitHub gh?_..., Google AIza..., AWS AKIA...
    (re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_-]{8,}"), rf"\1-{_MASK}"),
    (re.compile(r"\b(hf|gh[pousr]|xox[abpr])_[A-Za-z0-9_-]{8,}"), rf"\1_{_MASK}"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), _MASK),
    (re.compile(r"\bAKIA[0-9A-Z]{12,}"), _MASK),
)


def redact(text: str) -> str:
    """``text`` with credentials masked: URL userinfo, ``Authorization`` values, ``api_key=``-like pairs and
    key-shaped tokens (``sk-...``, ``hf_...``, ...)."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def describe(exc: BaseException) -> str:
    """``"TypeName: message"``, the message redacted, on one line and cut to :data:`MAX_CHARS` (just the type
    when the message is empty)."""
    message = " ".join(redact(str(exc)).split())
    if len(message) > MAX_CHARS:
        message = message[: MAX_CHARS - 1] + "…"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
