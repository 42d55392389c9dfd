"""Anchor suites: questions with gold references and graders, and reference models' recorded outcomes on them.

A suite is what a new model is profiled on and what a fresh anchor store is seeded from:

- :meth:`AnchorSuite.outcomes` gives the reference models' recorded outcomes, ready for ``AnchorStore.add``;
- :meth:`AnchorSuite.grade` grades a new model's raw response to a suite question with that question's grader,
  and :attr:`SuiteQuestion.prompt` is the text to send (the question plus the answer-format instruction its
  reference models were given); record the outcome under :attr:`SuiteQuestion.query`, the anchor's text;
- :meth:`AnchorSuite.embedder` returns the suite's precomputed vectors for its own questions, so building a
  store from the packaged suite embeds nothing.

Reading and writing suites is :mod:`scope_shared.suites.files`; the embedder is :mod:`scope_shared.suites.embedder`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from scope_shared.embeddings import as_embedder
from scope_shared.errors import ConfigError, DataError
from scope_shared.suites.embedder import SuiteEmbedder, text_key, transform
from scope_shared.suites.graders import Grader, grader_named
from scope_shared.types import Outcome

__all__ = ["AnchorSuite", "ReferenceOutcome", "SuiteQuestion"]

logger = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]


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
        texts = [transform(q.query, embed_tail_chars) for q in self._questions]
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
        table = {text_key(transform(q.query, self._tail)): self._vectors[i] for i, q in enumerate(self._questions)}
        return SuiteEmbedder(vectors=table, inner=emb, dim=int(self._vectors.shape[1]))

    def embedder_or(self, inner: Any) -> Any:
        """:meth:`embedder` when the suite holds ``inner``'s vectors, else ``inner`` itself (logged: the
        suite's questions are then embedded)."""
        emb = as_embedder(inner)
        if self._vectors is not None and self._embedder_name == emb.name:
            return self.embedder(emb)
        logger.info("suite %r holds no vectors of %s: its questions are embedded", self._name, emb.name)
        return emb

    # -- writing ------------------------------------------------------------------------------------------

    def save(self, folder: str | Path, *, notice: str | None = None) -> Path:
        """Write the suite to a folder (byte-identical for the same suite); returns the manifest's path.

        Args:
            folder: created if missing; existing suite files in it are replaced.
            notice: licence and attribution text, written beside the data as ``NOTICE``.
        """
        from scope_shared.suites.files import save_suite

        return save_suite(self, folder, notice=notice)
