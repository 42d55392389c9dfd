"""``scope-router evaluate --cascade`` on a tiny synthetic dataset with recorded responses and references."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from scope_shared.cli import main

MODELS = {"cheap": (0.1, 0.65), "fair": (0.5, 0.8), "dear": (10.0, 0.95)}  # price per Mtok, accuracy
TOPICS = ["planets", "rivers", "metals", "birds", "poems", "numbers", "castles", "engines"]


def write_dataset(folder: Path, *, n: int = 120, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    outcome_cols = ["query_id", "query", "model", "correct", "output_tokens", "input_tokens", "task"]
    rows: dict[str, list[dict[str, object]]] = {"anchors": [], "test": []}
    responses, references = [], []
    for i in range(n):
        qid = f"q{i}"
        topic = TOPICS[i % len(TOPICS)]
        query = f"Question {i} about {topic}: which option is right? (A) one (B) two (C) three (D) four"
        gold = "ABCD"[int(rng.integers(4))]
        references.append({"query_id": qid, "task": "quiz", "reference": gold, "grader": "choice"})
        split = "test" if i % 5 == 0 else "anchors"
        for model, (_, acc) in MODELS.items():
            right = rng.random() < acc
            letter = gold if right else "ABCD"[("ABCD".index(gold) + 1 + int(rng.integers(3))) % 4]
            responses.append({"query_id": qid, "model": model, "response": f"I pick ({letter})."})
            rows[split].append(
                {
                    "query_id": qid,
                    "query": query,
                    "model": model,
                    "correct": float(right),
                    "output_tokens": 20,
                    "input_tokens": 30,
                    "task": "quiz",
                }
            )
    for split, items in rows.items():
        with gzip.open(folder / f"{split}.csv.gz", "wt", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=outcome_cols)
            w.writeheader()
            w.writerows(items)
    for name, items, cols in (
        ("responses", responses, ["query_id", "model", "response"]),
        ("references", references, ["query_id", "task", "reference", "grader"]),
    ):
        with gzip.open(folder / f"{name}.csv.gz", "wt", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(items)
    (folder / "prices.csv").write_text(
        "model,input_per_mtok,output_per_mtok\n" + "".join(f"{m},{p},{p}\n" for m, (p, _) in MODELS.items())
    )


def evaluate(folder: Path, *extra: str) -> int:
    """``scope-router evaluate --cascade`` on the dataset in ``folder`` (hashing embedder, anchor statistics)."""
    files = [
        "--anchors",
        folder / "anchors.csv.gz",
        "--test",
        folder / "test.csv.gz",
        "--prices",
        folder / "prices.csv",
    ]
    return main(["evaluate", *map(str, files), "--embedder", "hashing", "--estimator", "anchors", "--cascade", *extra])


def test_evaluate_cascade_reports_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_dataset(tmp_path)
    out_json = tmp_path / "report.json"
    plot = tmp_path / "curve.png"
    code = evaluate(tmp_path, "--cascade-max-calls", "3", "--json", str(out_json), "--plot", str(plot))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "side by side on 24 test queries" in out
    assert "pre-hoc router" in out and "cascade" in out and "singles hull" in out and "oracle" in out
    report = json.loads(out_json.read_text())["cascade"]
    assert report["pool"] == ["cheap", "dear", "fair"] and report["queries"] == 24
    assert report["settings"]["max_calls"] == 3
    curve = report["cascade"]["curve"]
    assert max(pt["calls"] for pt in curve) <= 3 and curve[0]["calls"] == 1.0
    # the calibration saw every anchor: 96 with answers of all three models
    assert report["calibration"]["anchors"] == 96
    assert report["cascade"]["lift_over_singles"] == pytest.approx(
        report["cascade"]["aiq"] - report["cascade"]["hull_aiq"]
    )
    for png in (plot, tmp_path / "curve_cascade.png"):  # the router's plot, and the cascade's beside it
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_cascade_needs_the_recorded_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_dataset(tmp_path, n=20)
    (tmp_path / "responses.csv.gz").unlink()
    code = evaluate(tmp_path)
    assert code == 2
    assert "responses.csv.gz: no such file" in capsys.readouterr().err
