"""Retries (tenacity, transient errors only) and fallbacks (next best candidate that fits), never after a
stream began. Accuracy-only routing of the arithmetic question ranks strong > mid > cheap."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, FakeListChatModelError
from tenacity import RetryCallState, Retrying

from scope_langchain import ScopeRouter, is_transient
from scope_langchain._redact import describe, redact
from scope_langchain._retry import Recovery
from scope_shared import Budget
from tests.unit.langchain_fakes import MATH_Q, calls, fake, fakes, make_engine, reply


class Boom(ValueError):
    """A non-transient provider error."""


class RateLimitError(Exception):
    """Named like the OpenAI SDK's error."""


class Stop(BaseException):
    """Like KeyboardInterrupt: must never be swallowed or trigger a fallback."""


def _router(models: dict[str, Any], **kwargs: Any) -> ScopeRouter:
    engine = make_engine(budget=Budget(limit=kwargs.pop("limit", 1.0)))
    kwargs.setdefault("retry_wait", 0.0)
    return ScopeRouter(engine=engine, models=models, value_per_correct=None, **kwargs)


def _scope(message: Any) -> dict[str, Any]:
    return dict(message.response_metadata["scope"])


def _held(router: ScopeRouter) -> float:
    assert router.engine.ledger is not None
    return router.engine.ledger.held


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError("slow"),
        ConnectionError("reset"),
        httpx.ConnectTimeout("connect"),
        RateLimitError("429"),
        type("APIStatusError", (Exception,), {"status_code": 503})("unavailable"),
    ],
    ids=["timeout", "connection", "httpx", "rate-limit-name", "status-503"],
)
def test_transient_errors(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [Boom("bad request"), type("APIStatusError", (Exception,), {"status_code": 400})("bad"), KeyError("x")],
    ids=["value-error", "status-400", "key-error"],
)
def test_not_transient(exc: Exception) -> None:
    assert not is_transient(exc)


def test_transient_error_is_retried_on_the_same_model() -> None:
    strong = fake("strong", TimeoutError("slow"), reply("strong"))
    mid = fake("mid")
    router = _router({"strong": strong, "mid": mid, "cheap": fake("cheap")})
    out = router.invoke(MATH_Q)
    assert out.content == "strong answers" and _scope(out)["failed"] == []
    assert (calls(strong), calls(mid)) == (2, 0)
    assert _held(router) == 0.0


def test_persistent_transient_error_is_retried_then_falls_back() -> None:
    strong = fake("strong", TimeoutError("slow"))
    mid = fake("mid")
    router = _router({"strong": strong, "mid": mid, "cheap": fake("cheap")}, retries=2)
    out = router.invoke(MATH_Q)
    assert out.content == "mid answers"
    assert calls(strong) == 3 and calls(mid) == 1
    scope = _scope(out)
    assert scope["model"] == "mid" and scope["degraded"] is True and "fallback after strong" in scope["reason"]
    assert [f["model"] for f in scope["failed"]] == ["strong"] and "TimeoutError" in scope["failed"][0]["error"]
    assert "strong" not in scope["candidates"]


def test_hard_error_falls_back_without_retrying_and_settles_only_the_fallback() -> None:
    strong = fake("strong", Boom("bad request"))
    router = _router({"strong": strong, "mid": fake("mid"), "cheap": fake("cheap")}, retries=3)
    out = router.invoke(MATH_Q)
    assert out.content == "mid answers" and calls(strong) == 1
    ledger = router.engine.ledger
    assert ledger is not None and ledger.held == 0.0
    assert ledger.settled_total == pytest.approx((12 * 1.0 + 30 * 2.0) / 1e6)  # mid's real cost only


def test_fallbacks_are_bounded_and_the_first_error_is_raised() -> None:
    models = {
        "strong": fake("strong", Boom("strong down")),
        "mid": fake("mid", Boom("mid down")),
        "cheap": fake("cheap"),
    }
    router = _router(models, max_fallbacks=1)
    with pytest.raises(Boom, match="strong down") as info:
        router.invoke(MATH_Q)
    assert calls(models["cheap"]) == 0 and calls(models["mid"]) == 1
    if sys.version_info >= (3, 11):
        assert "tried: strong (Boom), mid (Boom)" in "".join(info.value.__notes__)
    assert _held(router) == 0.0


