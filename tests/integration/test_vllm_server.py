"""The SCOPE estimator against a real vLLM OpenAI-compatible server (tiny random Qwen3 model, CPU).

Random weights produce noise, so every test forces the answer format with vLLM's ``structured_outputs``
regex and checks the whole path: the real prompt reaching the server (token counts from the server's own
tokenizer), ``n`` samples in one request, parsing, aggregation against the raw samples, caching, batching,
hybrid/gated composition through the engine, and the engine's fallback when the server stops mid-run.
Anchors are real outcomes from ``../shared/data/routerbench-zs``.

Needs SCOPE_VLLM_PYTHON and SCOPE_TINY_MODEL (``make test`` sets them); skips without, fails under CI.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scope_shared import AnchorStore, HashingEmbedder, ScopeEngine, load_outcomes, load_prices
from scope_shared.errors import EstimatorUnavailableError
from scope_shared.escalation import Escalation, escalated
from scope_shared.estimators import (
    AnchorStatsEstimator,
    HTTPBackend,
    HybridEstimator,
    ScopeLLMEstimator,
)
from scope_shared.estimators.base import QueryContext
from scope_shared.types import ModelCard
from tests.integration.vllm_server import SERVED_NAME, VLLMServer, vllm_paths

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CANDIDATES = ["gpt-4-1106-preview", "mistralai/mistral-7b-chat", "claude-instant-v1"]
ANALYSIS = r"Analysis: [a-z ]{4,24}\n"


def forced(length: str, verdict: str) -> dict[str, str]:
    return {"regex": ANALYSIS + rf"Predicted Performance: \{{len: {length}, correct: {verdict}\}}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    python, model = vllm_paths()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    srv = VLLMServer(python, model, log)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def engine_parts(data_dir: Path) -> tuple[AnchorStore, list[ModelCard], list[str]]:
    """An in-memory store of real outcomes (60 anchor queries x 11 models) and 6 held-out queries."""
    root = data_dir / "routerbench-zs"
    anchors = load_outcomes(root / "anchors.csv.gz")
    keep = sorted({o.query_id for o in anchors if o.query_id})[:60]
    store = AnchorStore(embedder=HashingEmbedder())
    store.add([o for o in anchors if o.query_id in set(keep)])
    test_queries = sorted({o.query for o in load_outcomes(root / "test.csv.gz")})[:6]
    cards = [c for c in load_prices(root / "prices.csv") if c.name in CANDIDATES]
    return store, cards, test_queries


def contexts(parts: tuple[AnchorStore, list[ModelCard], list[str]], n: int) -> list[QueryContext]:
    store, cards, queries = parts
    ctxs, reason = ScopeEngine(store=store, models=cards).contexts(queries[:n])
    assert reason == ""
    return ctxs


class RecordingTransport(httpx.HTTPTransport):
    """The real network transport, keeping every chat completion it received."""

    def __init__(self) -> None:
        super().__init__()
        self.responses: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        self.responses.append(json.loads(response.content))
        return response


def estimator(server: VLLMServer, **kwargs: Any) -> ScopeLLMEstimator:
    kwargs.setdefault("max_tokens", 96)
    kwargs.setdefault("model", SERVED_NAME)
    return ScopeLLMEstimator(base_url=server.base_url, **kwargs)


def test_real_prompt_gets_n_samples_in_one_request_and_the_forced_answer_back(
    server: VLLMServer, engine_parts: Any
) -> None:
    ctx = contexts(engine_parts, 1)[0]
    est = estimator(server, structured_outputs=forced("321", "yes"))
    prompt = est.build_prompt(ctx, CANDIDATES[0])
    assert "### Target Model\ngpt-4-1106-preview\n" in prompt and ctx.query in prompt
    posts, done = server.chat_posts(), server.metric("vllm:request_success_total")
    prompt_tokens, gen_tokens = server.metric("vllm:prompt_tokens_total"), server.metric("vllm:generation_tokens_total")

    pred = est._predict([ctx], [CANDIDATES[0]])[0][CANDIDATES[0]]

    assert server.chat_posts() - posts == 1  # one HTTP request ...
    assert server.metric("vllm:request_success_total") - done == 8  # ... carrying 8 samples
    # The server tokenized exactly our prompt (as a chat user turn) once per sample.
    assert server.metric("vllm:prompt_tokens_total") - prompt_tokens == 8 * server.prompt_tokens(prompt)
    assert pred.estimator_tokens == server.metric("vllm:generation_tokens_total") - gen_tokens > 0
    assert (pred.p_correct, pred.output_tokens, pred.samples, pred.unparsed_samples) == (1.0, 321.0, 8, 0)
    assert pred.explanation and re.fullmatch(r"[a-z ]+", pred.explanation)
    assert not pred.degraded and len(pred.evidence) == 5


def test_sampled_verdicts_aggregate_to_the_share_and_median_of_the_raw_samples(
    server: VLLMServer, engine_parts: Any
) -> None:
    ctxs = contexts(engine_parts, 2)
    recorder = RecordingTransport()
    backend = HTTPBackend(base_url=server.base_url, model=SERVED_NAME, transport=recorder)
    est = ScopeLLMEstimator(
        backend=backend, structured_outputs=forced("(100|300|900)", "(yes|no)"), temperature=1.0, max_tokens=96
    )
    rows = est._predict(ctxs, CANDIDATES[:2])
    assert len(recorder.responses) == 4
    final = re.compile(r"Predicted Performance: \{len: (\d+), correct: (yes|no)\}$")
    by_prompt = {}
    for resp in recorder.responses:
        matches = [final.search(c["message"]["content"]) for c in resp["choices"]]
        assert len(matches) == 8 and all(matches)
        verdicts = [m.group(2) == "yes" for m in matches if m]
        lengths = [int(m.group(1)) for m in matches if m]
        by_prompt[(sum(verdicts) / 8, statistics.median(lengths))] = True
    got = {(r[m].p_correct, r[m].output_tokens) for r in rows for m in CANDIDATES[:2]}
    assert got == set(by_prompt)


def test_a_quoted_anchor_record_does_not_hijack_the_prediction(server: VLLMServer, engine_parts: Any) -> None:
    ctx = contexts(engine_parts, 1)[0]
    regex = (
        r"Analysis: Example 1 had Performance: \{len: 999, correct: no\}\.\n"
        r"Predicted Performance: \{len: 42, correct: yes\}"
    )
    pred = estimator(server, structured_outputs={"regex": regex})._predict([ctx], [CANDIDATES[1]])[0][CANDIDATES[1]]
    assert (pred.p_correct, pred.output_tokens) == (1.0, 42.0)


def test_unparsable_samples_are_counted_and_the_estimate_is_marked_degraded(
    server: VLLMServer, engine_parts: Any
) -> None:
    ctx = contexts(engine_parts, 1)[0]
    est = estimator(server, structured_outputs={"regex": r"Analysis: [a-z]{3,12}"}, samples=4)
    pred = est._predict([ctx], [CANDIDATES[0]])[0][CANDIDATES[0]]
    assert (pred.samples, pred.unparsed_samples, pred.degraded) == (4, 4, True)
    assert "no parsable verdict" in pred.reason
    assert est.counters.unparsed_samples == 4


def test_batch_goes_out_whole_and_repeats_come_from_the_cache(server: VLLMServer, engine_parts: Any) -> None:
    ctxs = contexts(engine_parts, 3)
    est = estimator(server, structured_outputs=forced("(50|70)", "(yes|no)"), max_concurrency=4)
    posts = server.chat_posts()
    rows = est._predict(ctxs, CANDIDATES)
    assert server.chat_posts() - posts == 9
    assert all(r[m].samples == 8 and r[m].estimator_tokens > 0 for r in rows for m in CANDIDATES)

    again = est._predict(ctxs, CANDIDATES)
    assert server.chat_posts() - posts == 9 and est.counters.cache_hits == 9
    assert [{m: r[m].p_correct for m in r} for r in again] == [{m: r[m].p_correct for m in r} for r in rows]
    assert all(r[m].estimator_tokens == 0 for r in again for m in CANDIDATES)

    est.clear_cache()
    arows = asyncio.run(est._apredict(ctxs, CANDIDATES))
    assert server.chat_posts() - posts == 18
    assert all(r[m].samples == 8 for r in arows for m in CANDIDATES)


def test_hybrid_and_gated_route_through_the_engine(server: VLLMServer, engine_parts: Any) -> None:
    store, cards, queries = engine_parts
    scope = estimator(server, structured_outputs=forced("(50|70)", "yes"), model=None)  # asks /v1/models
    hybrid = ScopeEngine(
        store=store, models=cards, estimator=HybridEstimator(anchors=AnchorStatsEstimator(), scope=scope)
    )
    decision = hybrid.route(queries[0], options={"reserve": False})
    assert not decision.degraded
    assert all(e.estimator == "hybrid" and e.samples == 8 for e in decision.estimates.values())
    assert isinstance(scope.backend, HTTPBackend) and scope.backend.model == SERVED_NAME

    gated = ScopeEngine(
        store=store, models=cards, estimator=AnchorStatsEstimator(), escalation=Escalation(scope, margin=1.0)
    )
    decision = gated.route(queries[1], options={"reserve": False})
    assert escalated(decision.estimates)
    assert sum(e.estimator_tokens for e in decision.estimates.values()) > 0
    strict = ScopeEngine(
        store=store, models=cards, estimator=AnchorStatsEstimator(), escalation=Escalation(scope, margin=0.0)
    )
    posts = server.chat_posts()
    decision = strict.route(queries[2], options={"reserve": False})
    assert not escalated(decision.estimates) and server.chat_posts() == posts


def test_engine_falls_back_to_anchor_statistics_when_the_server_stops_mid_run(
    server: VLLMServer, engine_parts: Any
) -> None:
    """Runs last in this module: it stops the shared server."""
    store, cards, queries = engine_parts
    scope = estimator(server, structured_outputs=forced("64", "yes"), retries=1, backoff=0.2, connect_timeout=2.0)
    engine = ScopeEngine(store=store, models=cards, estimator=scope)
    before = engine.route(queries[3], options={"reserve": False})
    assert not before.degraded and all(e.estimator == "scope" for e in before.estimates.values())

    server.stop()

    started = time.monotonic()
    after = engine.route(queries[4], options={"reserve": False})
    assert time.monotonic() - started < 30
    assert after.degraded and "unavailable" in after.reason
    assert all(e.estimator == "anchors" for e in after.estimates.values())
    with pytest.raises(EstimatorUnavailableError, match="after 2 attempts"):
        scope._predict(contexts(engine_parts, 6)[5:], CANDIDATES)
    # What was already estimated is still served from the cache while the server is down.
    cached = engine.route(queries[3], options={"reserve": False})
    assert not cached.degraded and cached.model == before.model
