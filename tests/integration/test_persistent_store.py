"""Build a persistent store from real data with the default embedder, reopen it in a new process, route."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scope_shared import AnchorStore, load_outcomes

CHILD = r"""
import json, sys
from scope_shared import AnchorStore, ScopeEngine, load_prices
store = AnchorStore(path=sys.argv[1])
engine = ScopeEngine(store=store, models=load_prices(sys.argv[2]), value_per_correct=0.01)
d = engine.route(sys.argv[3])
print(json.dumps({"count": store.count(), "model": d.model, "evidence": len(d.estimate.evidence),
                  "p": {m: e.p_correct for m, e in d.estimates.items()}, "degraded": d.degraded}))
"""


@pytest.mark.integration
def test_persistent_store_reopens_in_new_process(data_dir: Path, tmp_path: Path) -> None:
    folder = data_dir / "routerbench-zs"
    rows = load_outcomes(folder / "anchors.csv.gz")
    keep = sorted({r.query for r in rows})[:150]  # a slice keeps the default embedder's work small
    subset = [r for r in rows if r.query in set(keep)]
    store = AnchorStore(path=tmp_path / "anchors")
    report = store.add(subset)
    assert report.anchors_new == 150 and store.count() == 150
    del store
    test_q = load_outcomes(folder / "test.csv.gz")[0].query
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "anchors"), str(folder / "prices.csv"), test_q],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["count"] == 150 and not got["degraded"] and got["evidence"] > 0
    assert len(got["p"]) == 11 and all(0.0 < p < 1.0 for p in got["p"].values())
    assert got["model"] in got["p"]