def test_no_fallback_when_disabled_forced_or_not_listed() -> None:
    models = {"strong": fake("strong", Boom("x")), "mid": fake("mid"), "cheap": fake("cheap")}
    with pytest.raises(Boom):
        _router(models, max_fallbacks=0).invoke(MATH_Q)
    with pytest.raises(Boom):
        _router(models, fallback_on=(TimeoutError,)).invoke(MATH_Q)
    with pytest.raises(Boom):
        _router(models).invoke(MATH_Q, {"configurable": {"force_model": "strong"}})
    assert calls(models["mid"]) == 0 and calls(models["cheap"]) == 0


def test_fallback_must_fit_the_budget() -> None:
    # $0.0002 covers mid (~$0.0001 expected) and cheap, never strong (~$0.0054)
    models = {"strong": fake("strong"), "mid": fake("mid", Boom("y")), "cheap": fake("cheap")}
    router = _router(models, limit=0.0002)
    out = router.invoke(MATH_Q)  # accuracy-only picks mid (strong does not fit); mid fails -> cheap
    assert _scope(out)["model"] == "cheap" and [f["model"] for f in _scope(out)["failed"]] == ["mid"]
    assert calls(models["strong"]) == 0
    # without cheap among the candidates nothing else fits: the original error is raised
    with pytest.raises(Boom, match="y"):
        router.invoke(MATH_Q, {"configurable": {"candidates": ["strong", "mid"]}})
    assert calls(models["strong"]) == 0 and _held(router) == 0.0


def test_base_exceptions_propagate_and_release_the_reservation() -> None:
    models = {"strong": fake("strong", Stop()), "mid": fake("mid"), "cheap": fake("cheap")}
    router = _router(models)
    with pytest.raises(Stop):
        router.invoke(MATH_Q)
    assert calls(models["mid"]) == 0 and _held(router) == 0.0


async def test_ainvoke_falls_back() -> None:
    strong = fake("strong", TimeoutError("slow"))
    router = _router({"strong": strong, "mid": fake("mid"), "cheap": fake("cheap")}, retries=1)
    out = await router.ainvoke(MATH_Q)
    assert out.content == "mid answers" and calls(strong) == 2
    assert _held(router) == 0.0


def test_batch_item_falls_back_alone() -> None:
    strong = fake("strong", Boom("first call fails"), reply("strong"))
    router = _router({"strong": strong, "mid": fake("mid"), "cheap": fake("cheap")})
    outs = router.batch([MATH_Q, MATH_Q], {"max_concurrency": 1})
    assert sorted(o.content for o in outs) == ["mid answers", "strong answers"]


def test_stream_falls_back_before_the_first_chunk() -> None:
    router = _router({"strong": fake("strong", Boom("x")), "mid": fake("mid"), "cheap": fake("cheap")})
    chunks = list(router.stream(MATH_Q))
    assert "".join(str(c.content) for c in chunks) == "mid answers"
    assert chunks[0].response_metadata["scope"]["failed"][0]["model"] == "strong"
    assert _held(router) == 0.0


async def test_astream_falls_back_before_the_first_chunk() -> None:
    router = _router({"strong": fake("strong", TimeoutError("x")), "mid": fake("mid"), "cheap": fake("cheap")})
    chunks = [c async for c in router.astream(MATH_Q)]
    assert "".join(str(c.content) for c in chunks) == "mid answers"


def test_stream_never_falls_back_after_streaming_began() -> None:
    broken = FakeListChatModel(responses=["strong streams"], error_on_chunk_number=3)
    mid = fake("mid")
    router = _router({"strong": broken, "mid": mid, "cheap": fake("cheap")})
    got: list[str] = []
    with pytest.raises(FakeListChatModelError):
        for chunk in router.stream(MATH_Q):
            got.append(str(chunk.content))
    assert "".join(got) == "str" and calls(mid) == 0
    assert _held(router) == 0.0  # settled (at the expected cost) although the stream broke


