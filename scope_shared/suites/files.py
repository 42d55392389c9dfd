"""A suite's files: the folder format :meth:`AnchorSuite.save` writes and :func:`load_suite` reads, and your own
labelled questions as CSV or JSONL (:func:`suite_from_csv`).

On disk a suite is a folder: ``suite.json`` (manifest: tasks, sources with licences, the vectors' embedder,
checksums), ``questions.jsonl.gz`` (one question and its outcomes per line) and optionally ``vectors.npy``
(float16, one row per question).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scope_shared.data import read_rows, reading
from scope_shared.errors import ConfigError, DataError
from scope_shared.suites.graders import Grader, grader_named
from scope_shared.suites.judges import CallableGrader
from scope_shared.suites.suite import AnchorSuite, ReferenceOutcome, SuiteQuestion

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["DEFAULT_SUITE", "REQUIRED_COLUMNS", "load_suite", "save_suite", "suite_from_csv"]

#: The name of the suite shipped with the package.
DEFAULT_SUITE = "default"
FORMAT = 1
MANIFEST = "suite.json"
QUESTIONS = "questions.jsonl.gz"
VECTORS = "vectors.npy"
REQUIRED_COLUMNS = ("query", "reference", "grader")
_QUESTION_FILES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")


# -- writing ------------------------------------------------------------------------------------------------


def save_suite(suite: AnchorSuite, folder: str | Path, *, notice: str | None = None) -> Path:
    """Write a suite to a folder (byte-identical for the same suite); returns the manifest's path.

    Args:
        folder: created if missing; existing suite files in it are replaced.
        notice: licence and attribution text, written beside the data as ``NOTICE``.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tasks: dict[str, dict[str, Any]] = {}
    lines = []
    for q in suite.questions:
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
        "name": suite.name,
        "questions": len(suite.questions),
        "tasks": dict(sorted(tasks.items())),
        "models": suite.models,
        "vectors": None,
        "metadata": suite.metadata,
    }
    tail = suite.embed_tail_chars
    if suite.vectors is not None:
        buf = io.BytesIO()
        np.save(buf, suite.vectors.astype(np.float16), allow_pickle=False)
        files[VECTORS] = buf.getvalue()
        manifest["vectors"] = {
            "file": VECTORS,
            "embedder": suite.vector_embedder,
            "embed_tail_chars": tail,
            "transform": f"the last {tail} characters of the query" if tail else "the whole query",
            "dtype": "float16",
            "dim": int(suite.vectors.shape[1]),
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
    with reading(p):
        for lineno, row in read_rows(p, required=REQUIRED_COLUMNS, allow_empty=True):
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
    if not questions:
        msg = f"{p}: no questions (the file is empty)"
        raise DataError(msg)
    return AnchorSuite(
        questions=questions, name=name or p.name.split(".")[0], graders=extra, metadata={"source": str(p)}
    )
