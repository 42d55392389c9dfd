"""The bring-your-own-model demo (``scope-router demo``, :mod:`scope_shared.demo`) on a tiny suite and dataset.

The replay server answers through the real ``openai`` client over a mock HTTP transport that calls
:meth:`ReplayServer.respond` (no socket); tests/integration/test_demo.py runs it over real HTTP on real data.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest

from scope_shared import demo
from scope_shared.cli import main
from scope_shared.embeddings import HashingEmbedder
from scope_shared.errors import ConfigError
from scope_shared.evaluation import evaluate
from scope_shared.profile.replay_server import Recorded, ReplayServer
from scope_shared.store import AnchorStore
from scope_shared.suites import AnchorSuite, ReferenceOutcome, SuiteQuestion, load_suite
from tests.unit.conftest import sample_outcomes

MODELS = {"strong": 0.85, "mid": 0.65, "weak": 0.35, "src": 0.7}  # accuracy on an average question
PRICES = {"strong": (10.0, 30.0), "mid": (1.0, 2.0), "weak": (0.1, 0.1), "src": (0.5, 0.5)}
WORDS = "river mountain python atom cell winter summer physics planet music garden ocean".split()
TASKS = ("pick", "word")


@dataclass
class World:
    suite_dir: Path
    data: Path  # the dataset folder, named as its suite source: "tiny"
    truth: dict[tuple[str, str], float]  # (dataset query id, model) -> recorded grade
    test_tasks: dict[str, str]  # test query id -> task


def _text(rng: random.Random, i: int, task: str) -> str:
    return f"{task} question {i}: " + " ".join(rng.choices(WORDS, k=8)) + "? (A) one (B) two (C) three"


def _write(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with gzip.open(path, "wt", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A suite of 60 "tiny" questions (two tasks) and 10 of another source, and the "tiny" dataset: its anchors
    (the suite's questions), responses (src's answers: right when graded right), and a test split of 30
    queries of the suite's tasks and 8 of a task the suite lacks."""
    tmp = tmp_path_factory.mktemp("demo")
    rng = random.Random(7)
    truth: dict[tuple[str, str], float] = {}
    questions, anchor_rows, responses = [], [], []
    for i in range(70):
        source, task = ("tiny", TASKS[i % 2]) if i < 60 else ("other", "elsewhere")
        text, reference, hard = _text(rng, i, task), rng.choice("ABC"), rng.random() - 0.5
        outcomes = {}
        for m, acc in MODELS.items():
            correct = float(rng.random() < acc - 0.3 * hard)
            outcomes[m] = ReferenceOutcome(correct=correct, output_tokens=5 + i % 7)
            truth[(f"a{i}", m)] = correct
            if source == "tiny":
                anchor_rows.append([f"a{i}", text, m, correct, 5 + i % 7, 40, task])
        if source == "tiny":
            wrong = next(x for x in "ABC" if x != reference)
            responses.append([f"a{i}", "src", f"The answer is ({reference if outcomes['src'].correct else wrong})"])
        questions.append(
            SuiteQuestion(
                query_id=f"{source}/a{i}", query=text, task=task, reference=reference, grader="choice",
                source=source, input_tokens=40, outcomes=outcomes,
            )
        )  # fmt: skip
    suite_dir = tmp / "suite"
    AnchorSuite(questions=questions, name="tiny-suite").save(suite_dir)
    data = tmp / "data" / "tiny"
    data.mkdir(parents=True)
    header = ["query_id", "query", "model", "correct", "output_tokens", "input_tokens", "task"]
    _write(data / "anchors.csv.gz", header, anchor_rows)
    _write(data / "responses.csv.gz", ["query_id", "model", "response"], responses)
    test_rows, test_tasks = [], {}
    for i in range(38):
        task = TASKS[i % 2] if i < 30 else "code"
        test_tasks[f"t{i}"] = task
        text = _text(rng, 100 + i, task)
        for m, acc in MODELS.items():
            correct = float(rng.random() < acc)
            truth[(f"t{i}", m)] = correct
            test_rows.append([f"t{i}", text, m, correct, 6, 40, task])
    _write(data / "test.csv.gz", header, test_rows)
    (data / "prices.csv").write_text(
        "model,input_per_mtok,output_per_mtok\n" + "".join(f"{m},{a},{b}\n" for m, (a, b) in PRICES.items())
    )
    return World(suite_dir, data, truth, test_tasks)