async def test_astream_never_falls_back_after_streaming_began() -> None:
    broken = FakeListChatModel(responses=["strong streams"], error_on_chunk_number=2)
    mid = fake("mid")
    router = _router({"strong": broken, "mid": mid, "cheap": fake("cheap")})
    with pytest.raises(FakeListChatModelError):
        async for _ in router.astream(MATH_Q):
            pass
    assert calls(mid) == 0 and _held(router) == 0.0


def test_stream_closed_early_settles() -> None:
    router = _router({"strong": fake("strong"), "mid": fake("mid"), "cheap": fake("cheap")})
    stream = router.stream(MATH_Q)
    next(stream)
    stream.close()
    assert _held(router) == 0.0


# -- what a failed model's error may show ------------------------------------------------------------------

SECRETS = ["sk-proj-Abc123Def456Ghi789", "s3cr3t-pw", "eyJhbGciOiJIUzI1NiJ9.payload.sig", "hunter2hunter2"]
LEAKY = (
    f"Error code: 401 - Incorrect API key provided: {SECRETS[0]}. Proxy https://alice:{SECRETS[1]}@proxy.example.com"
    f"/v1 said: Authorization: Bearer {SECRETS[2]}; retry with api_key={SECRETS[3]}"
)


def test_failed_model_errors_are_redacted_in_metadata_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    models = {"strong": fake("strong", Boom(LEAKY)), "mid": fake("mid"), "cheap": fake("cheap")}
    with caplog.at_level(logging.WARNING, logger="scope_langchain"):
        out = _router(models).invoke(MATH_Q)
    (failed,) = _scope(out)["failed"]
    assert failed["model"] == "strong" and failed["error"].startswith("Boom: Error code: 401 - Incorrect API key")
    assert "proxy.example.com" in failed["error"]  # the rest of the message stays readable
    shown = failed["error"] + "\n" + caplog.text
    assert "strong failed" in caplog.text
    assert not [s for s in SECRETS if s in shown]


@pytest.mark.parametrize(
    ("text", "secret", "shown"),
    [
        (
            "connect https://user:pw1234@host.example/v1 failed",
            "user:pw1234",
            "connect https://***@host.example/v1 failed",
        ),
        ('{"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}', "dXNlcjpw", '{"Authorization": "Basic ***"}'),
        ("token=ghp_abcdefghijklmnop0123 and hf_ABCDEFGHIJKLMNOPQRS", "abcdefgh", "token=*** and hf_***"),
        ('"password": "hunter2", "x-api-key": "k-123"', "hunter2", '"password": "***", "x-api-key": "***"'),
        (
            "KeyError: 'monkey'; rate limited (429), retry in 2 s",
            "",
            "KeyError: 'monkey'; rate limited (429), retry in 2 s",
        ),
    ],
)
def test_redact(text: str, secret: str, shown: str) -> None:
    assert redact(text) == shown
    assert not secret or secret not in redact(text)


def test_error_descriptions_are_one_bounded_line() -> None:
    assert describe(Boom("")) == "Boom"
    long = describe(Boom("line one\nline two " + "x" * 1000))
    assert long.startswith("Boom: line one line two x") and len(long) <= len("Boom: ") + 300


def test_backoff_grows_with_jitter_and_uses_no_deprecated_tenacity_api() -> None:
    router = _router(fakes(), retry_wait=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        options = Recovery.of(router.engine, router).retry_options()
    assert not [w for w in caught if "tenacity" in str(w.filename) or "deprecated" in str(w.message)]
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 8.0), (9, 8.0)]:
        state.attempt_number = attempt
        waits = [options["wait"](state) for _ in range(50)]
        assert all(base <= w <= base + 0.5 for w in waits) and max(waits) > min(waits)
