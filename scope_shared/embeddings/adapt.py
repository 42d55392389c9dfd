"""An embedder from anything: :func:`as_embedder` adapts objects (None: the default MiniLM),
:func:`embedder_named` builds the built-in ones by name."""

from __future__ import annotations

from typing import Any

from scope_shared.embeddings.base import CallableEmbedder, Embedder, HashingEmbedder
from scope_shared.embeddings.minilm import MiniLMEmbedder
from scope_shared.embeddings.static import StaticEmbedder
from scope_shared.errors import ConfigError

__all__ = ["EMBEDDERS", "as_embedder", "embedder_named"]


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


#: Embedders known by name (the CLI's ``--embedder`` choices); minilm-static is MiniLM distilled to a token
#: table on first use (see :class:`StaticEmbedder`).
EMBEDDERS = ("minilm", "minilm-static", "hashing")


def embedder_named(name: str) -> Embedder:
    """A built-in embedder by name (one of :data:`EMBEDDERS`)."""
    if name == "minilm":
        return MiniLMEmbedder()
    if name == "minilm-static":
        return StaticEmbedder()
    if name == "hashing":
        return HashingEmbedder()
    msg = f"unknown embedder {name!r}; known: {', '.join(EMBEDDERS)}"
    raise ConfigError(msg)