def mock_connect(server: ReplayServer) -> openai.OpenAI:
    """The real openai client, whose HTTP requests the server's :meth:`respond` answers in process."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        reply = server.respond(request.method, request.url.path, request.content, request.headers.get("authorization"))
        return httpx2.Response(reply.status, content=reply.body, headers={"content-type": reply.content_type})

    client = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(api_key="unused", base_url="http://replay.test/v1", max_retries=0, http_client=client)


def journey(world: World, **kwargs: Any) -> demo.Journey:
    options: dict[str, Any] = {"model": "src", "inner": HashingEmbedder(), "n": 20, "connect": mock_connect}
    return demo.run_journey(data=demo.DemoData.load(world.data), suite=load_suite(str(world.suite_dir)), **options | kwargs)


def test_the_journey_profiles_the_left_out_model_under_its_new_name_and_routes_it(world: World) -> None:
    trip = journey(world)
    assert trip.name == "new/src"
    stats = trip.store.model_stats()
    assert "src" not in stats  # left out of the store
    assert stats["new/src"].n == 20 and set(stats) == {"strong", "mid", "weak", "new/src"}
    assert trip.store.count() == 70  # every suite question, the other source's too

    prof = trip.profile
    assert len(prof.recorded) == 20 and trip.answered == 20 and prof.select == "informative"
    assert all(qid.startswith("tiny/") for qid in prof.chosen)  # only questions the server has answers to
    for e in prof.recorded:  # graded from the replayed response: src's recorded grade
        assert e.correct == world.truth[(e.query_id.split("/")[1], "src")]
        assert (e.input_tokens, e.usage) == (40, "reported")

    rt = trip.report["routing"]
    assert sorted(rt["pool"]) == ["mid", "new/src", "strong", "weak"]
    routed = [q for q, task in world.test_tasks.items() if task in TASKS]
    assert rt["queries"] == len(routed) == 30 and trip.tasks == ["pick", "word"] and trip.left_out == {"code": 8}
    expected = np.mean([world.truth[(q, "src")] for q in routed])  # src's recorded test outcomes, renamed
    assert rt["singles"]["new/src"]["accuracy"] == pytest.approx(expected)
    assert "new/src" in trip.report["estimation"]["auroc_per_model"]
    assert set(trip.seconds) == {"store", "profile", "route", "total"}


def test_random_selection_and_size_are_passed_to_profiling(world: World) -> None:
    trip = journey(world, n=8, select="random", seed=3)
    assert trip.profile.select == "random" and len(trip.profile.recorded) == 8
    assert trip.store.model_stats()["new/src"].n == 8


def test_the_selection_never_sees_the_left_out_model(world: World) -> None:
    suite = load_suite(str(world.suite_dir))
    held = demo.without_models(suite, ["src"])
    assert "src" not in held.models and held.models == ["mid", "strong", "weak"]
    assert len(held) == len(suite) and held.vectors is None and held.embed_tail_chars == suite.embed_tail_chars
    assert held["tiny/a3"].outcomes == {m: o for m, o in suite["tiny/a3"].outcomes.items() if m != "src"}
    card = demo.DemoData.load(world.data).cards[0]
    store = AnchorStore(embedder=HashingEmbedder())
    with pytest.raises(ConfigError, match="holds outcomes of 'src'"):
        demo.profile_replayed(
            store, suite=suite, data=demo.DemoData.load(world.data), model="src", card=card, n=5, connect=mock_connect
        )


def test_a_model_without_every_routed_test_outcome_is_refused_before_any_work(world: World, tmp_path: Path) -> None:
    data = demo.DemoData.load(world.data)
    short = demo.DemoData(data.folder, [o for o in data.test if not (o.model == "src" and o.query_id == "t0")], data.cards)
    with pytest.raises(ConfigError, match="outcomes on 29 of the 30 test queries"):
        demo.run_journey(data=short, suite=load_suite(str(world.suite_dir)), model="src", inner=HashingEmbedder())
    with pytest.raises(ConfigError, match="not in .*prices.csv"):
        journey(world, model="nobody")


def test_cli_demo_prints_the_journey_and_writes_its_report(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = demo.run_journey
    monkeypatch.setattr(demo, "run_journey", lambda **kw: real(**kw, connect=mock_connect))
    out = tmp_path / "out"
    args = ["demo", "--data", str(world.data), "--suite", str(world.suite_dir), "--embedder", "hashing"]
    assert main([*args, "--new-model", "src", "--n", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1. store: 70 anchors of suite 'tiny-suite' with 3 reference models' outcomes (src's left out)" in printed
    assert "new/src on 12 anchors of suite 'tiny-suite' (informative, seed 0): 0 already recorded, 12 recorded now" in printed
    assert "3. route: 30 held-out test queries of pick, word (the tasks the suite covers; left out: code (8 queries))" in printed
    for label in ("scope-router thrifty (value $0.001)", "scope-router balanced (value $0.01)", "scope-router quality (accuracy only)", "oracle (cheapest correct model)", "new/src (new)", "singles' hull aiq"):
        assert label in printed, label
    saved = json.loads((out / "demo_report.json").read_text())
    assert saved["profile"]["recorded"] == 12 and saved["name"] == "new/src"
    auroc = saved["evaluation"]["estimation"]["auroc_per_model"]["new/src"]
    assert f"new model new/src: auroc_within_model={auroc:.3f} from its 12 profiled anchors" in printed
    share = np.mean([pt["model_share"].get("new/src", 0.0) for pt in saved["evaluation"]["routing"]["curve"]])
    assert f"share of the router's picks {share:.3f}" in printed
    assert (out / "demo_curve.png").stat().st_size > 10_000
    assert "wall time:" in printed.splitlines()[-1]


def test_cli_demo_errors_are_one_line(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["demo", "--suite", str(world.suite_dir), "--embedder", "hashing", "--out", str(tmp_path)]
    assert main([*base, "--data", str(world.data)]) == 2  # no default new model for "tiny"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no default new model for 'tiny': pass --new-model" in err
    assert main([*base, "--data", str(world.data), "--new-model", "nobody"]) == 2
    assert "'nobody' is not in" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "test.csv.gz").write_bytes((world.data / "test.csv.gz").read_bytes())
    assert main([*base, "--data", str(bare), "--new-model", "src"]) == 2
    err = capsys.readouterr().err
    assert "demo data not found" in err and "responses.csv.gz" in err and not (tmp_path / "demo_report.json").exists()


def test_evaluate_routes_over_an_existing_store(cards: Any) -> None:
    rows = sample_outcomes()
    store = AnchorStore(embedder=HashingEmbedder())
    store.add(rows)
    before = store.count()
    report = evaluate(None, rows, cards, store=store)
    assert store.count() == before  # nothing loaded
    assert sorted(report["routing"]["pool"]) == sorted({o.model for o in rows})
    with pytest.raises(ConfigError, match="pass store="):
        evaluate(None, rows, cards)
    with pytest.raises(ConfigError, match="no holdout_models"):
        evaluate(None, rows, cards, store=store, holdout_models=["big"])


def _recorded() -> dict[str, Recorded]:
    return {"What is 2+2?": Recorded("s/q1", "(B)", 12, 3, 1.0)}


def _chat(prompt: str, model: str = "served") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]}).encode()


def test_replay_server_answers_without_a_socket() -> None:
    server = ReplayServer(_recorded(), served_name="served", api_key="k")
    ok = server.respond("POST", "/v1/chat/completions", _chat("What is 2+2?"), "Bearer k")
    body = json.loads(ok.body)
    assert ok.status == 200 and body["choices"][0]["message"]["content"] == "(B)"
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert server.answered == {"s/q1": 1} and server._port is None  # nothing bound
    listed = server.respond("GET", "/v1/models/", authorization="Bearer k")
    assert [m["id"] for m in json.loads(listed.body)["data"]] == ["served"]
    statuses = [
        server.respond("POST", "/v1/chat/completions", _chat("What is 2+2?"), "Bearer wrong").status,
        server.respond("POST", "/v1/chat/completions", _chat("What is 2+2?", "other"), "Bearer k").status,
        server.respond("POST", "/v1/chat/completions", _chat("unknown"), "Bearer k").status,
        server.respond("GET", "/v1/nowhere", authorization="Bearer k").status,
    ]
    assert statuses == [401, 404, 400, 404] and server.refused == 4 and server.answered == {"s/q1": 1}
