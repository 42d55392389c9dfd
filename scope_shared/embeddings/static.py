"""A static (model2vec-style) distillation of all-MiniLM-L6-v2: one vector per WordPiece token, averaged, so an
embedding costs a tokenisation and a lookup instead of a transformer pass."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scope_shared.embeddings.base import Matrix, normalise
from scope_shared.embeddings.files import bundled_model_path, default_cache_dir, model_fingerprint, write_atomic
from scope_shared.errors import ConfigError, EmbedderError

__all__ = ["StaticEmbedder", "distill_static"]

logger = logging.getLogger(__name__)

_STATIC_RECIPE = "model2vec-mean-pca-sif/1"
_UNUSED_TOKEN = re.compile(r"\[unused\d+\]")


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
        model = Path(self._model_path or bundled_model_path())
        fingerprint = model_fingerprint(model, f"{_STATIC_RECIPE}|{self._dim}|{self._sif}")
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
                model = self._model_path or bundled_model_path()
                t0 = time.perf_counter()
                logger.info("distilling a static %d-d table from %s into %s", self._dim, model, path)
                table, tokenizer_json = distill_static(model, dim=self._dim, sif_coefficient=self._sif)
                vectors, spec = table.astype(np.float16), np.array(tokenizer_json)
                write_atomic(path, lambda f: np.savez(f, vectors=vectors, tokenizer=spec))
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
        return normalise(out, len(texts))


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
