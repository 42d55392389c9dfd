"""Smoke test of the scale benchmark (``python -m benchmarks``) on a tiny generated dataset.

Checks the report's shape and that every measured figure is a positive number; no thresholds, since the
figures depend on the machine.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import random
from pathlib import Path

from benchmarks.scale import main

MODELS = [f"model-{i}" for i in range(11)]
WORDS = "alpha beta gamma delta river mountain code python sum list winter summer physics atom cell".split()


def _write(path: Path, queries: list[str], rng: random.Random) -> None:
    with gzip.open(path, "wt", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["query_id", "query", "model", "correct", "output_tokens", "input_tokens", "task"])
        for qi, q in enumerate(queries):
            for mi, m in enumerate(MODELS):
                correct = float(rng.random() < 0.3 + 0.05 * mi)
                w.writerow([f"{path.stem}-{qi}", q, m, correct, 20 + mi, 30, "toy"])


def _dataset(folder: Path) -> Path:
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=12)) + f" question {i}?" for i in range(90)]
    folder.mkdir()
    _write(folder / "anchors.csv.gz", texts[:60], rng)
    _write(folder / "test.csv.gz", texts[60:], rng)
    (folder / "prices.csv").write_text(
        "model,input_per_mtok,output_per_mtok\n"
        + "".join(f"{m},{0.1 * (i + 1)},{0.2 * (i + 1)}\n" for i, m in enumerate(MODELS))
    )
    return folder


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_bench_reports_every_figure_for_each_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "--data", str(_dataset(tmp_path / "toy")), "--embedders", "hashing", "--sizes", "150,300",
        "--queries", "12", "--batch", "8", "--ingest", "4", "--record", "3", "--warmup", "2", "--probe-queries", "4",
        "--profile-queries", "4", "--base", "40", "--quality", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())

    assert len(report["candidates"]) == 10  # the 10 models with most outcomes, of 11
    assert report["estimator"]
    (emb,) = report["embedders"]
    assert emb.startswith("hashing")
    er = report["embedders"][emb]
    assert er["ingest_base"]["outcomes"] == 40 * 10  # --base real anchors, embedded for real
    assert _positive(er["ingest_base"]["outcomes_per_s"])
    assert 0 <= er["quality"]["routed_accuracy"] <= 1 and er["quality"]["anchors"] == 40
    assert set(er["sizes"]) == {"150", "300"}
    unseen = 4 + 3  # each size ingests --ingest unseen prompts and records --record routed ones
    for (size, r), grown_from, before in zip(er["sizes"].items(), (0, 150), (0, unseen), strict=True):
        assert r["build"]["anchors_added"] == int(size) - grown_from  # one store, grown size by size
        assert r["build"]["outcomes"] == (int(size) - grown_from) * 10
        assert r["copies_per_base"] == int(size) // 40 + (int(size) % 40 > 0)
        assert r["open"]["anchors"] == int(size) + before, r["open"]  # the fresh process sees the persisted store
        assert _positive(r["open"]["peak_rss_mb"]) and _positive(r["open"]["open_s"])
        assert ("peer" in r) == (size == "300")  # the peer is timed at the largest size
        for part in ("decision", "floor", "floor_records", *(["peer"] if size == "300" else [])):
            assert r[part]["n"] == 12
            assert _positive(r[part]["p50_ms"]) and r[part]["p99_ms"] >= r[part]["p50_ms"]
        assert _positive(r["ratio"]["p50"]) and _positive(r["ratio"]["p99"])
        assert r["floor_records"]["p50_ms"] >= r["floor"]["p50_ms"]  # the same calls plus one read
        assert r["batch"]["size"] == 8 and r["batch"]["floor_runs"] == (2 if size == "300" else 1)
        assert _positive(r["batch"]["decisions_per_s"]) and _positive(r["batch"]["floor_per_s"])
        assert r["ingest"]["outcomes"] == 4 * 10 and _positive(r["ingest"]["outcomes_per_s"])
        assert r["record"]["n"] == 3 and _positive(r["record"]["p50_ms"])
    prof = er["sizes"]["300"]["profile"]["ms_per_decision"]
    assert _positive(prof["total"]) and _positive(prof["chroma_query"])
    assert "profile" not in er["sizes"]["150"]
    assert set(report["targets"][emb]) >= {"decision_p50_le_1.3x_floor", "rss_lt_1gb"}
