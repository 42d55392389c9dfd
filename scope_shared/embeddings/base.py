"""The embedder protocol, the small embedders and the one normalisation every embedder's output goes through.

:class:`Embedder` turns texts into unit-length vectors, so that a dot product is a cosine similarity.
:class:`CallableEmbedder` wraps a function ``list[str] -> vectors`` (or a LangChain / LlamaIndex embeddings
object), :class:`HashingEmbedder` is a model-free bag of words for tests, :class:`CachedEmbedder` an LRU cache
in front of another embedder.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from scope_shared.errors import ConfigError, EmbedderError

__all__ = ["CachedEmbedder", "CallableEmbedder", "Embedder", "HashingEmbedder", "Matrix", "normalise"]

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


def normalise(vectors: Any, n: int) -> Matrix:
    """``vectors`` as a float32 ``(n, dim)`` matrix of unit rows (zero rows kept); :class:`EmbedderError` if
    they are not finite numbers of that shape."""
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
        return normalise(vectors, len(texts))


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
        return normalise(out, len(texts))


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
                    self._cache[t] = np.array(v, dtype=np.float32)  # a copy: a row must not pin its batch
                while len(self._cache) > self._maxsize:
                    self._cache.popitem(last=False)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[t] for t in texts])
