"""A real vLLM OpenAI-compatible server on 127.0.0.1, for integration tests and benchmarks.

The server runs from its own environment (``SCOPE_VLLM_PYTHON``, made by ``scripts/vllm_env.sh``) and
serves the tiny random-weight Qwen3 model (``SCOPE_TINY_MODEL``). It is started on a free port in its own
process group, polled on ``/health``, and stopped by that PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import httpx
import pytest

SERVED_NAME = "tiny-scope"
#: KV cache reserved by the CPU backend; the tiny model needs ~512 bytes a token.
KV_CACHE_BYTES = 256 * 1024 * 1024


def vllm_paths() -> tuple[str, str]:
    """The vLLM interpreter and tiny-model directory from the environment; skip (fail under CI) if unset."""
    python = os.environ.get("SCOPE_VLLM_PYTHON", "")
    model = os.environ.get("SCOPE_TINY_MODEL", "")
    if not python or not model:
        msg = (
            "SCOPE_VLLM_PYTHON / SCOPE_TINY_MODEL not set: run `bash scripts/vllm_env.sh` and export "
            "SCOPE_VLLM_PYTHON=.venv-vllm/bin/python SCOPE_TINY_MODEL=.tiny-model (make test does this)"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    for path in (python, model):
        if not Path(path).exists():
            pytest.fail(f"{path} does not exist; run `bash scripts/vllm_env.sh`")
    return python, model


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` serving ``model`` as :data:`SERVED_NAME`."""

    def __init__(self, python: str, model: str, log_path: Path, *, port: int | None = None) -> None:
        self.python = python
        self.model = model
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def start(self, timeout: float = 300.0) -> VLLMServer:
        cmd = [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--served-model-name",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            "16384",
            # No torch.compile warm-up (minutes on 2 CPU cores) and a fixed KV cache: the CPU backend
            # otherwise reserves a fraction of all memory and refuses to start when it is not free.
            "--enforce-eager",
            "--kv-cache-memory-bytes",
            str(KV_CACHE_BYTES),
        ]
        env = dict(os.environ)
        env.update(
            HF_HUB_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            TOKENIZERS_PARALLELISM="false",
        )
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"vLLM server exited with {self.proc.returncode}:\n{self.log_tail()}"
                raise RuntimeError(msg)
            try:
                if httpx.get(f"{self.root}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        self.stop()
        msg = f"vLLM server not healthy after {timeout:.0f} s:\n{self.log_tail()}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        """SIGTERM the server's process group (it spawns engine processes), SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        kept = [line for line in self.log_text().splitlines() if not line.startswith("WARNING: Location")]
        return "\n".join(kept[-lines:])

    def chat_posts(self) -> int:
        """Chat-completion requests the server has logged (uvicorn's access log)."""
        return self.log_text().count('"POST /v1/chat/completions HTTP/1.1" 200')

    def metric(self, name: str) -> float:
        """Sum of a Prometheus counter over its labels, from ``/metrics``."""
        text = httpx.get(f"{self.root}/metrics", timeout=5.0).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` as a chat user turn, counted by the server itself."""
        r = httpx.post(
            f"{self.root}/tokenize",
            json={"model": SERVED_NAME, "messages": [{"role": "user", "content": prompt}]},
            timeout=10.0,
        )
        r.raise_for_status()
        return int(r.json()["count"])
