"""Anchor suites: building, saving and loading, users' CSV/JSONL questions, outcomes, subsets, grading, and the
embedder that serves precomputed vectors; plus the packaged default suite."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import scope_shared.suites as suites
from scope_shared.embeddings import HashingEmbedder, Matrix
from scope_shared.errors import ConfigError, DataError
from scope_shared.store import AnchorStore
from scope_shared.suites import (
    AnchorSuite,
    CallableGrader,
    ReferenceOutcome,
    SuiteQuestion,
    load_suite,
    suite_from_csv,
)

MINILM = "all-MiniLM-L6-v2/384"


class CountingEmbedder:
    """A real hashing embedder that counts what it is asked to embed."""

    def __init__(self, *, dim: int = 16, name: str | None = None) -> None:
        self._inner = HashingEmbedder(dim=dim)
        self._name = name or self._inner.name
        self.calls: list[list[str]] = []

    @property
    def name(self) -> str:
        return self._name

    def embed(self, texts: Sequence[str]) -> Matrix:
        self.calls.append(list(texts))
        return self._inner.embed(texts)


class RefusingEmbedder:
    """Named like MiniLM; fails if asked to embed anything."""

    name = MINILM

    def embed(self, texts: Sequence[str]) -> Matrix:
        raise AssertionError(f"asked to embed {len(texts)} text(s)")


def question(i: int, **kw: object) -> SuiteQuestion:
    fields: dict[str, object] = {
        "query_id": f"q{i}",
        "query": f"Question {i}: how many apples are in basket {i}? " + "filler " * (i * 50),
        "task": "math" if i % 2 else "trivia",
        "reference": str(i) if i % 2 else "B",
        "grader": "number" if i % 2 else "choice",
        "source": "unit",
        "instruction": "Answer with a number." if i % 2 else "",
        "input_tokens": 10 + i,
        "outcomes": {
            "big": ReferenceOutcome(correct=1.0, output_tokens=100 + i),
            "small": ReferenceOutcome(correct=float(i % 3 == 0), output_tokens=None),
        },
    }
    fields.update(kw)
    return SuiteQuestion(**fields)  # type: ignore[arg-type]


@pytest.fixture
def suite() -> AnchorSuite:
    return AnchorSuite(questions=[question(i) for i in range(6)], name="unit", metadata={"licence": "CC0"})


# -- the type -----------------------------------------------------------------------------------------------


def test_public_api_is_pinned() -> None:
    assert set(suites.__all__) == {
        "GRADERS",
        "AnchorSuite",
        "CallableGrader",
        "ChoiceGrader",
        "DEFAULT_SUITE",
        "ExactGrader",
        "Grader",
        "JudgeGrader",
        "NumberGrader",
        "ReferenceOutcome",
        "SuiteEmbedder",
        "SuiteQuestion",
        "grader_named",
        "load_suite",
        "seed_store",
        "store_from_suite",
        "suite_from_csv",
    }
    for name in suites.__all__:
        assert hasattr(suites, name), name


def test_suite_reads_questions_tasks_and_models(suite: AnchorSuite) -> None:
    assert len(suite) == 6 and suite.ids == [f"q{i}" for i in range(6)]
    assert suite.tasks == {"trivia": 3, "math": 3}
    assert suite.models == ["big", "small"]
    assert "q3" in suite and "nope" not in suite
    assert suite["q3"].reference == "3"
    assert suite["q1"].prompt == suite["q1"].query + "\n\nAnswer with a number."
    assert suite["q2"].prompt == suite["q2"].query  # no instruction
    with pytest.raises(ConfigError, match="no question 'nope'"):
        suite["nope"]


def test_outcomes_are_store_ready(suite: AnchorSuite) -> None:
    outcomes = suite.outcomes()
    assert len(outcomes) == 12
    first = outcomes[0]
    assert (first.query_id, first.model, first.correct, first.output_tokens, first.input_tokens, first.task) == (
        "q0",
        "big",
        1.0,
        100,
        10,
        "trivia",
    )
    small = suite.outcomes(models=["small"])
    assert [o.correct for o in small] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert all(o.output_tokens is None for o in small)
    with pytest.raises(ConfigError, match=r"no outcomes for model\(s\) \['gpt'\]"):
        suite.outcomes(models=["gpt"])


def test_grade_uses_each_questions_grader_and_reference(suite: AnchorSuite) -> None:
    assert suite.grade("q3", "so there are \\boxed{3} apples") == 1.0
    assert suite.grade("q3", "\\boxed{4}") == 0.0
    assert suite.grade("q2", "B) the second") == 1.0
    assert suite.grade("q2", "(A)") == 0.0
    assert suite.grader("q2").kind == "choice"


def test_invalid_questions_are_rejected() -> None:
    with pytest.raises(DataError, match="duplicate query_id 'q1'"):
        AnchorSuite(questions=[question(1), question(1)])
    with pytest.raises(DataError, match=r"question 'q2': unknown grader kind 'f1'; known: choice, exact, number"):
        AnchorSuite(questions=[question(2, grader="f1")])
    with pytest.raises(DataError, match="cannot be graded by the 'choice' grader"):
        AnchorSuite(questions=[question(2, reference="Z")])
    with pytest.raises(ConfigError, match="name of the embedder"):
        AnchorSuite(questions=[question(1)], vectors=np.ones((1, 4)))
    with pytest.raises(DataError, match="shape"):
        AnchorSuite(questions=[question(1)], vectors=np.ones((2, 4)), embedder="e")


def test_select_and_subset_keep_vectors_aligned(suite: AnchorSuite) -> None:
    with_vectors = suite.with_vectors(HashingEmbedder(dim=16))
    picked = with_vectors.select(["q4", "q1", "q4"])
    assert picked.ids == ["q4", "q1"]
    assert picked.vectors is not None and with_vectors.vectors is not None
    assert np.array_equal(picked.vectors[0], with_vectors.vectors[4])
    assert np.array_equal(picked.vectors[1], with_vectors.vectors[1])
    assert with_vectors.subset(tasks=["math"]).ids == ["q1", "q3", "q5"]
    assert with_vectors.subset(tasks=["math"], sources=["unit"]).tasks == {"math": 3}
    with pytest.raises(ConfigError, match=r"not in suite 'unit', e.g. \['zz'\]"):
        suite.select(["q1", "zz"])
    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['poetry'\]"):
        suite.subset(tasks=["poetry"])


def test_vectors_are_l2_normalised_and_read_only() -> None:
    raw = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    s = AnchorSuite(questions=[question(1), question(2)], vectors=raw, embedder="e/4")
    assert s.vectors is not None
    assert np.allclose(np.linalg.norm(s.vectors, axis=1), 1.0)
    assert np.allclose(s.vectors[0], raw[0] / np.linalg.norm(raw[0]))
    with pytest.raises(ValueError, match="read-only"):
        s.vectors[0, 0] = 0.0


# -- the embedder -------------------------------------------------------------------------------------------


def test_embedder_serves_suite_texts_without_the_inner_model(suite: AnchorSuite) -> None:
    built = suite.with_vectors(HashingEmbedder(dim=16))
    inner = CountingEmbedder(dim=16)
    emb = built.embedder(inner)
    texts = [q.query[-1000:] for q in built]  # what a store with embed_tail_chars=1000 passes
    got = emb.embed(texts)
    assert inner.calls == []
    assert emb.stats == {"hits": 6, "misses": 0}
    fresh = HashingEmbedder(dim=16).embed(texts)
    cosines = np.sum(got * fresh, axis=1)
    assert np.all(cosines > 0.999)  # float32 here; float16 on disk is checked against MiniLM in integration


def test_embedder_falls_back_to_inner_for_other_texts_and_reports_its_name(suite: AnchorSuite) -> None:
    built = suite.with_vectors(HashingEmbedder(dim=16))
    inner = CountingEmbedder(dim=16)
    emb = built.embedder(inner)
    assert emb.name == inner.name == "hashing-bow/16"
    long_query = built["q5"].query
    assert len(long_query) > 1000
    got = emb.embed(["a new question about pears", built["q0"].query[-1000:], long_query])
    assert inner.calls == [["a new question about pears", long_query]]  # the untransformed long text misses
    assert np.allclose(got[0], HashingEmbedder(dim=16).embed(["a new question about pears"])[0])
    assert emb.stats == {"hits": 1, "misses": 2}
    assert emb.embed([]).shape == (0, 16)


def test_embedder_requires_vectors_from_the_same_embedder(suite: AnchorSuite) -> None:
    with pytest.raises(ConfigError, match="has no precomputed vectors"):
        suite.embedder(CountingEmbedder())
    built = suite.with_vectors(HashingEmbedder(dim=16))
    with pytest.raises(ConfigError, match="holds vectors of 'hashing-bow/16', not of 'hashing-bow/32'"):
        built.embedder(HashingEmbedder(dim=32))


def test_a_store_built_with_the_suite_embedder_embeds_nothing(suite: AnchorSuite) -> None:
    built = suite.with_vectors(HashingEmbedder(dim=16))
    inner = CountingEmbedder(dim=16)
    store = AnchorStore(embedder=built.embedder(inner))
    report = store.add(built.outcomes())
    assert (report.outcomes, report.anchors_new) == (12, 6)
    assert inner.calls == []
    # Same collection identity as a store built with the inner embedder itself.
    assert store._embedder_id == AnchorStore(embedder=HashingEmbedder(dim=16))._embedder_id


# -- saving and loading -------------------------------------------------------------------------------------


def test_save_then_load_round_trips_and_is_byte_identical(suite: AnchorSuite, tmp_path: Path) -> None:
    built = suite.with_vectors(HashingEmbedder(dim=16))
    built.save(tmp_path / "a", notice="Questions: CC0.\n")
    loaded = load_suite(tmp_path / "a")
    assert loaded.ids == built.ids and loaded.name == "unit"
    assert loaded.questions == built.questions
    assert loaded.metadata == {"licence": "CC0"}
    assert loaded.vector_embedder == "hashing-bow/16" and loaded.embed_tail_chars == 1000
    assert loaded.vectors is not None and built.vectors is not None
    cosines = np.sum(loaded.vectors * built.vectors, axis=1)
    assert np.all(cosines > 0.9999)  # float16 on disk
    loaded.save(tmp_path / "b", notice="Questions: CC0.\n")
    for name in ("suite.json", "questions.jsonl.gz", "vectors.npy", "NOTICE"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert load_suite(tmp_path / "a" / "suite.json").ids == built.ids


def test_save_writes_instructions_per_task(suite: AnchorSuite, tmp_path: Path) -> None:
    suite.save(tmp_path)
    manifest = json.loads((tmp_path / "suite.json").read_text())
    assert manifest["tasks"]["math"] == {
        "grader": "number",
        "source": "unit",
        "instruction": "Answer with a number.",
        "questions": 3,
    }
    assert manifest["vectors"] is None and not (tmp_path / "vectors.npy").exists()
    clash = AnchorSuite(questions=[question(1), question(3, instruction="other")])
    with pytest.raises(DataError, match="task 'math' mixes"):
        clash.save(tmp_path / "clash")


def test_load_reports_damaged_and_missing_files(suite: AnchorSuite, tmp_path: Path) -> None:
    suite.with_vectors(HashingEmbedder(dim=16)).save(tmp_path)
    data = (tmp_path / "vectors.npy").read_bytes()
    (tmp_path / "vectors.npy").write_bytes(data[:-8])
    with pytest.raises(DataError, match="vectors.npy does not match the manifest's checksum"):
        load_suite(tmp_path)
    (tmp_path / "vectors.npy").unlink()
    with pytest.raises(DataError, match="vectors.npy is missing"):
        load_suite(tmp_path)
    with pytest.raises(DataError, match="no suite.json; pass 'default' for the packaged suite"):
        load_suite(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="absent.csv: no such file"):
        load_suite(tmp_path / "absent.csv")


# -- users' own questions -----------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_suite_from_csv_reads_questions_with_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mine.csv",
        'query,reference,grader,task\n"What is 2+2?",4,number,arith\n"Pick one:\nA) x\nB) y",B,choice,\n',
    )
    s = suite_from_csv(path)
    assert s.name == "mine" and len(s) == 2
    first, second = s.questions
    assert (first.task, first.grader, first.reference) == ("arith", "number", "4")
    assert second.task == "custom" and second.query == "Pick one:\nA) x\nB) y"
    assert first.query_id.startswith("q-") and first.query_id != second.query_id
    assert s.outcomes() == [] and s.grade(first.query_id, "It is 4.") == 1.0
    assert suite_from_csv(path).ids == s.ids  # ids are stable hashes of the text


def test_suite_from_jsonl_and_gzip_and_load_suite_delegates(tmp_path: Path) -> None:
    lines = [
        {"query_id": "a", "query": "2+3?", "reference": "5", "grader": "number"},
        {"query_id": "b", "query": "f('x')", "reference": "'x'", "grader": "exact", "task": "crux"},
    ]
    body = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    path = tmp_path / "mine.jsonl.gz"
    path.write_bytes(gzip.compress(body.encode()))
    s = load_suite(path)
    assert s.ids == ["a", "b"] and s["b"].task == "crux"
    assert s.grade("b", '{"answer": "x"}') == 1.0


def test_suite_from_csv_accepts_custom_graders(tmp_path: Path) -> None:
    path = write(tmp_path / "q.csv", "query,reference,grader\nCapital of France?,Paris,contains\n")
    with pytest.raises(DataError, match=r"q.csv:2: unknown grader kind 'contains'; known: choice, exact, number"):
        suite_from_csv(path)
    s = suite_from_csv(path, graders={"contains": lambda response, reference: reference in response})
    qid = s.ids[0]
    assert s.grade(qid, "It is Paris.") == 1.0 and s.grade(qid, "Lyon") == 0.0
    assert isinstance(s.grader(qid), CallableGrader)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("query,grader\nx,number\n", r"mine.csv: missing column\(s\) \['reference'\]; found \['query', 'grader'\]"),
        ("", r"mine.csv: no questions \(the file is empty\)"),
        ("query,reference,grader\n", r"mine.csv: no questions \(the file is empty\)"),
        ("query,reference,grader\nx,1,f1\n", r"mine.csv:2: unknown grader kind 'f1'; known: choice, exact, number"),
        ("query,reference,grader\n ,1,number\n", r"mine.csv:2: the query is empty"),
        ("query,reference,grader\nx, ,number\n", r"mine.csv:2: the reference is empty"),
        ("query,reference,grader\nx,Z,choice\n", r"mine.csv:2: reference 'Z' cannot be graded by the 'choice' grader"),
        ("query,reference,grader\nx,1,number\ny,2,number\nx,3,number\n", r"mine.csv:4: the same query as line 2"),
        ("query_id,query,reference,grader\na,x,1,number\na,y,1,number\n", r"mine.csv:3: the same query_id as line 2"),
    ],
)
def test_suite_from_csv_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "mine.csv", text)
    with pytest.raises(DataError, match=message) as info:
        suite_from_csv(path)
    assert "\n" not in str(info.value)


def test_suite_from_jsonl_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"q.jsonl:2: not valid JSON"):
        suite_from_csv(write(tmp_path / "q.jsonl", '{"query": "x", "reference": "1", "grader": "number"}\n{oops\n'))
    with pytest.raises(DataError, match=r"q.jsonl:1: missing field\(s\) \['grader'\]"):
        suite_from_csv(write(tmp_path / "q.jsonl", '{"query": "x", "reference": "1"}\n'))
    with pytest.raises(DataError, match="no such file"):
        suite_from_csv(tmp_path / "absent.csv")


# -- the packaged default suite -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default() -> AnchorSuite:
    started = time.perf_counter()
    loaded = load_suite("default")
    print(f"\nload_suite('default'): {len(loaded)} questions in {time.perf_counter() - started:.3f} s")
    return loaded


def test_default_suite_holds_graded_questions_with_outcomes_and_minilm_vectors(default: AnchorSuite) -> None:
    assert 1000 <= len(default) <= 5000
    assert default.vector_embedder == MINILM and default.embed_tail_chars == 1000
    assert default.vectors is not None and default.vectors.shape == (len(default), 384)
    assert {q.grader for q in default} == {"choice", "number", "exact"}
    assert {q.source for q in default} == {"routerbench-zs", "zeroeval", "llmrouter"}
    assert all(q.outcomes for q in default)
    assert len(default.models) >= 50
    assert "gpt-4-1106-preview" in default.models and "gpt-4o-2024-08-06" in default.models
    sources = default.metadata["sources"]
    assert {"MIT", "Apache-2.0"} <= {s["licence"] for s in sources.values()}


def test_default_suite_mix_is_as_documented(default: AnchorSuite) -> None:
    # scope_shared/suites/README.md and scripts/build_suite.py state this mix; a rebuild that changes it must
    # update them.
    assert default.tasks == {
        "arc-challenge": 400,
        "winogrande": 400,
        "gsm": 400,
        "crux": 400,
        "gsm8k": 397,
        "math": 260,
        "agentverse-mgsm": 157,
    }
    assert len(default.outcomes()) == 53_928
    assert default.metadata["built_from"] == "anchors.csv.gz"
    assert all(q.query_id.startswith(f"{q.source}/") for q in default)
    crux = next(q for q in default if q.task == "crux")
    assert '"answer"' in crux.instruction and crux.prompt.endswith(crux.instruction)
    assert default.grade(crux.query_id, '{"reasoning": "r", "answer": ' + json.dumps(crux.reference) + "}") == 1.0


def test_default_suite_store_needs_no_embedding(default: AnchorSuite) -> None:
    sample = default.select(default.ids[::40])
    store = AnchorStore(embedder=sample.embedder(RefusingEmbedder()))
    report = store.add(sample.outcomes())
    assert report.anchors_new == len(sample)
