"""examples/profile_new_model.py runs against the replay server: it profiles the "new" model and routes with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scope_shared.profile.replay_server import ReplayServer, load_recorded
from scope_shared.suites import load_suite

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_profile_new_model_example(data_dir: Path, tmp_path: Path) -> None:
    recorded = load_recorded(load_suite("default"), "gpt-4o-mini-2024-07-18", data_dir)
    with ReplayServer(recorded, served_name="my-model") as srv:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "profile_new_model.py"),
                "--base-url",
                srv.base_url,
                "--model",
                "my-model",
                "--price",
                "0.15,0.60",
                "--n",
                "30",
                "--store",
                str(tmp_path / "anchors"),
                "--prices",
                str(data_dir / "zeroeval" / "prices.csv"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
            timeout=600,
        )
        answered = sum(srv.answered.values())
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("SUMMARY "))[8:])
    # the suite questions the server has no answer to are refused (HTTP 400) and reported, not recorded
    assert summary["recorded"] == answered and 0 < answered <= 30
    assert summary["models"] == 3 and summary["routed"] in (
        "my-model",
        "gpt-4o-2024-08-06",
        "Meta-Llama-3.1-8B-Instruct",
    )
    assert summary["spent"] > 0
