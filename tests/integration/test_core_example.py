"""examples/core_quickstart.py runs, stays within its budget, and teaches the store."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "core_quickstart.py"
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "routerbench-zs"


@pytest.mark.integration
def test_core_quickstart(capsys: pytest.CaptureFixture[str]) -> None:
    if not DATA.is_dir():
        pytest.fail(f"shared data missing at {DATA}")
    spec = importlib.util.spec_from_file_location("core_quickstart", EXAMPLE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    got = mod.main(["--embedder", "hashing", "--max-anchors", "200", "--questions", "30", "--budget", "0.01"])
    assert got["spent"] <= got["limit"]
    assert got["routed"] + got["refused"] == 30 and got["routed"] > 0
    assert got["anchors"] == 200 + got["routed"]  # each routed question was recorded back
    assert "routed" in capsys.readouterr().out
