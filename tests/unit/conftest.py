"""Hermetic fixtures: a small in-memory store with a hashing embedder (no model, no socket)."""

from __future__ import annotations

import pytest

from scope_shared import AnchorStore, HashingEmbedder, ModelCard, Outcome

CARDS = [
    ModelCard(name="big", input_per_mtok=10.0, output_per_mtok=30.0),
    ModelCard(name="small", input_per_mtok=0.2, output_per_mtok=0.2),
]

MATH = [f"what is {a} plus {a + 1} in arithmetic" for a in range(10)]
POEMS = [f"write a sonnet poem about the {w} moon" for w in ["red", "blue", "old", "new", "cold", "warm", "dark", "bright", "far", "near"]]


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
