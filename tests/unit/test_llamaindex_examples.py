"""Each LlamaIndex example runs offline and does what it says (checked on a small slice of real data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "routerbench-zs"

pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> tuple[dict[str, Any], str]:
    if not DATA.is_dir():
        pytest.fail(f"shared data not found at {DATA}; the repo expects ../shared beside it")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--embedder", "hashing", "--max-anchors", "300", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    return json.loads(lines[0].removeprefix("SUMMARY ")), proc.stdout


def test_router_query_engine_example() -> None:
    summary, out = _run("llamaindex_router_query_engine.py", "--queries", "6")
    assert summary["queries"] == 6 and summary["recorded"] == 6
    assert sum(summary["share"].values()) == 6
    assert 0 < summary["spent"] <= summary["budget"] and summary["held"] == 0
    # Outcomes were recorded back into the routing store: 6 new anchor questions.
    assert summary["anchors"] == 306
    assert out.count("SCOPE chose ") == 6


def test_settings_llm_example() -> None:
    summary, out = _run("llamaindex_settings_llm.py", "--queries", "8", "--budget", "0.05")
    assert summary["queries"] == 8 and summary["recorded"] == 8
    assert summary["routing_anchors"] == 300 and summary["feedback_anchors"] == 8
    assert 0 < summary["spent"] <= summary["budget"] and summary["held"] == 0
    for form in ("complete", "chat", "stream", "async"):
        assert f"{form} " in out
    assert "$nan" not in out
