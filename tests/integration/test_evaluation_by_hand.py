"""evaluate()'s single-model and oracle figures, reproduced by hand from the CSVs."""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from pathlib import Path

import pytest

from scope_shared import HashingEmbedder
from scope_shared.evaluation import evaluate


def by_hand(folder: Path) -> dict[str, object]:
    prices = {r["model"]: (float(r["input_per_mtok"]), float(r["output_per_mtok"])) for r in csv.DictReader(open(folder / "prices.csv"))}
    rows: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    with gzip.open(folder / "test.csv.gz", "rt", newline="") as fh:
        for r in csv.DictReader(fh):
            pin, pout = prices[r["model"]]
            cost = (int(r["input_tokens"]) * pin + int(r["output_tokens"]) * pout) / 1e6
            rows[r["query"]][r["model"]] = (float(r["correct"]), cost)
    pool = sorted(m for m in prices if all(m in per for per in rows.values()))
    n = len(rows)
    acc = {m: sum(per[m][0] for per in rows.values()) / n for m in pool}
    cost = {m: sum(per[m][1] for per in rows.values()) / n for m in pool}
    best = max(pool, key=lambda m: (acc[m], -cost[m]))
    cheap = min(pool, key=lambda m: (cost[m], -acc[m]))
    o_acc = o_cost = 0.0
    for per in rows.values():
        right = [per[m][1] for m in pool if per[m][0] >= 0.5]
        if right:
            o_acc += 1
            o_cost += min(right)
        else:
            o_acc += per[cheap][0]
            o_cost += per[cheap][1]
    return {"pool": pool, "best": (best, acc[best], cost[best]), "cheap": (cheap, acc[cheap], cost[cheap]), "oracle": (o_acc / n, o_cost / n)}


@pytest.mark.integration
@pytest.mark.parametrize("name", ["routerbench-zs", "zeroeval"])
def test_best_single_cheapest_oracle_match_hand_computation(data_dir: Path, name: str) -> None:
    folder = data_dir / name
    want = by_hand(folder)
    report = evaluate(folder / "anchors.csv.gz", folder / "test.csv.gz", folder / "prices.csv", embedder=HashingEmbedder())
    rt = report["routing"]
    assert rt["pool"] == want["pool"]
    best, cheap = rt["best_single"], rt["cheapest"]
    assert (best["model"], pytest.approx(best["accuracy"]), pytest.approx(best["cost"])) == want["best"]
    assert (cheap["model"], pytest.approx(cheap["accuracy"]), pytest.approx(cheap["cost"])) == want["cheap"]
    assert (pytest.approx(rt["oracle"]["accuracy"]), pytest.approx(rt["oracle"]["cost"])) == want["oracle"]
    # the router's curve spans from cheap to accurate, and never beats the oracle's accuracy
    accs = [pt["accuracy"] for pt in rt["curve"]]
    assert max(accs) <= rt["oracle"]["accuracy"] + 1e-12
    assert report["estimation"]["pairs"] > 0 and 0.5 < report["estimation"]["auroc_pooled"] <= 1.0
