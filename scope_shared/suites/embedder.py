"""The embedder that serves a suite's precomputed vectors, and the text key they are looked up by."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from scope_shared.embeddings import Embedder
from scope_shared.errors import EmbedderError

__all__ = ["SuiteEmbedder", "text_key", "transform"]

Matrix = npt.NDArray[np.float32]


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def transform(text: str, tail: int | None) -> str:
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
            found = self._vectors.get(text_key(text))
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
