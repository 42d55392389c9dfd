"""``scope-router profile`` against the real vLLM OpenAI-compatible server (tiny random-weight model, CPU).

Random weights answer garbage, so this checks the mechanics end to end: one chat request per anchor reaches the
server, each answer is graded and recorded under the model's name, the usage is the server's own count (the
prompt's tokens as the server tokenizes it, the answer within --max-tokens), and the cost is counted from it.

Needs SCOPE_VLLM_PYTHON and SCOPE_TINY_MODEL (``make test`` sets them); skips without, fails under CI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from scope_shared.cli import main
from scope_shared.embeddings import MiniLMEmbedder
from scope_shared.store import AnchorStore
from scope_shared.store.records import anchor_id
from scope_shared.suites import load_suite, store_from_suite
from scope_shared.types import ModelCard
from tests.integration.vllm_server import SERVED_NAME, VLLMServer, vllm_paths

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CARD = ModelCard(name=SERVED_NAME, input_per_mtok=0.5, output_per_mtok=1.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    python, model = vllm_paths()
    srv = VLLMServer(python, model, tmp_path_factory.mktemp("vllm") / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_profile_against_vllm(server: VLLMServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = load_suite("default")
    suite = full.select([q.query_id for q in full if q.task == "arc-challenge"][:4])
    suite.save(tmp_path / "suite")
    store_from_suite(suite, path=tmp_path / "store")
    prices = tmp_path / "prices.csv"
    prices.write_text(
        f"model,input_per_mtok,output_per_mtok\n{CARD.name},{CARD.input_per_mtok},{CARD.output_per_mtok}\n"
    )
    out_json = tmp_path / "report.json"
    posts_before = server.chat_posts()
    args = ["profile", "--store", str(tmp_path / "store"), "--model", CARD.name, "--base-url", server.base_url]
    args += ["--prices", str(prices), "--suite", str(tmp_path / "suite"), "--n", "4", "--max-tokens", "8"]
    args += ["--concurrency", "2", "--json", str(out_json), "-q"]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert server.chat_posts() - posts_before == 4  # one request per anchor
    report = json.loads(out_json.read_text())
    assert report["complete"] and report["recorded"] == 4
    store = AnchorStore(path=tmp_path / "store", embedder=MiniLMEmbedder())
    records = store.get([anchor_id(q.query) for q in suite])
    for e in report["entries"]:
        q = suite[e["query_id"]]
        assert e["usage"] == "reported"
        assert e["input_tokens"] == server.prompt_tokens(q.prompt)
        assert 1 <= e["output_tokens"] <= 8
        assert e["cost"] == pytest.approx(CARD.cost(e["input_tokens"], e["output_tokens"]))
        recorded = records[anchor_id(q.query)].outcomes[CARD.name]
        assert (recorded.correct, recorded.output_tokens) == (e["correct"], e["output_tokens"])
    assert report["spent"] == pytest.approx(sum(e["cost"] for e in report["entries"])) and report["spent"] > 0
    assert main(args) == 0  # a re-run: everything is recorded, nothing is called
    capsys.readouterr()
    assert server.chat_posts() - posts_before == 4
