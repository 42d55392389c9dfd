"""The public surface of scope_langchain is pinned, and the core never imports LangChain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import scope_langchain

ROOT = Path(__file__).resolve().parents[2]


def test_public_api_is_pinned() -> None:
    assert sorted(scope_langchain.__all__) == [
        "Grader",
        "ReplayChatModel",
        "ReplayMissError",
        "ScopeChatModel",
        "ScopeOutcomeHandler",
        "ScopeRoute",
        "ScopeRouter",
        "is_transient",
        "last_question",
        "profile_call",
    ]
    for name in scope_langchain.__all__:
        assert getattr(scope_langchain, name) is not None


def test_importing_the_core_does_not_import_langchain() -> None:
    code = (
        "import sys, scope_shared, scope_shared.engine, scope_shared.evaluation\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('langchain', 'langchain_core', 'scope_langchain'))\n"
        "print(bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_importing_the_adapter_connects_to_nothing() -> None:
    # no store, no embedder, no client is built at import time: importing with sockets disabled works
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise RuntimeError('network at import time')\n"
        "socket.socket.connect = refuse\n"
        "import scope_langchain\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
