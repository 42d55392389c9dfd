"""A real OpenAI-compatible HTTP server that replays one model's recorded responses: for profiling tests, the
demo (``scope-router demo``) and the bring-your-own-model benchmark (``benchmarks/byom.py``).

It answers ``POST /v1/chat/completions`` with the response the source model really gave to that question in
a data folder's ``<source>/responses.csv.gz`` (as in ``../shared/data``), and its real usage counts (the
outcome files' ``input_tokens`` and ``output_tokens``), under a new model name. A request is looked up by its
last user message: a suite question's prompt (:attr:`SuiteQuestion.prompt`), mapped back to its source and
query id. ``GET /v1/models`` lists the served name. It can fail a fraction of requests with 429, refuse every
request with 401 (without the right key), answer with empty or malformed bodies, and it counts requests and
answers per question.

Run it by hand::

    python -m scope_shared.profile.replay_server --data ../shared/data --model gpt-4o-mini-2024-07-18 \
        --served-name my-new-model

Stdlib ``ThreadingHTTPServer`` on 127.0.0.1, in a daemon thread; :meth:`ReplayServer.stop` shuts it down.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

from scope_shared.data import read_rows, reading
from scope_shared.suites import AnchorSuite, load_suite

__all__ = ["Mode", "Recorded", "ReplayServer", "Reply", "free_port", "load_recorded"]

Mode = Literal["ok", "empty", "malformed", "no-choices"]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One question the source model answered: the suite id, its raw response, usage and recorded grade."""

    query_id: str
    response: str
    input_tokens: int | None
    output_tokens: int | None
    correct: float


def _rows(path: Path, *columns: str) -> Iterator[Mapping[str, Any]]:
    with reading(path):
        for _, row in read_rows(path, required=columns):
            yield row


def _int(value: str) -> int | None:
    return int(float(value)) if value.strip() else None


def load_recorded(suite: AnchorSuite, model: str, data: str | Path) -> dict[str, Recorded]:
    """The source model's recorded answers to the suite's questions, by prompt (questions it has none for are left
    out).

    Args:
        suite: the suite; its ids are ``<source>/<query_id>``.
        model: the recorded model whose answers are replayed.
        data: a folder holding one folder per source (``../shared/data``), each with ``responses.csv.gz`` and
            the outcome files (``anchors.csv.gz``, ``test.csv.gz``) that give each answer's usage and grade;
            a source without responses is skipped.
    """
    data = Path(data)
    by_source: dict[str, dict[str, str]] = {}  # dataset -> dataset query id -> suite query id
    for q in suite:
        source, _, qid = q.query_id.partition("/")
        by_source.setdefault(source, {})[qid] = q.query_id
    found: dict[str, Recorded] = {}
    for source, ids in by_source.items():
        folder = data / source
        if not (folder / "responses.csv.gz").is_file():
            continue
        rows = _rows(folder / "responses.csv.gz", "query_id", "model", "response")
        responses = {r["query_id"]: r["response"] for r in rows if r["model"] == model}
        for name in ("anchors.csv.gz", "test.csv.gz"):
            if not (folder / name).is_file():
                continue
            for row in _rows(folder / name, "query_id", "model", "input_tokens", "output_tokens"):
                if row["model"] != model or row["query_id"] not in ids or row["query_id"] not in responses:
                    continue
                q = suite[ids[row["query_id"]]]
                found[q.prompt] = Recorded(
                    q.query_id,
                    responses[row["query_id"]],
                    _int(row["input_tokens"]),
                    _int(row["output_tokens"]),
                    float(row["correct"]),
                )
    return found


