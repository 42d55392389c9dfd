"""ScopeLLMEstimator against fake vLLM servers (httpx.MockTransport) and a fake vllm module: no sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from scope_shared.errors import ConfigError, EstimatorUnavailableError, NoAnchorDataError
from scope_shared.estimators.base import AnchorOutcome, AnchorRecord, ModelStats, QueryContext
from scope_shared.estimators.scope import (
    HTTPBackend,
    InProcessBackend,
    SamplingConfig,
    ScopeLLMEstimator,
)
from scope_shared.estimators.scope.prompt import SCOPE_NOCOT
from scope_shared.types import ModelCard

URL = "http://scope.test:8000/v1"
SECRET = "sk-very-secret-key-123"


def make_ctx(query: str = "What is 12 times 7?", version: str = "v1", tokens: bool = True) -> QueryContext:
    anchors = []
    for i in range(7):
        outcomes = {"m1": AnchorOutcome(correct=float(i % 2 == 0), output_tokens=100.0 + i if tokens else None)}
        if i >= 3:  # m2 has records only on the less similar anchors
            outcomes["m2"] = AnchorOutcome(correct=1.0, output_tokens=40.0 if tokens else None)
        anchors.append(
            AnchorRecord(
                anchor_id=f"a{i}",
                question=f"anchor question {i}",
                similarity=0.9 - 0.1 * i,
                outcomes=outcomes,
            )
        )
    stats = {
        "m1": ModelStats(n=7, p_correct=4 / 7, mean_log_tokens=5.0, n_tokens=7),
        "m2": ModelStats(n=4, p_correct=1.0),
        "m3": ModelStats(n=3, p_correct=0.2),
    }
    return QueryContext(query=query, input_tokens=12.0, anchors=tuple(anchors), stats=stats, anchor_version=version)


def completion(texts: list[str], tokens: int = 0) -> dict[str, Any]:
    return {
        "choices": [{"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": 100, "completion_tokens": tokens or 10 * len(texts)},
    }


def answer(length: int, ok: bool) -> str:
    verdict, note = ("yes", "fine") if ok else ("no", "hard")
    return f"Analysis: {note}\nPredicted Performance: {{len: {length}, correct: {verdict}}}"


class FakeServer:
    """Records every request; answers with ``reply(body) -> httpx.Response``."""

    def __init__(self, reply: Callable[[dict[str, Any]], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict[str, Any]] = []
        self.reply = reply or (lambda body: httpx.Response(200, json=completion([answer(300, True)] * body["n"])))
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self._lock:
            self.requests.append(request)
            self.bodies.append(body)
        return self.reply(body)

    def estimator(self, **kwargs: Any) -> ScopeLLMEstimator:
        backend_kw = {k: kwargs.pop(k) for k in ("max_concurrency", "retries", "api_key") if k in kwargs}
        backend_kw.setdefault("retries", 2)
        backend = HTTPBackend(
            base_url=URL,
            model="scope-test",
            backoff=0.0,
            transport=httpx.MockTransport(self),
            async_transport=httpx.MockTransport(self),
            **backend_kw,
        )
        return ScopeLLMEstimator(backend=backend, **kwargs)


def test_one_request_per_pair_with_n_samples_and_vllm_fields() -> None:
    server = FakeServer()
    so = {"regex": r"Predicted Performance: \{len: \d+, correct: (yes|no)\}"}
    est = server.estimator(structured_outputs=so, temperature=0.7, api_key=SECRET)
    est._predict([make_ctx()], ["m1", "m2"])
    assert len(server.bodies) == 2
    body = server.bodies[0]
    assert body["n"] == 8 and body["temperature"] == 0.7 and body["top_p"] == 0.95 and body["top_k"] == 20
    assert body["model"] == "scope-test"
    assert body["structured_outputs"] == so
    assert not any(k.startswith("guided_") for k in body)
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert str(server.requests[0].url) == f"{URL}/chat/completions"
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    prompts = {b["messages"][0]["content"] for b in server.bodies}
    assert prompts == {est.build_prompt(make_ctx(), "m1"), est.build_prompt(make_ctx(), "m2")}


def test_prompt_shows_the_target_models_own_records_most_similar_first() -> None:
    est = FakeServer().estimator(k=3)
    prompt = est.build_prompt(make_ctx(), "m2")
    assert "### Target Model\nm2\n" in prompt
    # m2 has records on a3.. only; the 3 most similar of those, in order, with m2's record.
    assert prompt.index("anchor question 3") < prompt.index("anchor question 4") < prompt.index("anchor question 5")
    assert "anchor question 6" not in prompt and "anchor question 0" not in prompt
    assert prompt.count("Performance: {len: 40, correct: yes}") == 3


def test_aggregation_share_of_yes_median_length_unparsed_counted() -> None:
    texts = [answer(100, True), answer(200, True), answer(300, False), answer(900, True)]
    texts += ["Analysis: rambling without a verdict", "garbage", answer(400, False), answer(500, True)]
    server = FakeServer(lambda body: httpx.Response(200, json=completion(texts, tokens=777)))
    pred = server.estimator()._predict([make_ctx()], ["m1"])[0]["m1"]
    assert pred.p_correct == pytest.approx(4 / 6)
    assert pred.output_tokens == 350.0  # median of 100, 200, 300, 900, 400, 500
    assert (pred.samples, pred.unparsed_samples) == (8, 2)
    assert pred.estimator_tokens == 777
    assert pred.explanation == "fine"
    assert pred.p_std is not None and 0.1 < pred.p_std < 0.2
    assert not pred.degraded and pred.reason == ""
    assert [e.anchor_id for e in pred.evidence] == ["a0", "a1", "a2", "a3", "a4"]


def test_no_parsable_sample_degrades_to_the_records_shown_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeServer(lambda body: httpx.Response(200, json=completion(["nonsense"] * body["n"])))
    with caplog.at_level(logging.WARNING):
        pred = server.estimator()._predict([make_ctx()], ["m1"])[0]["m1"]
    assert pred.degraded
    assert "no parsable verdict in 8 samples" in pred.reason
    assert pred.p_correct == pytest.approx(3 / 5)  # a0, a2, a4 correct among the 5 shown
    assert pred.unparsed_samples == 8
    assert "no parsable verdict" in caplog.text


def test_cache_hits_skip_the_server_and_anchor_version_invalidates() -> None:
    server = FakeServer()
    est = server.estimator()
    first = est._predict([make_ctx()], ["m1", "m2"])
    assert len(server.bodies) == 2 and first[0]["m1"].estimator_tokens > 0
    again = est._predict([make_ctx()], ["m1", "m2"])
    assert len(server.bodies) == 2
    assert again[0]["m1"].p_correct == first[0]["m1"].p_correct and again[0]["m1"].estimator_tokens == 0
    assert est.counters.cache_hits == 2 and est.counters.prompts == 2
    est._predict([make_ctx(version="v2")], ["m1"])
    assert len(server.bodies) == 3
    est.clear_cache()
    est._predict([make_ctx()], ["m1"])
    assert len(server.bodies) == 4


def test_cache_can_be_disabled_and_is_bounded() -> None:
    server = FakeServer()
    est = server.estimator(cache_size=0)
    est._predict([make_ctx()], ["m1"])
    est._predict([make_ctx()], ["m1"])
    assert len(server.bodies) == 2
    est = server.estimator(cache_size=1)
    est._predict([make_ctx("q1")], ["m1"])
    est._predict([make_ctx("q2")], ["m1"])
    est._predict([make_ctx("q1")], ["m1"])  # evicted by q2
    assert len(server.bodies) == 5


def test_identical_pairs_in_one_batch_are_asked_once() -> None:
    server = FakeServer()
    rows = server.estimator()._predict([make_ctx(), make_ctx(), make_ctx("other")], ["m1"])
    assert len(server.bodies) == 2
    assert rows[0]["m1"].estimator_tokens > 0 and rows[1]["m1"].estimator_tokens == 0


def _slow_sync_server(delay: float) -> tuple[FakeServer, dict[str, int]]:
    seen = {"now": 0, "max": 0}
    lock = threading.Lock()

    def reply(body: dict[str, Any]) -> httpx.Response:
        with lock:
            seen["now"] += 1
            seen["max"] = max(seen["max"], seen["now"])
        time.sleep(delay)
        with lock:
            seen["now"] -= 1
        return httpx.Response(200, json=completion([answer(10, True)] * body["n"]))

    return FakeServer(reply), seen


def test_sync_batch_is_concurrent_and_bounded() -> None:
    server, seen = _slow_sync_server(0.05)
    queries = [make_ctx(f"q{i}") for i in range(6)]
    rows = server.estimator(max_concurrency=3)._predict(queries, ["m1", "m2"])
    assert len(server.bodies) == 12 and all(len(r) == 2 for r in rows)
    assert seen["max"] == 3


async def test_async_batch_is_concurrent_and_bounded() -> None:
    seen = {"now": 0, "max": 0}
    bodies: list[dict[str, Any]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        seen["now"] += 1
        seen["max"] = max(seen["max"], seen["now"])
        await asyncio.sleep(0.02)
        seen["now"] -= 1
        return httpx.Response(200, json=completion([answer(10, True)] * body["n"]))

    backend = HTTPBackend(base_url=URL, max_concurrency=4, async_transport=httpx.MockTransport(handler))
    est = ScopeLLMEstimator(backend=backend)
    rows = await est._apredict([make_ctx(f"q{i}") for i in range(5)], ["m1", "m2"])
    assert len(bodies) == 10 and rows[4]["m2"].p_correct == 1.0
    assert seen["max"] == 4


def test_retries_5xx_then_succeeds() -> None:
    calls = {"n": 0}

    def reply(body: dict[str, Any]) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] <= 2:
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        return httpx.Response(200, json=completion([answer(50, False)] * body["n"]))

    pred = FakeServer(reply).estimator(retries=2)._predict([make_ctx()], ["m1"])[0]["m1"]
    assert calls["n"] == 3 and pred.p_correct == 0.0


def test_server_down_raises_unavailable_after_retries_without_leaking_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = {"n": 0}

    def reply(body: dict[str, Any]) -> httpx.Response:
        calls["n"] += 1
        raise httpx.ConnectError("connection refused")

    est = FakeServer(reply).estimator(retries=2, api_key=SECRET)
    with caplog.at_level(logging.DEBUG), pytest.raises(EstimatorUnavailableError, match="after 3 attempts"):
        est._predict([make_ctx()], ["m1"])
    assert calls["n"] == 3
    assert SECRET not in caplog.text
    assert SECRET not in repr(est) and "***" in repr(est)


async def test_async_timeout_raises_unavailable_and_cancels_the_batch() -> None:
    calls = {"n": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        raise httpx.ReadTimeout("timed out", request=request)

    backend = HTTPBackend(base_url=URL, retries=1, backoff=0.0, async_transport=httpx.MockTransport(handler))
    with pytest.raises(EstimatorUnavailableError, match="ReadTimeout"):
        await ScopeLLMEstimator(backend=backend)._apredict([make_ctx()], ["m1"])
    assert calls["n"] == 2


def test_client_errors_are_not_retried() -> None:
    calls = {"n": 0}

    def bad_request(body: dict[str, Any]) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(400, json={"error": {"message": "prompt is longer than max_model_len"}})

    with pytest.raises(EstimatorUnavailableError, match="max_model_len"):
        FakeServer(bad_request).estimator()._predict([make_ctx()], ["m1"])
    assert calls["n"] == 1

    def not_found(body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "The model `scope-test` does not exist."}})

    with pytest.raises(ConfigError, match="served model name"):
        FakeServer(not_found).estimator()._predict([make_ctx()], ["m1"])


def test_model_without_anchor_records_raises_or_degrades_as_configured() -> None:
    server = FakeServer()
    with pytest.raises(NoAnchorDataError, match="m3"):
        server.estimator()._predict([make_ctx()], ["m1", "m3"])
    assert server.bodies == []
    rows = server.estimator(on_no_anchor_data="degrade")._predict([make_ctx()], ["m1", "m3"])
    assert rows[0]["m3"].degraded and rows[0]["m3"].p_correct == 0.2 and "m3" in rows[0]["m3"].reason
    assert not rows[0]["m1"].degraded
    with pytest.raises(NoAnchorDataError, match="m9"):  # no record at all: nothing to degrade to
        server.estimator(on_no_anchor_data="degrade")._predict([make_ctx()], ["m9"])


def test_anchors_without_token_counts_do_not_ground_the_length() -> None:
    server = FakeServer(lambda body: httpx.Response(200, json=completion([answer(3, True)] * body["n"])))
    rows = server.estimator()._predict([make_ctx(tokens=False)], ["m1", "m2"])
    assert "Performance: {len: 147, correct: yes}" in server.bodies[0]["messages"][0]["content"]  # expm1(5)
    assert rows[0]["m1"].output_tokens == pytest.approx(147.41, abs=0.01)
    assert rows[0]["m2"].output_tokens == 256.0  # no token record at all: documented default
    assert "no token counts" in rows[0]["m2"].reason


def test_estimate_prices_the_prediction() -> None:
    server = FakeServer(lambda body: httpx.Response(200, json=completion([answer(1000, True)] * body["n"])))
    card = ModelCard(name="m1", input_per_mtok=1.0, output_per_mtok=10.0)
    est = server.estimator().estimate([make_ctx()], [card])[0]["m1"]
    assert est.estimator == "scope" and est.p_correct == 1.0
    assert est.cost == pytest.approx((12 * 1.0 + 1000 * 10.0) / 1e6)


def test_nocot_template_is_sent_when_chosen() -> None:
    server = FakeServer()
    server.estimator(template=SCOPE_NOCOT)._predict([make_ctx()], ["m1"])
    assert "Analysis:" not in server.bodies[0]["messages"][0]["content"]


def test_constructor_validates_early() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        ScopeLLMEstimator()
    with pytest.raises(ConfigError, match="http"):
        ScopeLLMEstimator(base_url="localhost:8000")
    with pytest.raises(ConfigError, match="samples"):
        ScopeLLMEstimator(base_url=URL, samples=0)
    with pytest.raises(ConfigError, match="temperature"):
        SamplingConfig(temperature=5.0)
    est = ScopeLLMEstimator(base_url="http://h:8000", api_key=SECRET)
    assert isinstance(est.backend, HTTPBackend) and est.backend.base_url == "http://h:8000/v1"
    assert SECRET not in repr(est)


class _FakeOut:
    def __init__(self, text: str) -> None:
        self.text = text
        self.token_ids = list(range(len(text.split())))


class _FakeRequestOutput:
    def __init__(self, texts: list[str]) -> None:
        self.outputs = [_FakeOut(t) for t in texts]


def _fake_vllm(calls: dict[str, Any]) -> tuple[types.ModuleType, types.ModuleType]:
    vllm = types.ModuleType("vllm")
    params_mod = types.ModuleType("vllm.sampling_params")

    class SamplingParams:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    class StructuredOutputsParams:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            calls["llm"] = kwargs

        def chat(self, conversations: list[Any], params: Any, use_tqdm: bool = True) -> list[Any]:
            calls["chat"] = (conversations, params)
            return [_FakeRequestOutput([answer(60, True), answer(80, False)]) for _ in conversations]

    vllm.LLM = LLM  # type: ignore[attr-defined]
    vllm.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    params_mod.StructuredOutputsParams = StructuredOutputsParams  # type: ignore[attr-defined]
    return vllm, params_mod


def test_in_process_backend_imports_vllm_only_when_it_generates(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, Any] = {}
    backend = InProcessBackend(model="/models/scope", llm_kwargs={"max_model_len": 4096})
    assert "vllm" not in sys.modules  # nothing imported at construction
    vllm, params_mod = _fake_vllm(calls)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", params_mod)
    est = ScopeLLMEstimator(backend=backend, samples=2, structured_outputs={"regex": "x"}, seed=7)
    rows = est._predict([make_ctx()], ["m1", "m2"])
    assert calls["llm"] == {"model": "/models/scope", "max_model_len": 4096}
    conversations, params = calls["chat"]
    assert len(conversations) == 2 and conversations[0][0]["role"] == "user"
    assert conversations[0][0]["content"] == est.build_prompt(make_ctx(), "m1")
    assert params.kwargs["n"] == 2 and params.kwargs["seed"] == 7 and params.kwargs["top_k"] == 20
    assert params.kwargs["structured_outputs"].kwargs == {"regex": "x"}
    assert rows[0]["m1"].p_correct == 0.5 and rows[0]["m1"].output_tokens == 70.0
    assert rows[0]["m1"].estimator_tokens > 0


def test_in_process_backend_without_vllm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    est = ScopeLLMEstimator(backend=InProcessBackend())
    with pytest.raises(ConfigError, match=r"scope-router\[vllm\]"):
        est._predict([make_ctx()], ["m1"])


def test_long_questions_can_be_cut_to_fit_the_context() -> None:
    est = FakeServer().estimator(max_question_chars=8)
    prompt = est.build_prompt(make_ctx(query="What is 12 times 7? " * 50), "m1")
    assert "### Target Question\nWhat is \n" in prompt
    assert "Question: anchor q\n" in prompt
    with pytest.raises(ConfigError, match="max_question_chars"):
        FakeServer().estimator(max_question_chars=0)


@pytest.mark.parametrize("served", [["my-scope"], ["a", "b"]])
def test_model_none_uses_the_servers_only_model(served: list[str]) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            assert request.url.path == "/v1/models"
            return httpx.Response(200, json={"object": "list", "data": [{"id": n} for n in served]})
        body = json.loads(request.content)
        seen.append(body["model"])
        return httpx.Response(200, json=completion([answer(10, True)] * body["n"]))

    backend = HTTPBackend(base_url=URL, model=None, transport=httpx.MockTransport(handler))
    est = ScopeLLMEstimator(backend=backend)
    if len(served) == 1:
        est._predict([make_ctx()], ["m1", "m2"])
        assert seen == ["my-scope", "my-scope"] and backend.model == "my-scope"
    else:
        with pytest.raises(ConfigError, match="pass model="):
            est._predict([make_ctx()], ["m1"])
        assert seen == []


def test_retry_waits_double_from_backoff_up_to_8x_without_deprecated_tenacity_arguments() -> None:
    backend = HTTPBackend(base_url=URL, backoff=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tenacity >= 9.2.1 deprecates wait_exponential_jitter(initial=...)
        wait = backend._retry_policy()["wait"]
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 4.0)]:
        state = types.SimpleNamespace(attempt_number=attempt)
        assert all(base <= wait(state) <= base + 0.5 for _ in range(20))
