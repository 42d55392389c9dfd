"""What the framework examples share: the recorded data they replay, the flags that pick it, the anchor store.

The examples run as scripts (``python examples/x.py``), so Python finds this module beside them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scope_shared import AnchorStore, HashingEmbedder, ModelCard, Outcome, load_outcomes, load_prices

#: RouterBench zero-shot: real recorded outcomes, in ../shared/data beside the repository.
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routerbench-zs"
#: Three models far apart in price and accuracy.
MODELS = ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "mistralai/mistral-7b-chat"]


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with the flags that pick the data and the store."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="a dataset folder (anchors, test, prices)")
    p.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    p.add_argument("--max-anchors", type=int, default=None, help="load only this many anchor questions")
    return p


@dataclass(frozen=True)
class Data:
    """The price table, the anchor outcomes and the held-out outcomes."""

    cards: list[ModelCard]
    anchors: list[Outcome]
    test: list[Outcome]

    def models(self, names: Sequence[str]) -> list[ModelCard]:
        """The price-table cards of ``names``, in that order."""
        by_name = {c.name: c for c in self.cards}
        return [by_name[n] for n in names]

    def questions(self, n: int) -> list[str]:
        """The first ``n`` distinct held-out questions."""
        return list(dict.fromkeys(o.query for o in self.test))[:n]


def load(args: argparse.Namespace, models: Sequence[str] | None = None) -> Data:
    """The data under ``args.data``: outcomes of ``models`` only (all when None), anchors cut to the first
    ``args.max_anchors`` questions."""

    def of(rows: list[Outcome]) -> list[Outcome]:
        return rows if models is None else [o for o in rows if o.model in models]

    anchors = of(load_outcomes(args.data / "anchors.csv.gz"))
    if args.max_anchors:
        keep = set(list(dict.fromkeys(o.query for o in anchors))[: args.max_anchors])
        anchors = [o for o in anchors if o.query in keep]
    return Data(load_prices(args.data / "prices.csv"), anchors, of(load_outcomes(args.data / "test.csv.gz")))


def embedder(name: str) -> HashingEmbedder | None:
    """The ``--embedder`` choice: the hashing embedder, or None for the store's default (MiniLM)."""
    return HashingEmbedder() if name == "hashing" else None


def anchor_store(anchors: list[Outcome], embedder: HashingEmbedder | None) -> AnchorStore:
    """An in-memory anchor store holding ``anchors``."""
    store = AnchorStore(embedder=embedder)
    store.add(anchors, progress=False)
    return store


def shown(prompt: str, width: int = 60, more: str = "") -> str:
    """The question a few-shot prompt ends with (RouterBench prompts open with worked examples), cut to
    ``width`` characters; ``more`` marks a cut."""
    line = prompt.strip().split("\n\n")[-1].split("\n")[0]
    return line[:width] + (more if len(line) > width else "")


def report(summary: Mapping[str, object]) -> None:
    """Print the summary line the example tests read."""
    print("SUMMARY " + json.dumps(summary))
