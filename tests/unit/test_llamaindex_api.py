"""The LlamaIndex adapter's public surface is pinned, and the core never imports LlamaIndex."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import scope_llamaindex
from scope_llamaindex import usage_of

ROOT = Path(__file__).resolve().parents[2]

PUBLIC = {
    "Grader",
    "ReplayLLM",
    "ReplayMissError",
    "ScopeCallEvent",
    "ScopeEventHandler",
    "ScopeLLM",
    "ScopeSelection",
    "ScopeSelector",
    "explain",
    "profile_call",
    "replay_grader",
    "usage_of",
}


def test_all_is_pinned() -> None:
    assert set(scope_llamaindex.__all__) == PUBLIC
    for name in scope_llamaindex.__all__:
        assert hasattr(scope_llamaindex, name), name


def test_py_typed_is_shipped() -> None:
    assert (ROOT / "scope_llamaindex" / "py.typed").is_file()


def test_importing_scope_shared_does_not_import_llama_index() -> None:
    probe = "print(','.join(sorted({m.split('.')[0] for m in sys.modules if m.startswith('llama_index')})))"

    def loaded(imports: str) -> str:
        code = f"import sys, {imports}; {probe}"
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert loaded("scope_shared, scope_shared.engine, scope_shared.store, scope_shared.policy") == ""
    # The same probe sees LlamaIndex once the adapter is imported, so it can tell.
    assert "llama_index" in loaded("scope_llamaindex")


def test_usage_of_reads_the_usual_places() -> None:
    assert usage_of(SimpleNamespace(additional_kwargs={"prompt_tokens": 3, "completion_tokens": 4})) == (3, 4)
    assert usage_of(SimpleNamespace(additional_kwargs={"input_tokens": 5, "output_tokens": 6})) == (5, 6)
    msg = SimpleNamespace(additional_kwargs={"prompt_tokens": 7, "completion_tokens": 8}, content="x")
    assert usage_of(SimpleNamespace(additional_kwargs={}, message=msg)) == (7, 8)
    raw = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=9, completion_tokens=10))
    assert usage_of(SimpleNamespace(additional_kwargs={}, raw=raw)) == (9, 10)
    assert usage_of(SimpleNamespace(additional_kwargs={}, raw={"usage": {"input_tokens": 1}})) == (1, None)
    assert usage_of(SimpleNamespace(additional_kwargs={"prompt_tokens": -1, "completion_tokens": 2.5})) == (
        None,
        None,
    )
