"""The data model: what goes into the store, what estimators predict, what the router decides.

Units: prices are USD per 1M tokens, costs are USD, similarities are cosine in [-1, 1],
probabilities are in [0, 1].
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "AnchorEvidence",
    "Decision",
    "Estimate",
    "ModelCard",
    "Outcome",
]

NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class ModelCard(BaseModel):
    """A candidate model and its prices (USD per 1M tokens)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    input_per_mtok: NonNegFloat
    output_per_mtok: NonNegFloat

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """USD cost of a call with these token counts."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


class Outcome(BaseModel):
    """One recorded result of one model on one query."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: str
    model: str = Field(min_length=1)
    correct: Probability
    output_tokens: Annotated[int, Field(ge=0)] | None = None
    input_tokens: Annotated[int, Field(ge=0)] | None = None
    query_id: str | None = None
    task: str | None = None

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            msg = "query is empty or whitespace; an outcome needs the question text"
            raise ValueError(msg)
        return value


class AnchorEvidence(BaseModel):
    """One anchor question behind an estimate, with the target model's record on it."""

    model_config = ConfigDict(frozen=True)

    anchor_id: str
    similarity: float = Field(ge=-1.0001, le=1.0001)
    correct: float | None = None
    output_tokens: float | None = None
    question: str | None = None


class Estimate(BaseModel):
    """What an estimator predicts for one (query, model) pair."""

    model_config = ConfigDict(frozen=True)

    model: str
    p_correct: Probability
    output_tokens: NonNegFloat
    input_tokens: NonNegFloat
    cost: NonNegFloat
    estimator: str
    evidence: tuple[AnchorEvidence, ...] = ()
    p_std: float | None = Field(default=None, ge=0.0)
    explanation: str | None = None
    samples: int | None = None
    unparsed_samples: int | None = None
    degraded: bool = False
    reason: str = ""
    estimator_tokens: int = Field(default=0, ge=0)


class Decision(BaseModel):
    """The router's choice for one query, with everything needed to explain it."""

    model_config = ConfigDict(frozen=True)

    model: str
    query: str
    estimates: dict[str, Estimate]
    utilities: dict[str, float]
    utility: float
    value_per_correct: float | None
    excluded: dict[str, str] = Field(default_factory=dict)
    degraded: bool = False
    reason: str = ""
    reservation_id: str | None = None
    reserved_cost: float = 0.0

    @property
    def estimate(self) -> Estimate:
        """The chosen model's estimate."""
        return self.estimates[self.model]

    def ranking(self) -> list[str]:
        """Candidate models, best utility first (excluded ones last)."""
        ranked = sorted(self.utilities, key=lambda m: (-self.utilities[m], self.estimates[m].cost))
        return ranked + [m for m in self.estimates if m not in self.utilities]

    def summary(self) -> dict[str, object]:
        """A JSON-ready summary, as attached to adapter responses."""
        return {
            "model": self.model,
            "degraded": self.degraded,
            "reason": self.reason,
            "value_per_correct": None
            if self.value_per_correct is None or math.isinf(self.value_per_correct)
            else self.value_per_correct,
            "utility": None if math.isnan(self.utility) else self.utility,
            "candidates": {
                name: {
                    "p_correct": est.p_correct,
                    "output_tokens": est.output_tokens,
                    "cost": est.cost,
                    "utility": self.utilities.get(name),
                    "excluded": self.excluded.get(name),
                    "estimator": est.estimator,
                    "degraded": est.degraded,
                }
                for name, est in self.estimates.items()
            },
        }
