"""StaticEmbedder: distilled from a tiny random BERT written to a temp dir (no bundled model, no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scope_shared.embeddings import StaticEmbedder, as_embedder, distill_static
from scope_shared.embeddings import static as emb_mod
from scope_shared.errors import ConfigError
from tests.unit.conftest import SPECIAL

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

@pytest.fixture
def static(tiny_bert: Path, tmp_path: Path) -> StaticEmbedder:
    return StaticEmbedder(dim=8, model_path=str(tiny_bert), cache_dir=tmp_path)


def test_shape_dtype_and_unit_norm(static: StaticEmbedder) -> None:
    v = static.embed(["the cat sat on the mat", "what is two plus two", "Hello World"])
    assert v.shape == (3, 8)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert static.embed([]).shape == (0, 8)


def test_embedding_is_the_normalised_mean_of_token_rows(static: StaticEmbedder, tiny_bert: Path) -> None:
    static.embed(["warm up"])
    with np.load(static.path) as z:
        table = z["vectors"].astype(np.float32)
    vocab = json.loads((tiny_bert / "tokenizer.json").read_text())["model"]["vocab"]
    # "cats" -> cat ##s; the uppercase is lowered; the unknown word is dropped
    expected = table[[vocab["the"], vocab["cat"], vocab["##s"]]].mean(axis=0)
    got = static.embed(["The cats zzzqqq"])[0]
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-5)


def test_no_truncation_and_no_special_tokens(static: StaticEmbedder) -> None:
    short, long = static.embed(["the cat", "the cat " + "moon " * 50])
    assert not np.allclose(short, long, atol=1e-3)  # tokens past the tokenizer's saved max_length count
    assert static.embed(["cat"])[0] @ static.embed(["cat cat cat"])[0] == pytest.approx(1.0, abs=1e-5)


def test_rows_do_not_depend_on_the_batch(static: StaticEmbedder) -> None:
    texts = ["the cat sat", "write a poem about the sea", "what is two plus two"]
    batched = static.embed(texts)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(static.embed([t])[0], batched[i], atol=1e-6)


def test_text_without_known_tokens_gets_a_fixed_unit_vector(static: StaticEmbedder) -> None:
    v = static.embed(["", "zzzqqq xxyyzz"])
    np.testing.assert_allclose(v, np.tile(np.eye(8, dtype=np.float32)[0], (2, 1)))


def test_distillation_is_deterministic_and_loaded_from_cache(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = ["a dog ran about the moon"]
    first = StaticEmbedder(dim=8, model_path=str(tiny_bert), cache_dir=tmp_path / "one").embed(text)
    second = StaticEmbedder(dim=8, model_path=str(tiny_bert), cache_dir=tmp_path / "two").embed(text)
    np.testing.assert_allclose(first, second, atol=1e-3)  # the table is stored as float16

    def no_distil(*args: object, **kwargs: object) -> None:
        raise AssertionError("distilled again instead of reading the cache")

    monkeypatch.setattr(emb_mod, "distill_static", no_distil)
    again = StaticEmbedder(dim=8, model_path=str(tiny_bert), cache_dir=tmp_path / "one")
    np.testing.assert_array_equal(again.embed(text), first)
    assert [p.name for p in (tmp_path / "one").iterdir()] == [again.path.name]  # no temp file left


def test_table_rows_of_special_and_unused_tokens_are_zero(tiny_bert: Path) -> None:
    table, tokenizer_json = distill_static(str(tiny_bert), dim=8)
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    assert table.shape == (len(vocab), 8)
    for tok in [*SPECIAL, "[unused0]"]:
        assert not table[vocab[tok]].any()
    assert table[vocab["cat"]].any()
    # SIF: the most frequent (lowest-rank) token is damped against its unweighted row
    plain, _ = distill_static(str(tiny_bert), dim=8, sif_coefficient=None)
    ratio = np.linalg.norm(table[vocab["the"]]) / np.linalg.norm(plain[vocab["the"]])
    assert ratio < np.linalg.norm(table[vocab["of"]]) / np.linalg.norm(plain[vocab["of"]])


def test_name_and_path_follow_the_settings(tiny_bert: Path, tmp_path: Path) -> None:
    a = StaticEmbedder(dim=8, model_path=str(tiny_bert), cache_dir=tmp_path)
    b = StaticEmbedder(dim=16, model_path=str(tiny_bert), cache_dir=tmp_path)
    c = StaticEmbedder(dim=8, model_path=str(tiny_bert), cache_dir=tmp_path, sif_coefficient=None)
    assert a.name == "all-MiniLM-L6-v2-static/8"
    assert len({a.name, b.name, c.name}) == 3
    assert len({a.path, b.path, c.path}) == 3
    assert a.path.parent == tmp_path


@pytest.mark.parametrize("kwargs", [{"dim": 4}, {"dim": 385}, {"sif_coefficient": 0.0}, {"sif_coefficient": 1.5}])
def test_bad_settings_fail_early(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        StaticEmbedder(**kwargs)  # type: ignore[arg-type]


def test_dim_above_hidden_size_names_the_limit(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hidden size 32"):
        StaticEmbedder(dim=64, model_path=str(tiny_bert), cache_dir=tmp_path).embed(["cat"])


def test_default_cache_dir_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert emb_mod.default_cache_dir() == tmp_path / "scope-router"


def test_selectable_by_name() -> None:
    from scope_shared.commands._common import make_embedder

    e = make_embedder("minilm-static")
    assert isinstance(e, StaticEmbedder)
    assert as_embedder(e) is e
    assert e.name == "all-MiniLM-L6-v2-static/256"
