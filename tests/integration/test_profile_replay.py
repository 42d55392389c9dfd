"""``scope-router profile`` against a real OpenAI-compatible HTTP server replaying a real model's recorded answers.

The server (scope_shared/profile/replay_server.py) answers each suite prompt with the response the source model
really gave in ../shared/data, with its real usage counts, under a new model name. The store is seeded from the
packaged suite's questions that model answered (gsm and crux for gpt-4o-mini, arc-challenge and winogrande for
gpt-3.5-turbo). Each test profiles under its own name, so they share one store.

``python -m tests.integration.test_profile_replay`` prints the figures (wall time, per-task summary, agreement).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from scope_shared.cli import main
from scope_shared.embeddings import MiniLMEmbedder
from scope_shared.profile import choose_anchors
from scope_shared.profile.replay_server import Recorded, ReplayServer, free_port, load_recorded
from scope_shared.store import AnchorStore
from scope_shared.store.records import anchor_id
from scope_shared.suites import AnchorSuite, load_suite, store_from_suite
from scope_shared.types import ModelCard

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"zeroeval": "gpt-4o-mini-2024-07-18", "routerbench-zs": "gpt-3.5-turbo-1106"}
PRICE = (0.15, 0.60)  # USD per 1M input / output tokens, for every replayed name


@dataclass
class Setup:
    suite: AnchorSuite
    suite_dir: Path
    recorded: dict[str, Recorded]  # by prompt
    store_dir: Path
    prices: Path
    tmp: Path

    def by_id(self) -> dict[str, Recorded]:
        return {r.query_id: r for r in self.recorded.values()}

    def card(self, name: str) -> ModelCard:
        return ModelCard(name=name, input_per_mtok=PRICE[0], output_per_mtok=PRICE[1])

    def outcomes(self, name: str) -> dict[str, float]:
        """The store's outcomes of ``name``, by suite id."""
        store = AnchorStore(path=self.store_dir, embedder=MiniLMEmbedder())
        ids = {anchor_id(q.query): q.query_id for q in self.suite}
        return {ids[a]: r.outcomes[name].correct for a, r in store.get(list(ids)).items() if name in r.outcomes}

    def args(self, server: ReplayServer, name: str, *extra: str) -> list[str]:
        return [
            "profile",
            "--store",
            str(self.store_dir),
            "--model",
            name,
            "--base-url",
            server.base_url,
            "--prices",
            str(self.prices),
            "--suite",
            str(self.suite_dir),
            "-q",
            *extra,
        ]


NAMES = [f"replay-{i}" for i in range(12)]


def _setup(data_dir: Path, tmp: Path, source: str) -> Setup:
    full = load_suite("default")
    recorded = load_recorded(full, SOURCES[source], data_dir)
    suite = full.select(sorted(r.query_id for r in recorded.values()))
    suite_dir = tmp / "suite"
    suite.save(suite_dir)
    store_dir = tmp / "store"
    store_from_suite(suite, path=store_dir)
    prices = tmp / "prices.csv"
    prices.write_text("model,input_per_mtok,output_per_mtok\n" + "".join(f"{n},{PRICE[0]},{PRICE[1]}\n" for n in NAMES))
    return Setup(suite, suite_dir, recorded, store_dir, prices, tmp)


