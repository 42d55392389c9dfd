"""The store keeps each model's extracted answer (one more metadata key per model) for cascade calibration."""

from __future__ import annotations

from scope_shared import AnchorStore, HashingEmbedder, Outcome
from scope_shared.store import anchor_id
from scope_shared.types import NO_ANSWER


def test_the_store_keeps_each_models_extracted_answer() -> None:
    store = AnchorStore(embedder=HashingEmbedder())
    store.add(
        [
            Outcome(query="what is 2 plus 2", model="big", correct=1.0, answer="4"),
            Outcome(query="what is 2 plus 2", model="small", correct=0.0, answer=NO_ANSWER),
            Outcome(query="what is 2 plus 2", model="old", correct=0.0),
            Outcome(query="what is 2 plus 3", model="big", correct=1.0, answer=""),
        ],
        progress=False,
    )
    record = store.get([anchor_id("what is 2 plus 2")])[anchor_id("what is 2 plus 2")]
    assert record.outcomes["big"].answer == "4"
    assert record.outcomes["small"].answer == NO_ANSWER
    assert record.outcomes["old"].answer is None
    assert store.get([anchor_id("what is 2 plus 3")])[anchor_id("what is 2 plus 3")].outcomes["big"].answer == ""
    records, _, _ = store.export()
    assert {r.question: r.outcomes["big"].answer for r in records} == {"what is 2 plus 2": "4", "what is 2 plus 3": ""}
    assert store.model_stats()["big"].n == 2  # answers are not counted as outcomes
    # a later outcome with an answer merges into the anchor like any other key
    store.add([Outcome(query="what is 2 plus 2", model="old", correct=1.0, answer="4")], progress=False)
    assert store.get([anchor_id("what is 2 plus 2")])[anchor_id("what is 2 plus 2")].outcomes["old"].answer == "4"
