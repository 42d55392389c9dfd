"""``scope-router ingest --suite`` and ``scope-router profile``: what they write, and their one-line errors.

No endpoint is called here (``--dry-run``, or errors raised before any call); the calls themselves are tested
against real servers in tests/integration/test_profile_replay.py and test_profile_vllm.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scope_shared.cli import main
from scope_shared.embeddings import HashingEmbedder
from scope_shared.store import AnchorStore
from scope_shared.suites import AnchorSuite, load_suite, seed_store
from tests.unit.test_profile import CARD, question


@pytest.fixture
def suite_dir(tmp_path: Path) -> Path:
    suite = AnchorSuite(questions=[question(i) for i in range(12)], name="unit").with_vectors(HashingEmbedder())
    suite.save(tmp_path / "suite")
    return tmp_path / "suite"


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text(f"model,input_per_mtok,output_per_mtok\n{CARD.name},{CARD.input_per_mtok},{CARD.output_per_mtok}\n")
    return path


@pytest.fixture
def store_dir(tmp_path: Path, suite_dir: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    store = tmp_path / "store"
    args = [
        "ingest",
        "--store",
        str(store),
        "--suite",
        str(suite_dir),
        "--embedder",
        "hashing",
        "--estimator",
        "anchors",
    ]
    assert main([*args, "-q"]) == 0
    capsys.readouterr()
    return store


def open_store(path: Path) -> AnchorStore:
    return AnchorStore(path=path, embedder=HashingEmbedder())


def test_ingest_suite_seeds_every_question_and_reference_model(
    tmp_path: Path, suite_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: object, texts: object) -> None:
        raise AssertionError("embedded a suite question: its precomputed vector should be used")

    monkeypatch.setattr(HashingEmbedder, "embed", refuse)
    store = tmp_path / "s"
    code = main(["ingest", "--store", str(store), "--suite", str(suite_dir), "--embedder", "hashing", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    assert "suite 'unit': 24 outcomes of 2 reference models on 12 questions, 12 new anchors, 0 updated" in out
    monkeypatch.undo()
    opened = open_store(store)
    assert opened.count() == 12 and sorted(opened.model_stats()) == ["ref-a", "ref-b"]


def test_ingest_needs_files_or_a_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--store", str(tmp_path / "s")]) == 2
    assert "nothing to ingest" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_dry_run_prints_expected_cost_and_calls_nothing(
    store_dir: Path, suite_dir: Path, prices: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "dry.json"
    args = [
        "profile",
        "--store",
        str(store_dir),
        "--embedder",
        "hashing",
        "--model",
        CARD.name,
        "--prices",
        str(prices),
    ]
    code = main([*args, "--suite", str(suite_dir), "--n", "5", "--dry-run", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"dry run: {CARD.name} on 5 anchors of suite 'unit'")
    report = json.loads(out_json.read_text())
    assert report["dry_run"] and report["chosen"] == 5 and report["entries"] == [] and report["expected_cost"] > 0
    assert f"{report['expected_cost']:11.6f}" in next(line for line in out.splitlines() if line.startswith("total"))
    assert CARD.name not in open_store(store_dir).model_stats()


def _bad(
    tmp_path: Path, store_dir: Path, suite: str, prices: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> str:
    out_json = tmp_path / "bad.json"
    args = ["profile", "--store", str(store_dir), "--embedder", "hashing", "--prices", str(prices), "--suite", suite]
    args += ["--base-url", "http://127.0.0.1:9/v1", "--json", str(out_json), *extra]
    if "--model" not in extra:
        args += ["--model", CARD.name]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scope-router: error: ")
    assert not out_json.exists()
    assert CARD.name not in open_store(store_dir).model_stats() if store_dir.exists() else True
    return lines[0]


def test_model_missing_from_prices(
    tmp_path: Path, store_dir: Path, suite_dir: Path, prices: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _bad(tmp_path, store_dir, str(suite_dir), prices, ["--model", "gpt-9"], capsys)
    assert "model 'gpt-9' is not in" in line and "add a row: gpt-9," in line


def test_suite_file_with_a_missing_column(
    tmp_path: Path, store_dir: Path, prices: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "mine.csv"
    bad.write_text("query,reference\nWhat is 2+2?,4\n")
    line = _bad(tmp_path, store_dir, str(bad), prices, [], capsys)
    assert "missing column(s) ['grader']" in line


def test_unknown_grader_kind(tmp_path: Path, store_dir: Path, prices: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "mine.csv"
    bad.write_text("query,reference,grader\nWhat is 2+2?,4,fuzzy\n")
    line = _bad(tmp_path, store_dir, str(bad), prices, [], capsys)
    assert "fuzzy" in line and "mine.csv:2" in line


def test_no_store_yet(tmp_path: Path, suite_dir: Path, prices: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing-here"
    line = _bad(tmp_path, missing, str(suite_dir), prices, [], capsys)
    assert "no anchor store at" in line and "--suite default" in line
    assert not missing.exists()


def test_api_key_env_unset(
    tmp_path: Path, store_dir: Path, suite_dir: Path, prices: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _bad(tmp_path, store_dir, str(suite_dir), prices, ["--api-key-env", "SCOPE_NO_SUCH_KEY_VAR"], capsys)
    assert "SCOPE_NO_SUCH_KEY_VAR" in line and "not set" in line


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("t.txt", "no placeholder here", "none of the placeholders"),
        ("t.json", "{not json", "not valid JSON"),
        ("t.json", '{"system": "x", "assistant": "y"}', 'expected {"system"'),
        ("t.json", '{"user": "no placeholder"}', "none of the placeholders"),
    ],
)
def test_bad_template(
    name: str,
    text: str,
    needle: str,
    tmp_path: Path,
    store_dir: Path,
    suite_dir: Path,
    prices: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    template = tmp_path / name
    template.write_text(text)
    line = _bad(tmp_path, store_dir, str(suite_dir), prices, ["--template", str(template)], capsys)
    assert needle in line


def test_base_url_required_unless_dry_run(
    store_dir: Path, suite_dir: Path, prices: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "profile",
        "--store",
        str(store_dir),
        "--model",
        CARD.name,
        "--prices",
        str(prices),
        "--suite",
        str(suite_dir),
    ]
    assert main(args) == 2
    assert "--base-url is required" in capsys.readouterr().err


def test_default_suite_store_embeds_nothing(tmp_path: Path) -> None:
    suite = load_suite("default")
    small = suite.select(suite.ids[:40])

    class Refuse:
        name = suite.vector_embedder

        def embed(self, texts: object) -> object:
            raise AssertionError("embedded a suite question")

    store = AnchorStore(embedder=small.embedder(Refuse()))
    report = seed_store(store, small, max_anchors=15)
    assert (report.anchors_new, report.anchors_updated, report.batches) == (40, 0, 3)
    assert report.outcomes == len(small.outcomes()) and store.count() == 40
