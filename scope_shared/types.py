"""The data model: what goes into the store, what estimators predict, what the router decides.

Units: prices are USD per 1M tokens, costs are USD, similarities are cosine in [-1, 1],
probabilities are in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from scope_shared.errors import ConfigError

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "DEFAULT_TOKENS_PER_CHAR",
    "MAX_PRICE_PER_MTOK",
    "MAX_TOKENS",
    "NO_ANSWER",
    "AnchorEvidence",
    "AnchorOutcome",
    "AnchorRecord",
    "Decision",
    "Estimate",
    "ModelCard",
    "ModelStats",
    "Outcome",
    "RouteOptions",
    "estimate_tokens",
]

NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
USD = Annotated[float, Field(ge=0.0, allow_inf_nan=True)]

#: Tokens per character when nothing better is known (about 4 characters a token in English).
DEFAULT_TOKENS_PER_CHAR = 0.25
#: Output tokens assumed for a model with no recorded length at all.
DEFAULT_OUTPUT_TOKENS = 256.0


def estimate_tokens(text: str, tokens_per_char: float = DEFAULT_TOKENS_PER_CHAR) -> float:
    """Tokens of ``text`` from a tokens-per-character ratio (at least 1)."""
    return max(1.0, round(len(text) * tokens_per_char))


#: The most tokens one call is taken to use (a bound on what loaders and callers may record).
MAX_TOKENS = 10_000_000
#: The highest price accepted, USD per 1M tokens.
MAX_PRICE_PER_MTOK = 100_000.0

TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS)]

#: The ``answer`` recorded for a response that had no readable final answer (an ASCII control character no
#: grader's extracted answer contains; ``None`` means no answer was recorded at all).
NO_ANSWER = "\x1f"


def _unicode(value: str, what: str) -> str:
    """``value`` if it is valid Unicode text (no lone surrogates, which no store or file can hold)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = f"{what} holds a lone surrogate at character {exc.start}; it is not valid Unicode text"
        raise ValueError(msg) from None
    return value


class ModelCard(BaseModel):
    """A candidate model and its prices (USD per 1M tokens)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    input_per_mtok: Annotated[float, Field(ge=0.0, le=MAX_PRICE_PER_MTOK, allow_inf_nan=False)]
    output_per_mtok: Annotated[float, Field(ge=0.0, le=MAX_PRICE_PER_MTOK, allow_inf_nan=False)]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _unicode(value, "name")

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """USD cost of a call with these token counts."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


class Outcome(BaseModel):
    """One recorded result of one model on one query.

    ``answer`` is the final answer a grader extracted from the model's response (:data:`NO_ANSWER` when the
    response had none, None when not recorded); the store keeps it so that cascades can calibrate how often
    answers agree.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: str
    model: str = Field(min_length=1)
    correct: Probability
    output_tokens: TokenCount | None = None
    input_tokens: TokenCount | None = None
    query_id: str | None = None
    task: str | None = None
    answer: str | None = None

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            msg = "query is empty or whitespace; an outcome needs the question text"
            raise ValueError(msg)
        return _unicode(value, "query")

    @field_validator("model", "query_id", "task", "answer")
    @classmethod
    def _text(cls, value: str | None, info: ValidationInfo) -> str | None:
        return value if value is None else _unicode(value, str(info.field_name))


@dataclass(frozen=True, slots=True)
class AnchorOutcome:
    """A model's recorded result on one anchor (``answer``: the extracted answer, where recorded)."""

    correct: float
    output_tokens: float | None = None
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class AnchorRecord:
    """A retrieved anchor: its question, its cosine similarity to the query, and every model's outcome."""

    anchor_id: str
    question: str
    similarity: float
    outcomes: Mapping[str, AnchorOutcome]


@dataclass(frozen=True, slots=True)
class ModelStats:
    """A model's overall record over every anchor in the store."""

    n: int
    p_correct: float
    mean_log_tokens: float | None = None
    n_tokens: int = 0


class RouteOptions(BaseModel):
    """Per-call routing settings; a field left unset takes the engine's setting when the call is routed.

    ``RouteOptions()`` changes nothing; ``RouteOptions(value_per_correct=None)`` explicitly routes on
    accuracy alone whatever the engine's default. Adapters keep the options they were built with and lay
    each call's options over them with :meth:`merged`.

    Attributes:
        value_per_correct: USD a correct answer is worth (None or infinity: accuracy only).
        max_cost_per_call: USD; candidates whose expected cost exceeds it are excluded (None: no cap).
        candidates: the models to choose among (None: every model of the engine).
        force_model: always choose this model (still estimated, reserved and reported).
        reserve: with a budget, hold the chosen model's expected cost until the call settles.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    value_per_correct: USD | None = None
    max_cost_per_call: USD | None = None
    candidates: tuple[str, ...] | None = None
    force_model: str | None = None
    reserve: bool = True

    @field_validator("value_per_correct", "max_cost_per_call", mode="before")
    @classmethod
    def _usd(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 0:
            msg = f"must be a USD amount >= 0 or None, got {value!r}"
            raise ValueError(msg)
        return float(value)

    @field_validator("candidates", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            msg = f"must be a non-empty list of model names, got {value!r}"
            raise ValueError(msg)
        return tuple(value)

    @classmethod
    def of(cls, value: RouteOptions | Mapping[str, Any] | None = None, /, **fields: Any) -> RouteOptions:
        """Options from a RouteOptions, a mapping of its fields or keywords; :class:`ConfigError` if invalid."""
        if isinstance(value, RouteOptions) and not fields:
            return value
        given = value.given() if isinstance(value, RouteOptions) else dict(value or {})
        try:
            return cls(**given, **fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "options"
            if first["type"] == "extra_forbidden":
                msg = f"unknown route option {where!r}; known: {', '.join(cls.model_fields)}"
            else:
                msg = f"{where} {str(first['msg']).removeprefix('Value error, ')}"
            raise ConfigError(msg) from None

    def merged(self, other: RouteOptions | Mapping[str, Any] | None) -> RouteOptions:
        """These options with the fields ``other`` sets laid over them."""
        if other is None:
            return self
        over = RouteOptions.of(other)
        if not over.model_fields_set:
            return self
        return RouteOptions.of(self.given() | over.given())

    def given(self) -> dict[str, Any]:
        """The fields set explicitly, by name."""
        return {name: getattr(self, name) for name in self.model_fields_set}


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

    def switched(
        self, model: str, *, reason: str = "", reservation_id: str | None = None, reserved: float = 0.0
    ) -> Decision:
        """This decision for another of its candidates, ``model`` (e.g. the runner-up of a top-n selection)."""
        return self.model_copy(
            update={
                "model": model,
                "utility": self.utilities.get(model, float("nan")),
                "reason": reason or self.reason,
                "reservation_id": reservation_id,
                "reserved_cost": reserved,
            }
        )

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