@pytest.fixture(scope="module")
def zeroeval(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return _setup(data_dir, tmp_path_factory.mktemp("zeroeval"), "zeroeval")


@pytest.fixture(scope="module")
def routerbench(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return _setup(data_dir, tmp_path_factory.mktemp("routerbench"), "routerbench-zs")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def check_recorded_equals_graded(setup: Setup, name: str, report: dict[str, object]) -> float:
    """Every entry: graded from the real response, recorded in the store as graded, with the real usage and cost.
    Returns the agreement with the source model's recorded grades."""
    by_id = setup.by_id()
    stored = setup.outcomes(name)
    entries = report["entries"]
    assert isinstance(entries, list) and entries
    agree = 0
    for e in entries:
        rec = by_id[e["query_id"]]
        assert e["correct"] == setup.suite.grade(e["query_id"], rec.response)
        assert stored[e["query_id"]] == e["correct"]
        assert (e["input_tokens"], e["output_tokens"], e["usage"]) == (rec.input_tokens, rec.output_tokens, "reported")
        assert e["cost"] == pytest.approx(setup.card(name).cost(rec.input_tokens or 0, rec.output_tokens or 0))
        agree += e["correct"] == rec.correct
    return agree / len(entries)


@pytest.mark.parametrize("which", ["zeroeval", "routerbench"])
def test_profile_records_the_graded_responses(
    which: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    setup: Setup = request.getfixturevalue(which)
    out_json = setup.tmp / "report.json"
    with ReplayServer(setup.recorded, served_name="replay-1") as srv:
        code, out, err = run_cli(setup.args(srv, "replay-1", "--n", "150", "--json", str(out_json)), capsys)
        assert code == 0, out + err
        assert sum(srv.answered.values()) == 150 and set(srv.answered.values()) == {1}
    report = json.loads(out_json.read_text())
    assert report["complete"] and report["recorded"] == 150 and report["stopped"] is None
    agreement = check_recorded_equals_graded(setup, "replay-1", report)
    print(f"\n{which}: agreement with the recorded grades {agreement:.3f} on 150 anchors\n{out}")
    assert agreement >= 0.97
    assert set(report["tasks"]) == {q.task for q in setup.suite}
    assert report["spent"] == pytest.approx(sum(t["cost"] for t in report["tasks"].values()))


def test_interrupted_run_resumes_calling_each_anchor_once(zeroeval: Setup) -> None:
    """SIGINT to a real ``scope-router profile`` process mid-run, then a re-run: every anchor answered once."""
    n = 40
    with ReplayServer(zeroeval.recorded, served_name="replay-2", delay=0.15) as srv:
        args = zeroeval.args(srv, "replay-2", "--n", str(n), "--concurrency", "4")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "scope_shared.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while sum(srv.requests.values()) < 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, out + err
        assert "interrupted" in err
        first = dict(srv.answered)
        recorded = zeroeval.outcomes("replay-2")
        assert 10 <= len(recorded) < n
        assert set(recorded) == set(first)  # every call answered before the interrupt was recorded
        assert main(args) == 0
        assert len(srv.answered) == n and set(srv.answered.values()) == {1}
    assert len(zeroeval.outcomes("replay-2")) == n


def test_429s_on_a_fifth_of_requests_still_complete(zeroeval: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    n = 60
    with ReplayServer(zeroeval.recorded, served_name="replay-3", fail_rate=0.2, seed=3) as srv:
        code, out, err = run_cli(zeroeval.args(srv, "replay-3", "--n", str(n), "--retries", "10"), capsys)
        assert code == 0, out + err
        assert srv.refused >= 5  # about 0.2 * (n + retries) 429s
        assert sum(srv.requests.values()) == n + srv.refused
        assert len(srv.answered) == n and set(srv.answered.values()) == {1}
    assert len(zeroeval.outcomes("replay-3")) == n


def test_max_cost_at_half_stops_cleanly_under_the_cap(zeroeval: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    n = 60
    by_id = zeroeval.by_id()
    card = zeroeval.card("replay-4")
    chosen = choose_anchors(zeroeval.suite, n=n, select="random", seed=0)
    full = sum(card.cost(by_id[q].input_tokens or 0, by_id[q].output_tokens or 0) for q in chosen)
    cap = full / 2
    out_json = zeroeval.tmp / "capped.json"
    with ReplayServer(zeroeval.recorded, served_name="replay-4") as srv:
        args = zeroeval.args(srv, "replay-4", "--n", str(n), "--max-cost", repr(cap), "--json", str(out_json))
        code, out, err = run_cli(args, capsys)
    assert code == 1, out + err  # stopped short of the n anchors, cleanly
    report = json.loads(out_json.read_text())
    assert "cost cap" in report["stopped"] and "stopped: the cost cap" in out
    assert 0 < report["recorded"] < n
    assert report["spent"] <= cap
    assert len(zeroeval.outcomes("replay-4")) == report["recorded"] == sum(srv.answered.values())


# -- bad input: one line, nothing written ----------------------------------------------------------------


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scope-router: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unreachable_endpoint(zeroeval: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = zeroeval.tmp / "down.json"
    args = zeroeval.args(ReplayServer({}, served_name="x"), "replay-5", "--json", str(out_json))
    args[args.index("--base-url") + 1] = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "cannot reach", "Connection refused")
    assert not out_json.exists() and not zeroeval.outcomes("replay-5")


def test_refused_api_key(zeroeval: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLAY_KEY", "wrong-key")
    with ReplayServer(zeroeval.recorded, served_name="replay-6", api_key="right-key") as srv:
        code, _, err = run_cli(zeroeval.args(srv, "replay-6", "--api-key-env", "REPLAY_KEY"), capsys)
        assert srv.answered.total() == 0
    assert_one_line_error(code, err, "HTTP 401", "API key")
    assert "wrong-key" not in err and not zeroeval.outcomes("replay-6")


def test_right_api_key_is_sent(
    zeroeval: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLAY_KEY", "right-key")
    with ReplayServer(zeroeval.recorded, served_name="replay-6", api_key="right-key") as srv:
        code, out, err = run_cli(zeroeval.args(srv, "replay-6", "--api-key-env", "REPLAY_KEY", "--n", "3"), capsys)
    assert code == 0, out + err
    assert len(zeroeval.outcomes("replay-6")) == 3


def test_empty_answers_are_graded_wrong(zeroeval: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    with ReplayServer(zeroeval.recorded, served_name="replay-7", mode="empty") as srv:
        code, out, err = run_cli(zeroeval.args(srv, "replay-7", "--n", "5"), capsys)
    assert code == 0, out + err
    assert zeroeval.outcomes("replay-7") == dict.fromkeys(srv.answered, 0.0)
    assert len(srv.answered) == 5


@pytest.mark.parametrize("mode", ["malformed", "no-choices"])
def test_malformed_response_is_retried_then_reported(
    mode: str, zeroeval: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = zeroeval.tmp / f"{mode}.json"
    with ReplayServer(zeroeval.recorded, served_name="replay-8", mode=mode) as srv:  # type: ignore[arg-type]
        args = zeroeval.args(
            srv, "replay-8", "--n", "3", "--retries", "2", "--concurrency", "1", "--json", str(out_json)
        )
        code, _, err = run_cli(args, capsys)
        assert sum(srv.requests.values()) == 3  # the first anchor, tried three times; then the run stops
    assert_one_line_error(code, err, "malformed" if mode == "malformed" else "not a chat completion", "0 outcome(s)")
    assert not out_json.exists() and not zeroeval.outcomes("replay-8")


def figures(data_dir: Path) -> None:
    """Print a full run's figures: every suite question gpt-4o-mini answered (gsm + crux), through the server."""
    import tempfile

    setup = _setup(data_dir, Path(tempfile.mkdtemp()), "zeroeval")
    out_json = setup.tmp / "report.json"
    with ReplayServer(setup.recorded, served_name="replay-0") as srv:
        t0 = time.perf_counter()
        code = main(setup.args(srv, "replay-0", "--select", "all", "--json", str(out_json)))
        wall = time.perf_counter() - t0
    report = json.loads(out_json.read_text())
    by_id = setup.by_id()
    agree = sum(e["correct"] == by_id[e["query_id"]].correct for e in report["entries"]) / len(report["entries"])
    print(f"exit {code}; {len(report['entries'])} anchors in {wall:.1f} s (command wall time)")
    print(f"agreement with the recorded grades of {SOURCES['zeroeval']}: {agree:.4f}")


if __name__ == "__main__":
    figures(Path(__file__).resolve().parents[2].parent / "shared" / "data")
