"""A store from a suite: the reference models' recorded outcomes, written whole question by whole question.

``AnchorStore.add`` writes in batches of outcomes; at its default size a suite question's ~22 outcomes are
split over two batches about one time in twenty, and every batch is a read and a write of its anchors.
:func:`seed_store` groups a suite's outcomes by question and writes up to ``max_anchors`` whole questions at
once, so the packaged suite (2,414 questions, 53,928 outcomes) is one write. With the suite's own embedder
(:meth:`AnchorSuite.embedder`) nothing is embedded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from scope_shared.errors import ConfigError
from scope_shared.store import AddReport, AnchorStore
from scope_shared.suites.files import DEFAULT_SUITE, load_suite
from scope_shared.suites.suite import AnchorSuite
from scope_shared.types import Outcome

__all__ = ["DEFAULT_MAX_ANCHORS", "seed_store", "store_from_suite"]

logger = logging.getLogger(__name__)

#: Questions written per store write (an embedded Chroma takes up to 5,461 records in one write).
DEFAULT_MAX_ANCHORS = 4000


def _suite(suite: AnchorSuite | str) -> AnchorSuite:
    return suite if isinstance(suite, AnchorSuite) else load_suite(suite)


def _by_question(outcomes: Iterable[Outcome], max_anchors: int) -> list[list[Outcome]]:
    """Outcomes in chunks of at most ``max_anchors`` whole questions, in their order."""
    chunks: list[list[Outcome]] = []
    queries: set[str] = set()
    current: list[Outcome] = []
    for out in outcomes:
        if out.query not in queries and len(queries) == max_anchors:
            chunks.append(current)
            current, queries = [], set()
        queries.add(out.query)
        current.append(out)
    if current:
        chunks.append(current)
    return chunks


def seed_store(
    store: AnchorStore,
    suite: AnchorSuite | str = DEFAULT_SUITE,
    *,
    models: Iterable[str] | None = None,
    max_anchors: int = DEFAULT_MAX_ANCHORS,
    progress: bool | None = None,
) -> AddReport:
    """Write a suite's reference outcomes into ``store``, whole questions per write; idempotent.

    Args:
        store: the store; build it with ``embedder=suite.embedder()`` to embed nothing.
        suite: a suite, or what :func:`load_suite` takes (``"default"``, a folder, a CSV/JSONL file).
        models: only these reference models (all when None).
        max_anchors: questions per write.
        progress: show a progress bar (``None``: for long loads on a terminal).
    """
    if max_anchors < 1:
        msg = f"max_anchors must be >= 1, got {max_anchors}"
        raise ConfigError(msg)
    the_suite = _suite(suite)
    outcomes = the_suite.outcomes(models)
    if not outcomes:
        msg = f"suite {the_suite.name!r} holds no reference outcomes to seed a store with"
        raise ConfigError(msg)
    chunks = _by_question(outcomes, max_anchors)
    bar = None
    if progress or (progress is None and len(chunks) > 1):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(outcomes), unit="outcome", desc="suite", disable=None if progress is None else False)
    new = updated = done = 0
    try:
        for chunk in chunks:
            report = store.add(chunk, batch_size=len(chunk), progress=False)
            new, updated, done = new + report.anchors_new, updated + report.anchors_updated, done + report.outcomes
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    logger.info("seeded %s with %d outcomes of suite %r in %d write(s)", store, done, the_suite.name, len(chunks))
    return AddReport(outcomes=done, anchors_new=new, anchors_updated=updated, batches=len(chunks))


def store_from_suite(
    suite: AnchorSuite | str = DEFAULT_SUITE,
    *,
    models: Iterable[str] | None = None,
    inner: Any = None,
    **store_options: Any,
) -> AnchorStore:
    """A store holding a suite's questions and reference outcomes, built from its precomputed vectors.

    ``store_from_suite(path="anchors/")`` is ``AnchorStore(path="anchors/", embedder=suite.embedder())`` seeded
    with :func:`seed_store`: the store's embedder serves the suite's vectors and embeds other texts (your
    queries) with ``inner`` (default MiniLM, loaded on first use).

    Args:
        suite: a suite, or what :func:`load_suite` takes.
        models: only these reference models (all when None).
        inner: the embedder the suite's vectors were computed with (default MiniLM).
        store_options: keyword arguments of :class:`AnchorStore` (``path``, ``host``, ...), except ``embedder``.

    Raises:
        ConfigError: the suite has no precomputed vectors, or not of ``inner``.
    """
    if "embedder" in store_options:
        msg = "store_from_suite builds the store's embedder from the suite; pass inner= (the suite's embedder)"
        raise ConfigError(msg)
    the_suite = _suite(suite)
    store = AnchorStore(embedder=the_suite.embedder(inner), **store_options)
    seed_store(store, the_suite, models=models)
    return store
