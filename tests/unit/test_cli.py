from __future__ import annotations

import json
from pathlib import Path

import pytest

from scope_shared.cli import main
from tests.unit.conftest import index_settings, sample_outcomes


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rows = sample_outcomes()
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text("\n".join(json.dumps(r.model_dump()) for r in rows))
    prices = tmp_path / "prices.csv"
    prices.write_text("model,input_per_mtok,output_per_mtok\nbig,10,30\nsmall,0.2,0.2\n")
    return {"anchors": anchors, "prices": prices, "store": tmp_path / "store"}


def test_ingest_then_route(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--store", str(files["store"]), "--embedder", "hashing"]
    assert main(["ingest", *base, "-q", str(files["anchors"])]) == 0
    out = capsys.readouterr().out
    assert "20 new anchors" in out and "learned estimator fitted on" in out
    from scope_shared import AnchorStore, HashingEmbedder
    from scope_shared.estimators.learned import LearnedEstimator

    saved = AnchorStore(path=files["store"], embedder=HashingEmbedder()).load_state(LearnedEstimator(k=10).state_key)
    assert saved is not None and json.loads(saved)["anchors"] == 20  # routers load it instead of refitting
    assert main(["route", *base, "--prices", str(files["prices"]), "write a sonnet poem about the grey moon"]) == 0
    out = capsys.readouterr().out
    assert "chosen: big" in out and "anchors behind big" in out and "sonnet" in out
    assert main(["route", *base, "--prices", str(files["prices"]), "--json", "--value", "0", "what is 5 plus 6 in arithmetic"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["model"] == "small" and set(decision["estimates"]) == {"big", "small"}


def test_errors_are_one_line(files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("query,model,correct\nhello,m,2\n")
    assert main(["ingest", "--store", str(files["store"]), "--embedder", "hashing", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scope-router: error:") and "bad.csv:2" in err
    assert main(["route", "--store", str(tmp_path / "empty"), "--embedder", "hashing", "--prices", str(files["prices"]), "hi"]) == 2
    assert "no anchor store at" in capsys.readouterr().err and not (tmp_path / "empty").exists()  # not created
    assert main(["evaluate", "--anchors", str(files["anchors"]), "--test", str(files["anchors"]), "--prices", str(files["prices"]), "--embedder", "hashing", "--estimator", "scope"]) == 2
    assert "--vllm-url" in capsys.readouterr().err
    assert main(["demo", "--data", str(tmp_path / "nowhere")]) == 2
    assert "demo data not found" in capsys.readouterr().err


def test_chroma_token_comes_from_env(files: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    code = main(["ingest", "--chroma-host", "127.0.0.1", "--chroma-token-env", "NO_SUCH_TOKEN_VAR", "--embedder", "hashing", str(files["anchors"])])
    assert code == 2 and "NO_SUCH_TOKEN_VAR (--chroma-token-env) is not set" in capsys.readouterr().err


def test_evaluate_writes_json_and_plot(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, plot = tmp_path / "r.json", tmp_path / "p.png"
    code = main(["evaluate", "--anchors", str(files["anchors"]), "--test", str(files["anchors"]), "--prices", str(files["prices"]), "--embedder", "hashing", "--json", str(out), "--plot", str(plot)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["routing"]["best_single"]["model"] == "big"
    assert plot.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "auroc_within_model" in printed
    lift = report["routing"]["lift_over_singles"]
    assert lift == report["routing"]["aiq"] - report["routing"]["hull_aiq"]
    assert f"= {lift:+.3f}" in printed and "singles' hull aiq" in printed


def test_ef_search_is_stored_with_the_index(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--store", str(files["store"]), "--embedder", "hashing"]
    assert main(["ingest", *base, "--ef-search", "250", "-q", str(files["anchors"])]) == 0
    assert index_settings(files["store"])["ef_search"] == 250
    assert main(["route", *base, "--ef-search", "40", "--prices", str(files["prices"]), "a sonnet about the moon"]) == 0
    assert "chosen:" in capsys.readouterr().out
    assert index_settings(files["store"])["ef_search"] == 40


def test_file_system_mistakes_are_one_line(files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    for store in (a_file, a_file / "store"):
        assert main(["ingest", "--store", str(store), "--embedder", "hashing", "-q", str(files["anchors"])]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a file; the store is a directory" in err
    evaluate = ["evaluate", "--anchors", str(files["anchors"]), "--test", str(files["anchors"]), "--prices", str(files["prices"])]
    assert main([*evaluate, "--embedder", "hashing", "--estimator", "anchors", "--json", str(a_file / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scope-router: error:")


def test_ef_search_zero_is_refused(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--store", str(files["store"]), "--embedder", "hashing", "--ef-search", "0"]
    assert main(["ingest", *base, "-q", str(files["anchors"])]) == 2
    assert "ef_search must be an integer >= 1" in capsys.readouterr().err


def test_a_read_only_store_is_a_one_line_error(files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The store's directory on a read-only mount (root ignores file modes, so a read-only bind mount is used)."""
    import subprocess

    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    assert main(["ingest", "--store", str(src / "store"), "--embedder", "hashing", "--estimator", "anchors", "-q", str(files["anchors"])]) == 0
    if subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("no bind mounts here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("no read-only remount here")
        capsys.readouterr()
        for argv in (
            ["ingest", "--store", str(ro / "store"), "--embedder", "hashing", "-q", str(files["anchors"])],
            ["route", "--store", str(ro / "store"), "--embedder", "hashing", "--prices", str(files["prices"]), "hi"],
        ):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "read-only here" in err
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_evaluation_lines_say_never_when_the_router_never_matches_the_best_single() -> None:
    from scope_shared.commands.evaluate import evaluation_lines

    routing = {
        "pool": ["a", "b"], "best_single": {"model": "a", "accuracy": 0.9, "cost": 0.001},
        "router_acc_at_best_single_cost": 0.88, "router_cost_to_match_best_single": None,
        "router_max_accuracy": 0.88, "aiq": 0.85, "hull_aiq": 0.84, "lift_over_singles": 0.01,
    }  # fmt: skip
    estimation = {k: 0.5 for k in ("auroc_within_model", "auroc_pooled", "brier", "ece", "length_log_mae")}
    report = {"estimator": "learned", "embedder": "e", "anchors": 1, "test_queries": 1, "estimation": estimation,
              "routing": routing}  # fmt: skip
    text = "\n".join(evaluation_lines(report))
    assert "cost to match it=never;" in text
    routing["router_cost_to_match_best_single"] = 0.5
    assert "cost to match it=0.500x;" in "\n".join(evaluation_lines(report))
