"""Anchor suites: questions with gold references and graders, and reference models' recorded outcomes on them.

A suite is what a new model is profiled on and what a fresh anchor store is seeded from:

- :meth:`AnchorSuite.outcomes` gives the reference models' recorded outcomes, ready for ``AnchorStore.add``;
- :meth:`AnchorSuite.grade` grades a new model's raw response to a suite question with that question's grader,
  and :attr:`SuiteQuestion.prompt` is the text to send (the question plus the answer-format instruction its
  reference models were given); record the outcome under :attr:`SuiteQuestion.query`, the anchor's text;
- :meth:`AnchorSuite.embedder` returns the suite's precomputed vectors for its own questions, so building a
  store from the packaged suite embeds nothing.

On disk a suite is a folder: ``suite.json`` (manifest: tasks, sources with licences, the vectors' embedder,
checksums), ``questions.jsonl.gz`` (one question and its outcomes per line) and optionally ``vectors.npy``
(float16, one row per question). ``load_suite("default")`` reads the one shipped with the package;
:func:`suite_from_csv` reads your own labelled questions from CSV or JSONL.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from scope_shared.embeddings import Embedder, as_embedder
from scope_shared.errors import ConfigError, DataError, EmbedderError
from scope_shared.suites.graders import CallableGrader, Grader, grader_named
from scope_shared.types import Outcome

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "DEFAULT_SUITE",
    "AnchorSuite",
    "ReferenceOutcome",
    "SuiteEmbedder",
    "SuiteQuestion",
    "load_suite",
    "suite_from_csv",
]

logger = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]

#: The name of the suite shipped with the package.
DEFAULT_SUITE = "default"
FORMAT = 1
MANIFEST = "suite.json"
QUESTIONS = "questions.jsonl.gz"
VECTORS = "vectors.npy"
REQUIRED_COLUMNS = ("query", "reference", "grader")
_QUESTION_FILES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")


class ReferenceOutcome(NamedTuple):
    """A reference model's recorded result on a suite question."""

    correct: float
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class SuiteQuestion:
    """One suite question.

    Attributes:
        query_id: a stable id, unique in the suite.
        query: the anchor's text: what the store embeds and what outcomes are recorded under.
        task: the benchmark or task it comes from.
        reference: the gold answer, in the form ``grader`` reads.
        grader: the grader's kind (``choice``, ``number``, ``exact`` or a custom one).
        source: the dataset it comes from (``""`` for your own).
        instruction: the answer-format instruction appended to ``query`` when asking a model (may be empty).
        input_tokens: the reference models' prompt tokens, where recorded.
        outcomes: reference model name -> its recorded outcome.
    """

    query_id: str
    query: str
    task: str
    reference: str
    grader: str
    source: str = ""
    instruction: str = ""
    input_tokens: int | None = None
    outcomes: Mapping[str, ReferenceOutcome] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The text to send a model: the query, then the answer-format instruction when there is one."""
        return f"{self.query}\n\n{self.instruction}" if self.instruction else self.query


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _transform(text: str, tail: int | None) -> str:
    return text[-tail:] if tail else text


class SuiteEmbedder:
    """Returns a suite's precomputed vectors for the texts it holds and embeds any other text with ``inner``.

    A text is looked up by a hash of it as the store passes it (the last ``embed_tail_chars`` characters of a
    question); a miss is embedded by the inner embedder, whose model loads on the first miss. :attr:`name` is
    the inner embedder's, so a store built with this embedder is the same collection as one built with the
    inner embedder itself. The precomputed vectors are float16 on disk: their cosine with freshly computed
    ones is above 0.999.
    """

    def __init__(self, *, vectors: Mapping[bytes, npt.NDArray[np.float32]], inner: Embedder, dim: int) -> None:
        self._vectors = vectors
        self._inner = inner
        self._dim = dim
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def inner(self) -> Embedder:
        """The embedder used for texts the suite does not hold."""
        return self._inner

    @property
    def stats(self) -> dict[str, int]:
        """Texts served from the suite (``hits``) and embedded by the inner embedder (``misses``)."""
        with self._lock:
            return {"hits": self._hits, "misses": self._misses}

    def embed(self, texts: Sequence[str]) -> Matrix:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        missing: list[int] = []
        for row, text in enumerate(texts):
            found = self._vectors.get(_text_key(text))
            if found is None:
                missing.append(row)
            else:
                out[row] = found
        if missing:
            fresh = np.asarray(self._inner.embed([texts[row] for row in missing]), dtype=np.float32)
            if fresh.shape != (len(missing), self._dim):
                msg = (
                    f"inner embedder {self.name!r} returned shape {fresh.shape}; expected ({len(missing)}, {self._dim})"
                )
                raise EmbedderError(msg)
            out[missing] = fresh
        with self._lock:
            self._hits += len(texts) - len(missing)
            self._misses += len(missing)
        return out


class AnchorSuite:
    """Questions with references and graders, reference models' outcomes, and optional precomputed vectors.

    Build one with :func:`load_suite` or :func:`suite_from_csv`; the constructor is for code that assembles
    questions itself (``scripts/build_suite.py``).

    Args:
        questions: the questions; ids must be unique and every grader kind known.
        name: the suite's name.
        metadata: free-form facts kept with the suite (sources, licences, how it was built).
        graders: graders for kinds beyond the built-in ``choice``, ``number`` and ``exact``.
        vectors: one row per question, computed by ``embedder`` over each query's last ``embed_tail_chars``.
        embedder: the name of the embedder that computed ``vectors``.
        embed_tail_chars: the text transform the vectors were computed over (None: the whole query).
    """

    def __init__(
        self,
        *,
        questions: Iterable[SuiteQuestion],
        name: str = "custom",
        metadata: Mapping[str, Any] | None = None,
        graders: Mapping[str, Grader] | None = None,
        vectors: npt.ArrayLike | None = None,
        embedder: str | None = None,
        embed_tail_chars: int | None = 1000,
    ) -> None:
        self._questions = tuple(questions)
        self._graders = dict(graders or {})
        self._by_id: dict[str, int] = {}
        for i, q in enumerate(self._questions):
            if q.query_id in self._by_id:
                msg = f"duplicate query_id {q.query_id!r} in suite {name!r}"
                raise DataError(msg)
            self._by_id[q.query_id] = i
            try:
                grader_named(q.grader, extra=self._graders).check_reference(q.reference)
            except (ConfigError, DataError) as exc:
                msg = f"question {q.query_id!r}: {exc}"
                raise DataError(msg) from None
        self._name = name
        self._metadata = dict(metadata or {})
        self._tail = embed_tail_chars
        self._embedder_name = embedder
        self._vectors: Matrix | None = None
        if vectors is not None:
            if not embedder:
                msg = "vectors need the name of the embedder that computed them (embedder=...)"
                raise ConfigError(msg)
            matrix = np.asarray(vectors, dtype=np.float32)
            if matrix.ndim != 2 or matrix.shape[0] != len(self._questions):
                msg = f"vectors have shape {matrix.shape}; expected ({len(self._questions)}, dim)"
                raise DataError(msg)
            if not np.all(np.isfinite(matrix)):
                msg = "vectors hold NaN or infinite values"
                raise DataError(msg)
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            norms[norms == 0] = 1.0
            self._vectors = matrix / norms
            self._vectors.setflags(write=False)

    # -- reading ------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def metadata(self) -> dict[str, Any]:
        """Facts kept with the suite: sources and licences, how it was built (a copy)."""
        return json.loads(json.dumps(self._metadata))  # type: ignore[no-any-return]

    @property
    def questions(self) -> tuple[SuiteQuestion, ...]:
        return self._questions

    @property
    def ids(self) -> list[str]:
        return [q.query_id for q in self._questions]

    @property
    def tasks(self) -> dict[str, int]:
        """Questions per task."""
        return dict(Counter(q.task for q in self._questions))

    @property
    def models(self) -> list[str]:
        """The reference models with at least one recorded outcome, sorted."""
        return sorted({m for q in self._questions for m in q.outcomes})

    @property
    def vectors(self) -> Matrix | None:
        """The precomputed vectors (read-only, L2-normalised float32), one row per question, or None."""
        return self._vectors

    @property
    def vector_embedder(self) -> str | None:
        """The name of the embedder that computed :attr:`vectors`."""
        return self._embedder_name if self._vectors is not None else None

    @property
    def embed_tail_chars(self) -> int | None:
        """The vectors were computed over each query's last this-many characters (None: all of it)."""
        return self._tail

    def __len__(self) -> int:
        return len(self._questions)

    def __iter__(self) -> Iterator[SuiteQuestion]:
        return iter(self._questions)

    def __contains__(self, query_id: object) -> bool:
        return query_id in self._by_id

    def __getitem__(self, query_id: str) -> SuiteQuestion:
        try:
            return self._questions[self._by_id[query_id]]
        except KeyError:
            msg = f"no question {query_id!r} in suite {self._name!r}"
            raise ConfigError(msg) from None

    def __repr__(self) -> str:
        return f"AnchorSuite(name={self._name!r}, questions={len(self)}, models={len(self.models)})"

    # -- grading ------------------------------------------------------------------------------------------

    def grader(self, query_id: str) -> Grader:
        """The grader of a question."""
        return grader_named(self[query_id].grader, extra=self._graders)

    def grade(self, query_id: str, response: str) -> float:
        """Grade a model's raw response to a suite question against its reference, in [0, 1]."""
        question = self[query_id]
        return self.grader(query_id).grade(response, question.reference, question=question.prompt)

    # -- outcomes -----------------------------------------------------------------------------------------

    def outcomes(self, models: Iterable[str] | None = None) -> list[Outcome]:
        """The reference models' recorded outcomes, one per (question, model), for ``AnchorStore.add``.

        Args:
            models: only these models (all when None); a name with no outcome in the suite is an error.
        """
        wanted = None if models is None else set(models)
        if wanted is not None:
            unknown = sorted(wanted - set(self.models))
            if unknown:
                msg = f"no outcomes for model(s) {unknown} in suite {self._name!r}; known: {self.models}"
                raise ConfigError(msg)
        return [
            Outcome(
                query=q.query,
                model=model,
                correct=rec.correct,
                output_tokens=rec.output_tokens,
                input_tokens=q.input_tokens,
                query_id=q.query_id,
                task=q.task,
            )
            for q in self._questions
            for model, rec in q.outcomes.items()
            if wanted is None or model in wanted
        ]

    # -- subsets ------------------------------------------------------------------------------------------

    def select(self, ids: Iterable[str]) -> AnchorSuite:
        """A suite of the questions with these ids, in this order (repeats dropped), vectors included."""
        order = list(dict.fromkeys(ids))
        unknown = [i for i in order if i not in self._by_id]
        if unknown:
            msg = f"{len(unknown)} id(s) not in suite {self._name!r}, e.g. {unknown[:5]}"
            raise ConfigError(msg)
        rows = [self._by_id[i] for i in order]
        return self._subset(rows)

    def subset(self, *, tasks: Iterable[str] | None = None, sources: Iterable[str] | None = None) -> AnchorSuite:
        """A suite of the questions of these tasks and/or sources (unknown names are an error)."""
        rows = list(range(len(self._questions)))
        for label, wanted, attr in (("task", tasks, "task"), ("source", sources, "source")):
            if wanted is None:
                continue
            names = set(wanted)
            known = {getattr(q, attr) for q in self._questions}
            if names - known:
                msg = f"unknown {label}(s) {sorted(names - known)}; known: {sorted(known)}"
                raise ConfigError(msg)
            rows = [r for r in rows if getattr(self._questions[r], attr) in names]
        return self._subset(rows)

    def _subset(self, rows: list[int]) -> AnchorSuite:
        return AnchorSuite(
            questions=[self._questions[r] for r in rows],
            name=self._name,
            metadata=self._metadata,
            graders=self._graders,
            vectors=None if self._vectors is None else self._vectors[rows],
            embedder=self._embedder_name,
            embed_tail_chars=self._tail,
        )

    # -- vectors ------------------------------------------------------------------------------------------

    def with_vectors(self, embedder: Any = None, *, embed_tail_chars: int | None = 1000) -> AnchorSuite:
        """A copy of the suite with vectors computed by ``embedder`` (default MiniLM) over each query's tail."""
        emb = as_embedder(embedder)
        texts = [_transform(q.query, embed_tail_chars) for q in self._questions]
        vectors = emb.embed(texts) if texts else np.zeros((0, 1), dtype=np.float32)
        return AnchorSuite(
            questions=self._questions,
            name=self._name,
            metadata=self._metadata,
            graders=self._graders,
            vectors=vectors,
            embedder=emb.name,
            embed_tail_chars=embed_tail_chars,
        )

    def embedder(self, inner: Any = None) -> SuiteEmbedder:
        """An embedder serving this suite's precomputed vectors, and ``inner`` (default MiniLM) for other texts.

        Use it with a store whose ``embed_tail_chars`` is :attr:`embed_tail_chars` (the store's default):
        ``AnchorStore(embedder=suite.embedder()).add(suite.outcomes())`` then embeds nothing.

        Raises:
            ConfigError: the suite has no vectors, or ``inner`` is not the embedder that computed them.
        """
        if self._vectors is None or self._embedder_name is None:
            msg = f"suite {self._name!r} has no precomputed vectors; pass your embedder to the store directly"
            raise ConfigError(msg)
        emb = as_embedder(inner)
        if emb.name != self._embedder_name:
            msg = (
                f"suite {self._name!r} holds vectors of {self._embedder_name!r}, not of {emb.name!r}; "
                "pass that embedder to the store directly (or compute the suite's vectors with with_vectors)"
            )
            raise ConfigError(msg)
        table = {_text_key(_transform(q.query, self._tail)): self._vectors[i] for i, q in enumerate(self._questions)}
        return SuiteEmbedder(vectors=table, inner=emb, dim=int(self._vectors.shape[1]))

    # -- writing ------------------------------------------------------------------------------------------

    def save(self, folder: str | Path, *, notice: str | None = None) -> Path:
        """Write the suite to a folder (byte-identical for the same suite); returns the manifest's path.

        Args:
            folder: created if missing; existing suite files in it are replaced.
            notice: licence and attribution text, written beside the data as ``NOTICE``.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tasks: dict[str, dict[str, Any]] = {}
        lines = []
        for q in self._questions:
            spec = {"grader": q.grader, "source": q.source, "instruction": q.instruction}
            have = tasks.setdefault(q.task, {**spec, "questions": 0})
            if {k: have[k] for k in spec} != spec:
                msg = f"task {q.task!r} mixes graders, sources or instructions; give each its own task name"
                raise DataError(msg)
            have["questions"] += 1
            record: dict[str, Any] = {
                "query_id": q.query_id,
                "task": q.task,
                "reference": q.reference,
                "input_tokens": q.input_tokens,
                "outcomes": {m: [_compact(o.correct), o.output_tokens] for m, o in sorted(q.outcomes.items())},
                "query": q.query,
            }
            lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
        raw = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(("\n".join(lines) + "\n").encode("utf-8"))
        files = {QUESTIONS: raw.getvalue()}
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "name": self._name,
            "questions": len(self._questions),
            "tasks": dict(sorted(tasks.items())),
            "models": self.models,
            "vectors": None,
            "metadata": self._metadata,
        }
        if self._vectors is not None:
            buf = io.BytesIO()
            np.save(buf, self._vectors.astype(np.float16), allow_pickle=False)
            files[VECTORS] = buf.getvalue()
            manifest["vectors"] = {
                "file": VECTORS,
                "embedder": self._embedder_name,
                "embed_tail_chars": self._tail,
                "transform": f"the last {self._tail} characters of the query" if self._tail else "the whole query",
                "dtype": "float16",
                "dim": int(self._vectors.shape[1]),
            }
        elif (out / VECTORS).exists():
            (out / VECTORS).unlink()
        if notice is not None:
            files["NOTICE"] = notice.encode("utf-8")
        manifest["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
        for name, data in files.items():
            (out / name).write_bytes(data)
        path = out / MANIFEST
        path.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return path


def _compact(value: float) -> float | int:
    return int(value) if value in (0.0, 1.0) else value


# -- loading ------------------------------------------------------------------------------------------------


def _default_folder() -> Traversable:
    return resources.files("scope_shared.suites").joinpath("data", DEFAULT_SUITE)


def load_suite(
    name_or_path: str | Path = DEFAULT_SUITE,
    *,
    graders: Mapping[str, Grader | Callable[[str, str], float | bool]] | None = None,
) -> AnchorSuite:
    """Load the packaged suite (``"default"``), a suite folder written by :meth:`AnchorSuite.save`, or a
    CSV/JSONL file of your own questions (as :func:`suite_from_csv`).

    Args:
        name_or_path: ``"default"``, a folder (or its ``suite.json``), or a ``.csv``/``.jsonl`` file.
        graders: graders for custom kinds, by kind (a callable ``(response, reference) -> float | bool``
            is wrapped as a :class:`CallableGrader`).

    Raises:
        DataError: a file is missing, corrupt, or fails its checksum.
    """
    extra = _grader_table(graders)
    folder: Traversable
    if isinstance(name_or_path, str) and name_or_path == DEFAULT_SUITE:
        folder = _default_folder()
        where = f"the packaged suite {DEFAULT_SUITE!r}"
    else:
        path = Path(name_or_path)
        if path.name != MANIFEST and (path.is_file() or path.name.endswith(_QUESTION_FILES)):
            return suite_from_csv(path, graders=graders)
        folder = path.parent if path.name == MANIFEST else path
        where = str(folder)
    manifest_file = folder.joinpath(MANIFEST)
    if not manifest_file.is_file():
        msg = (
            f"{where}: no {MANIFEST}; pass {DEFAULT_SUITE!r} for the packaged suite, a folder written by "
            "AnchorSuite.save, or a .csv/.jsonl file of your own questions"
        )
        raise DataError(msg)
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            msg = f"{where}: suite format {manifest.get('format')!r}; this version reads format {FORMAT}"
            raise DataError(msg)
        checksums: Mapping[str, str] = manifest.get("sha256", {})
        questions_raw = _read_checked(folder, QUESTIONS, checksums, where)
        tasks: Mapping[str, Mapping[str, Any]] = manifest["tasks"]
        questions = [
            _question(json.loads(line), tasks, where, lineno)
            for lineno, line in enumerate(gzip.decompress(questions_raw).decode("utf-8").splitlines(), start=1)
            if line.strip()
        ]
        spec = manifest.get("vectors")
        vectors = None
        if spec:
            vectors = np.load(io.BytesIO(_read_checked(folder, spec["file"], checksums, where)), allow_pickle=False)
    except (KeyError, TypeError, ValueError, OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, DataError):
            raise
        msg = f"{where}: unreadable suite ({type(exc).__name__}: {exc}); rebuild it or reinstall the package"
        raise DataError(msg) from None
    return AnchorSuite(
        questions=questions,
        name=str(manifest.get("name", DEFAULT_SUITE)),
        metadata=manifest.get("metadata") or {},
        graders=extra,
        vectors=vectors,
        embedder=spec["embedder"] if spec else None,
        embed_tail_chars=spec["embed_tail_chars"] if spec else 1000,
    )


def _read_checked(folder: Traversable, name: str, checksums: Mapping[str, str], where: str) -> bytes:
    file = folder.joinpath(name)
    if not file.is_file():
        msg = f"{where}: {name} is missing"
        raise DataError(msg)
    data = file.read_bytes()
    expected = checksums.get(name)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        msg = f"{where}: {name} does not match the manifest's checksum (a partial copy?); rebuild or reinstall"
        raise DataError(msg)
    return data


def _question(
    record: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]], where: str, lineno: int
) -> SuiteQuestion:
    task = record["task"]
    if task not in tasks:
        msg = f"{where}: {QUESTIONS}:{lineno}: task {task!r} is not in the manifest"
        raise DataError(msg)
    spec = tasks[task]
    return SuiteQuestion(
        query_id=record["query_id"],
        query=record["query"],
        task=task,
        reference=record["reference"],
        grader=spec["grader"],
        source=spec.get("source", ""),
        instruction=spec.get("instruction", ""),
        input_tokens=record.get("input_tokens"),
        outcomes={
            model: ReferenceOutcome(float(value[0]), value[1]) for model, value in record.get("outcomes", {}).items()
        },
    )


def _grader_table(graders: Mapping[str, Grader | Callable[[str, str], float | bool]] | None) -> dict[str, Grader]:
    table: dict[str, Grader] = {}
    for kind, grader in (graders or {}).items():
        if isinstance(grader, Grader):
            table[kind] = grader
        elif callable(grader):
            table[kind] = CallableGrader(grader, kind=kind)
        else:
            msg = f"grader {kind!r} must be a Grader or a callable (response, reference) -> float | bool"
            raise ConfigError(msg)
    return table


# -- your own questions -------------------------------------------------------------------------------------


def _rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    name = path.name.removesuffix(".gz")
    opener: Callable[[], Any] = (
        (lambda: io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline=""))
        if path.suffix == ".gz"
        else (lambda: open(path, encoding="utf-8", newline=""))  # noqa: SIM115
    )
    with opener() as fh:
        if name.endswith((".jsonl", ".ndjson")):
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    msg = f"{path}:{lineno}: not valid JSON ({exc.msg})"
                    raise DataError(msg) from None
                if not isinstance(obj, dict):
                    msg = f"{path}:{lineno}: expected a JSON object per line"
                    raise DataError(msg)
                yield lineno, obj
            return
        csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # prompts can exceed csv's 128 kB default
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if not header:
            return
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            msg = f"{path}: missing column(s) {missing}; found {header}; required: {list(REQUIRED_COLUMNS)}"
            raise DataError(msg)
        for row in reader:
            yield reader.line_num, row


def suite_from_csv(
    path: str | Path,
    *,
    graders: Mapping[str, Grader | Callable[[str, str], float | bool]] | None = None,
    name: str | None = None,
) -> AnchorSuite:
    """Read your own labelled questions (CSV or JSONL, ``.gz`` allowed) into a suite without outcomes.

    Columns: ``query``, ``reference``, ``grader`` (a kind: ``choice``, ``number``, ``exact`` or one of
    ``graders``); optional ``query_id`` (default: a hash of the query) and ``task`` (default ``custom``).

    Raises:
        DataError: one line naming the file (and row): a missing column, an unknown grader kind, an empty
            file, a blank query or reference, a reference the grader cannot read, a repeated query or id.
    """
    p = Path(path)
    if not p.is_file():
        msg = f"{p}: no such file"
        raise DataError(msg)
    extra = _grader_table(graders)
    questions: list[SuiteQuestion] = []
    seen_ids: dict[str, int] = {}
    seen_queries: dict[str, int] = {}
    try:
        for lineno, row in _rows(p):
            where = f"{p}:{lineno}"
            missing = [c for c in REQUIRED_COLUMNS if c not in row]
            if missing:
                msg = f"{where}: missing field(s) {missing}; required: {list(REQUIRED_COLUMNS)}"
                raise DataError(msg)
            query, reference, kind = (str(row[c] if row[c] is not None else "") for c in REQUIRED_COLUMNS)
            if not query.strip():
                msg = f"{where}: the query is empty"
                raise DataError(msg)
            if not reference.strip():
                msg = f"{where}: the reference is empty"
                raise DataError(msg)
            try:
                grader_named(kind.strip(), extra=extra).check_reference(reference)
            except (ConfigError, DataError) as exc:
                msg = f"{where}: {exc}"
                raise DataError(msg) from None
            qid = str(row.get("query_id") or "").strip() or "q-" + hashlib.sha256(query.encode()).hexdigest()[:16]
            for seen, key, label in ((seen_queries, query, "query"), (seen_ids, qid, "query_id")):
                if key in seen:
                    msg = f"{where}: the same {label} as line {seen[key]}"
                    raise DataError(msg)
                seen[key] = lineno
            task = str(row.get("task") or "").strip() or "custom"
            questions.append(
                SuiteQuestion(query_id=qid, query=query, task=task, reference=reference, grader=kind.strip())
            )
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as exc:
        msg = f"{p}: cannot read ({type(exc).__name__}: {exc}); is the file truncated or not UTF-8?"
        raise DataError(msg) from None
    if not questions:
        msg = f"{p}: no questions (the file is empty)"
        raise DataError(msg)
    return AnchorSuite(
        questions=questions, name=name or p.name.split(".")[0], graders=extra, metadata={"source": str(p)}
    )
