"""A real OpenAI-compatible HTTP server that replays one model's recorded responses, for profiling tests.

It answers ``POST /v1/chat/completions`` with the response the source model really gave to that question in
``../shared/data/*/responses.csv.gz``, and its real usage counts (the outcome files' ``input_tokens`` and
``output_tokens``), under a new model name. A request is looked up by its last user message: a suite question's
prompt (:attr:`SuiteQuestion.prompt`), mapped back to its dataset and query id. ``GET /v1/models`` lists the
served name. It can fail a fraction of requests with 429, refuse every request with 401 (without the right
key), answer with empty or malformed bodies, and it counts requests and answers per question.

Run it by hand for a demo::

    python -m tests.integration.openai_replay --model gpt-4o-mini-2024-07-18 --served-name my-new-model

Stdlib ``ThreadingHTTPServer`` on 127.0.0.1, in a daemon thread; :meth:`ReplayServer.stop` shuts it down.
"""

from __future__ import annotations

import argparse
import csv
import gzip
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
from typing import Any, Literal

from scope_shared.suites import AnchorSuite, load_suite

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

Mode = Literal["ok", "empty", "malformed", "no-choices"]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One question the source model answered: the suite id, its raw response, usage and recorded grade."""

    query_id: str
    response: str
    input_tokens: int | None
    output_tokens: int | None
    correct: float


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        csv.field_size_limit(1 << 30)
        yield from csv.DictReader(fh)


def _int(value: str) -> int | None:
    return int(float(value)) if value.strip() else None


def load_recorded(suite: AnchorSuite, model: str, data: Path = DATA) -> dict[str, Recorded]:
    """The source model's recorded answers to the suite's questions, by prompt (questions it has none for are left
    out). Suite ids are ``<dataset>/<query_id>``."""
    by_source: dict[str, dict[str, str]] = {}  # dataset -> dataset query id -> suite query id
    for q in suite:
        source, _, qid = q.query_id.partition("/")
        by_source.setdefault(source, {})[qid] = q.query_id
    found: dict[str, Recorded] = {}
    for source, ids in by_source.items():
        folder = data / source
        if not (folder / "responses.csv.gz").is_file():
            continue
        responses = {r["query_id"]: r["response"] for r in _rows(folder / "responses.csv.gz") if r["model"] == model}
        for name in ("anchors.csv.gz", "test.csv.gz"):
            for row in _rows(folder / name):
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


def free_port() -> int:
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
        self.port = port or free_port()
        self.requests: Counter[str] = Counter()  # chat requests per suite id (429s included)
        self.answered: Counter[str] = Counter()  # 200 answers per suite id
        self.refused = 0  # 401, 404, 429 and unknown prompts
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def prompt_of(self, query_id: str) -> str:
        return next(p for p, r in self.recorded.items() if r.query_id == query_id)

    def start(self) -> ReplayServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()  # headers and body go out as two writes: without this, each answer waits ~40 ms
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, kind: str) -> None:
                with server._lock:
                    server.refused += 1
                body = {"error": {"message": message, "type": kind, "code": status}}
                self._send(status, json.dumps(body).encode())

            def _authorised(self) -> bool:
                if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._error(401, "Incorrect API key provided", "invalid_request_error")
                return False

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    self._error(404, f"no route {self.path}", "not_found")
                    return
                if self._authorised():
                    data = [{"id": server.served_name, "object": "model", "created": 0, "owned_by": "replay"}]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._error(404, f"no route {self.path}", "not_found")
                    return
                if not self._authorised():
                    return
                request = json.loads(body)
                if request.get("model") != server.served_name:
                    self._error(404, f"The model `{request.get('model')}` does not exist", "not_found_error")
                    return
                users = [m["content"] for m in request.get("messages", []) if m.get("role") == "user"]
                rec = server.recorded.get(users[-1] if users else "")
                if rec is None:
                    self._error(400, "this replay server has no recorded answer to that prompt", "invalid_request")
                    return
                with server._lock:
                    server.requests[rec.query_id] += 1
                    fail = server._rng.random() < server.fail_rate
                if fail:
                    self._error(429, "Rate limit reached; retry later", "rate_limit_error")
                    return
                if server.delay:
                    time.sleep(server.delay)
                with server._lock:
                    server.answered[rec.query_id] += 1
                if server.mode == "malformed":
                    self._send(200, b'{"id": "chatcmpl-x", "choices": [{"message": ', "application/json")
                    return
                self._send(200, json.dumps(server.completion(rec)).encode())

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
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--port", type=int, default=None)
    args = p.parse_args(argv)
    recorded = load_recorded(load_suite(args.suite), args.model, Path(args.data))
    if not recorded:
        sys.exit(f"no recorded responses of {args.model!r} for suite {args.suite!r} in {args.data}")
    server = ReplayServer(recorded, served_name=args.served_name, port=args.port).start()
    print(f"replaying {len(recorded)} answers of {args.model} as {args.served_name} at {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
