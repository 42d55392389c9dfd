"""Hermetic fixtures: a small in-memory store with a hashing embedder (no model, no socket)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from scope_shared import AnchorStore, HashingEmbedder, ModelCard, Outcome
from scope_shared.embeddings import Matrix
from scope_shared.store import DEFAULT_COLLECTION

CARDS = [
    ModelCard(name="big", input_per_mtok=10.0, output_per_mtok=30.0),
    ModelCard(name="small", input_per_mtok=0.2, output_per_mtok=0.2),
]

MATH = [f"what is {a} plus {a + 1} in arithmetic" for a in range(10)]
POEMS = [f"write a sonnet poem about the {w} moon" for w in ["red", "blue", "old", "new", "cold", "warm", "dark", "bright", "far", "near"]]


class CountingEmbedder(HashingEmbedder):
    """The hashing embedder, counting the texts it embeds."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> Matrix:
        self.texts.extend(texts)
        return super().embed(texts)


def index_settings(path: Path) -> dict[str, Any]:
    """The collection's HNSW settings as another Chroma client of the same directory reads them."""
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False, allow_reset=False))
    return dict(client.get_collection(DEFAULT_COLLECTION).configuration["hnsw"])


def sample_outcomes() -> list[Outcome]:
    """big is right everywhere; small is right on arithmetic only; poems are long."""
    rows: list[Outcome] = []
    for q in MATH:
        rows.append(Outcome(query=q, model="big", correct=1.0, output_tokens=10, input_tokens=8))
        rows.append(Outcome(query=q, model="small", correct=1.0, output_tokens=12, input_tokens=8))
    for q in POEMS:
        rows.append(Outcome(query=q, model="big", correct=1.0, output_tokens=300, input_tokens=9))
        rows.append(Outcome(query=q, model="small", correct=0.0, output_tokens=200, input_tokens=9))
    return rows


@pytest.fixture
def outcomes() -> list[Outcome]:
    return sample_outcomes()


@pytest.fixture
def store(outcomes: list[Outcome]) -> AnchorStore:
    s = AnchorStore(embedder=HashingEmbedder())
    s.add(outcomes)
    return s


@pytest.fixture
def cards() -> list[ModelCard]:
    return list(CARDS)


SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "[unused0] the cat sat on mat what is two plus write a poem about sea moon dog ran ##s ##ing hello world "
    "four sum of"
).split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 32-wide BERT with a 30-token WordPiece vocabulary, saved like a sentence-transformers dir."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    out = tmp_path_factory.mktemp("tiny-bert")
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(SPECIAL)
    tok.enable_truncation(max_length=8)  # the embedder must switch this off
    tok.save(str(out / "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(str(out))
    return out
