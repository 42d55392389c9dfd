"""OpenAIChatCall, the CLI's call function: the real openai client over a mock HTTP transport (no sockets).

Which of the client's errors profile() retries, which stop the run, which fail one anchor; what is sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from scope_shared.errors import ModelCallError
from scope_shared.profile import OpenAIChatCall, Usage, classify, profile
from scope_shared.profile.openai_chat import MalformedResponseError
from tests.unit.test_profile import CARD, FakeModel, question

Handler = Callable[[httpx2.Request], httpx2.Response]


def completion(text: str | None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "served",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def make(handler: Handler, **kwargs: Any) -> OpenAIChatCall:
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://llm.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    return OpenAIChatCall(base_url="http://llm.test/v1", model="served", client=client, **kwargs)


def test_sends_the_prompt_as_the_single_user_message_and_reads_usage() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(
            200, json=completion("(B)", {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13})
        )

    text, usage = make(handler)("Which? (A) x (B) y")
    assert (text, usage) == ("(B)", Usage(11, 2))
    assert seen == [{"model": "served", "messages": [{"role": "user", "content": "Which? (A) x (B) y"}]}]


def test_system_message_max_tokens_and_temperature() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, json=completion(None))

    text, usage = make(handler, system="Be terse.", max_tokens=8, temperature=0.0)("Q")
    assert (text, usage) == ("", Usage(None, None))  # no content: an empty answer
    assert seen[0]["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Q"}]
    assert (seen[0]["max_tokens"], seen[0]["temperature"]) == (8, 0.0)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, "transient"), (500, "transient"), (503, "transient"), (400, "anchor"), (401, "fatal"), (404, "fatal")],
)
def test_status_errors_classified(status: int, kind: str) -> None:
    call = make(lambda r: httpx2.Response(status, json={"error": {"message": "nope"}}))
    with pytest.raises(openai.APIStatusError) as info:
        call("Q")
    assert classify(info.value) == kind


def test_transport_errors_become_builtins_naming_the_endpoint() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("Connection refused")

    def slow(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out")

    with pytest.raises(ConnectionError, match=r"cannot reach http://llm.test/v1: .*Connection refused") as info:
        make(refuse)("Q")
    assert classify(info.value) == "transient"
    with pytest.raises(TimeoutError, match="did not answer within 300 s"):
        make(slow)("Q")


@pytest.mark.parametrize(
    "response",
    [
        httpx2.Response(200, content=b'{"choices": [', headers={"content-type": "application/json"}),
        httpx2.Response(200, json={"id": "x", "object": "chat.completion"}),
        httpx2.Response(200, json={"choices": []}),
    ],
)
def test_malformed_bodies_are_transient(response: httpx2.Response) -> None:
    with pytest.raises(MalformedResponseError) as info:
        make(lambda r: response)("Q")
    assert classify(info.value) == "transient"


def test_profile_retries_429_then_records() -> None:
    from scope_shared.embeddings import HashingEmbedder
    from scope_shared.store import AnchorStore
    from scope_shared.suites import AnchorSuite, seed_store

    suite = AnchorSuite(questions=[question(i) for i in range(4)], name="unit")
    store = AnchorStore(embedder=HashingEmbedder())
    seed_store(store, suite)
    answers = FakeModel(suite)
    attempts: dict[str, int] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        prompt = json.loads(request.content)["messages"][-1]["content"]
        attempts[prompt] = attempts.get(prompt, 0) + 1
        if attempts[prompt] == 1:
            return httpx2.Response(429, json={"error": {"message": "slow down"}})
        text, _ = answers(prompt)
        return httpx2.Response(200, json=completion(text, {"prompt_tokens": 9, "completion_tokens": 4}))

    report = profile(store, model=CARD, call=make(handler), suite=suite, n=None, concurrency=1, backoff=0.001)
    assert report.complete and set(attempts.values()) == {2}
    assert {e.correct for e in report.entries} == {1.0} and {e.usage for e in report.entries} == {"reported"}


def test_check_lists_models_and_reports_refusals() -> None:
    def models(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"object": "list", "data": [{"id": "served", "object": "model"}]})

    assert make(models).check() == ["served"]
    with pytest.raises(ModelCallError, match=r"refused the API key \(HTTP 401\)"):
        make(lambda r: httpx2.Response(401, json={"error": {"message": "bad key"}})).check()

    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("Connection refused")

    with pytest.raises(ModelCallError, match="cannot reach http://llm.test/v1"):
        make(refuse).check()
    assert make(lambda r: httpx2.Response(404, json={"error": {"message": "no"}})).check() == []


def test_the_key_is_not_in_repr() -> None:
    call = OpenAIChatCall(base_url="http://llm.test/v1", model="m", api_key="sk-secret")
    assert "sk-secret" not in repr(call)