class Reply(NamedTuple):
    """One HTTP answer of the server."""

    status: int
    body: bytes
    content_type: str = "application/json"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReplayServer:
    """An OpenAI-compatible server answering with recorded responses (see the module docstring).

    Args:
        recorded: what :func:`load_recorded` returns: the answer to each prompt.
        served_name: the model name it serves (requests for another get 404).
        api_key: when set, a request without ``Authorization: Bearer <api_key>`` gets 401.
        fail_rate: fraction of chat requests answered 429 (drawn with ``seed``).
        mode: ``ok``; ``empty`` (content ""); ``malformed`` (a 200 whose body is not JSON); ``no-choices``
            (a 200 JSON object without choices).
        delay: seconds each answer waits before it is sent.
    """

    def __init__(
        self,
        recorded: Mapping[str, Recorded],
        *,
        served_name: str,
        api_key: str | None = None,
        fail_rate: float = 0.0,
        mode: Mode = "ok",
        delay: float = 0.0,
        seed: int = 0,
        port: int | None = None,
    ) -> None:
        self.recorded = dict(recorded)
        self.served_name = served_name
        self.api_key = api_key
        self.fail_rate = fail_rate
        self.mode = mode
        self.delay = delay
        self._port = port
        self.requests: Counter[str] = Counter()  # chat requests per suite id (429s included)
        self.answered: Counter[str] = Counter()  # 200 answers per suite id
        self.refused = 0  # 401, 404, 429 and unknown prompts
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        """The port it listens on (given, or a free one chosen when first asked)."""
        if self._port is None:
            self._port = free_port()
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def prompt_of(self, query_id: str) -> str:
        return next(p for p, r in self.recorded.items() if r.query_id == query_id)

    def respond(self, method: str, path: str, body: bytes = b"", authorization: str | None = None) -> Reply:
        """The answer to one request (status, body, content type): what the HTTP server sends, and what a test's
        mock transport can send without a socket."""
        route = path.rstrip("/")
        if method == "GET" and route == "/v1/models":
            if not self._authorised(authorization):
                return self._error(401, "Incorrect API key provided", "invalid_request_error")
            data = [{"id": self.served_name, "object": "model", "created": 0, "owned_by": "replay"}]
            return Reply(200, json.dumps({"object": "list", "data": data}).encode())
        if method != "POST" or route != "/v1/chat/completions":
            return self._error(404, f"no route {method} {path}", "not_found")
        if not self._authorised(authorization):
            return self._error(401, "Incorrect API key provided", "invalid_request_error")
        request = json.loads(body)
        if request.get("model") != self.served_name:
            return self._error(404, f"The model `{request.get('model')}` does not exist", "not_found_error")
        users = [m["content"] for m in request.get("messages", []) if m.get("role") == "user"]
        rec = self.recorded.get(users[-1] if users else "")
        if rec is None:
            return self._error(400, "this replay server has no recorded answer to that prompt", "invalid_request")
        with self._lock:
            self.requests[rec.query_id] += 1
            fail = self._rng.random() < self.fail_rate
        if fail:
            return self._error(429, "Rate limit reached; retry later", "rate_limit_error")
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.answered[rec.query_id] += 1
        if self.mode == "malformed":
            return Reply(200, b'{"id": "chatcmpl-x", "choices": [{"message": ')
        return Reply(200, json.dumps(self.completion(rec)).encode())

    def _authorised(self, authorization: str | None) -> bool:
        return self.api_key is None or authorization == f"Bearer {self.api_key}"

    def _error(self, status: int, message: str, kind: str) -> Reply:
        with self._lock:
            self.refused += 1
        return Reply(status, json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode())

    def start(self) -> ReplayServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()  # headers and body go out as two writes: without this, each answer waits ~40 ms
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _answer(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
                reply = server.respond(method, self.path, body, self.headers.get("Authorization"))
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="openai-replay", daemon=True).start()
        return self

    def completion(self, rec: Recorded) -> dict[str, Any]:
        """The chat.completion body for a recorded answer (as the mode makes it)."""
        body: dict[str, Any] = {
            "id": f"chatcmpl-replay-{rec.query_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "" if self.mode == "empty" else rec.response},
                    "finish_reason": "stop",
                }
            ],
        }
        if rec.input_tokens is not None and rec.output_tokens is not None:
            body["usage"] = {
                "prompt_tokens": rec.input_tokens,
                "completion_tokens": rec.output_tokens,
                "total_tokens": rec.input_tokens + rec.output_tokens,
            }
        if self.mode == "no-choices":
            del body["choices"]
        return body

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--model", required=True, help="the recorded model to replay, e.g. gpt-4o-mini-2024-07-18")
    p.add_argument("--served-name", required=True, help="the new name it is served under")
    p.add_argument("--suite", default="default")
    p.add_argument("--data", required=True, help="a folder of source folders, e.g. ../shared/data")
    p.add_argument("--port", type=int, default=None)
    args = p.parse_args(argv)
    recorded = load_recorded(load_suite(args.suite), args.model, Path(args.data))
    if not recorded:
        sys.exit(f"no recorded responses of {args.model!r} for suite {args.suite!r} in {args.data}")
    server = ReplayServer(recorded, served_name=args.served_name, port=args.port).start()
    sys.stdout.write(f"replaying {len(recorded)} answers of {args.model} as {args.served_name} at {server.base_url}\n")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
