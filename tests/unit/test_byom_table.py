"""benchmarks/byom.py's table: mean and spread over seeds, the gap to all anchors, and the 0.01 verdict."""

from __future__ import annotations

from typing import Any

from benchmarks.byom import table


def run(select: str, n: int, seed: int | None, auroc: float, **extra: float) -> dict[str, Any]:
    figures = {"aiq": 0.8, "lift": -0.01, "share": 0.1, "anchor_accuracy": 0.7, "test_accuracy": 0.75}
    return {"select": select, "n": n, "seed": seed, "auroc": auroc, **figures, **extra}


def test_rows_gap_and_verdict() -> None:
    results = {
        "zeroeval:good": [
            run("all", 800, None, 0.700),
            run("informative", 50, 0, 0.695, anchor_accuracy=0.85),
            run("informative", 50, 1, 0.697, anchor_accuracy=0.70),
            run("random", 50, 0, 0.650),
        ],
        "routerbench-zs:org/short": [run("all", 800, None, 0.720), run("informative", 50, 0, 0.705)],
    }
    lines = table(results)
    row = next(line for line in lines if "| good | 50 | informative |" in line)
    assert "| 0.696 ± 0.001 | +0.004 |" in row  # mean ± sd of 0.695 and 0.697; 0.700 - 0.696
    assert row.endswith("| 0.075 ± 0.035 |")  # |0.85 - 0.75| and |0.70 - 0.75|
    assert "| good | 50 | random | 0.650 | +0.050 |" in next(line for line in lines if "| random |" in line)
    rows = [line for line in lines if line.startswith("| zeroeval | good")]
    assert [r.split("|")[4].strip() for r in rows] == ["informative", "random", "all"]
    assert "- good: informative N=50 gap +0.004: meets the 0.01 goal" in lines
    assert "- org/short: informative N=50 gap +0.015: misses the 0.01 goal" in lines
