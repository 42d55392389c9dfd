"""The peer router of the scale benchmark: semantic-router over the same encoder and anchors.

Each anchor becomes an utterance of one route, named after the model that should answer it: among the
models that answered it correctly, the one with the best overall record (the overall best when none did).
A query goes to the route whose top-k utterances score highest (similarities summed), i.e. the same
nearest-anchor job as the engine, without outcome statistics, costs or a budget. When semantic-router is
not installed, a LangChain ``InMemoryVectorStore`` cosine match with the same vote stands in.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

EmbedFn = Callable[[Sequence[str]], Any]


@dataclass
class Peer:
    """A built peer router: ``route(query) -> model name``."""

    name: str
    route: Callable[[str], str | None]
    build_s: float


def labels_for(outcomes: Sequence[dict[str, float]], overall: dict[str, float]) -> list[str]:
    """The route of each anchor: its best-overall correct model, else the best model overall."""
    order = sorted(overall, key=lambda m: (-overall[m], m))
    labels = []
    for row in outcomes:
        right = [m for m in order if row.get(m, 0.0) >= 0.5]
        labels.append(right[0] if right else order[0])
    return labels


def build_peer(embed: EmbedFn, texts: Sequence[str], labels: Sequence[str], *, top_k: int) -> Peer | None:
    """semantic-router's ``IndexedRouter`` if installed, else a LangChain cosine match; None if neither is."""
    try:
        return _semantic_router(embed, texts, labels, top_k=top_k)
    except ImportError:
        pass
    try:
        return _langchain(embed, texts, labels, top_k=top_k)
    except ImportError:
        return None


def _semantic_router(embed: EmbedFn, texts: Sequence[str], labels: Sequence[str], *, top_k: int) -> Peer:
    from semantic_router import Route
    from semantic_router.encoders import DenseEncoder
    from semantic_router.routers import IndexedRouter

    class SameEncoder(DenseEncoder):
        fn: Any = None

        def __call__(self, docs: list[Any]) -> list[Any]:
            return list(self.fn([str(d) for d in docs]))

    by_route: dict[str, list[str]] = defaultdict(list)
    for text, label in zip(texts, labels, strict=True):
        by_route[label].append(text)
    t0 = time.perf_counter()
    router = IndexedRouter(
        encoder=SameEncoder(name="scope-bench-encoder", fn=embed),
        routes=[Route(name=name, utterances=utts) for name, utts in sorted(by_route.items())],
        top_k=top_k,
        aggregation="sum",
    )
    build_s = time.perf_counter() - t0

    def route(query: str) -> str | None:
        choice: Any = router(query)
        return choice.name if choice is not None else None

    return Peer(f"semantic-router {_version('semantic-router')} IndexedRouter", route, build_s)


def _langchain(embed: EmbedFn, texts: Sequence[str], labels: Sequence[str], *, top_k: int) -> Peer:
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import InMemoryVectorStore

    class SameEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return np.asarray(embed(texts)).tolist()  # type: ignore[no-any-return]

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    t0 = time.perf_counter()
    store = InMemoryVectorStore(embedding=SameEmbeddings())
    store.add_texts(list(texts), metadatas=[{"model": m} for m in labels])
    build_s = time.perf_counter() - t0

    def route(query: str) -> str | None:
        votes: dict[str, float] = defaultdict(float)
        for doc, score in store.similarity_search_with_score(query, k=top_k):
            votes[doc.metadata["model"]] += score
        return max(votes, key=votes.__getitem__) if votes else None

    return Peer(f"langchain-core {_version('langchain-core')} InMemoryVectorStore match", route, build_s)


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"
