"""What a profiling call is expected to cost, and what the budget holds for it, before it is made.

From the suite's recorded token counts: the question's input tokens (recorded with the reference models, else
estimated from the prompt's length) and the output tokens the reference models produced on that question.
The *expected* cost takes their median output (the dry run adds these up); the *reservation* takes the largest
(a new model as verbose as the most verbose reference model still fits its reservation). A question no
reference model answered takes its task's recorded outputs (median and 90th percentile); a suite with none at
all takes :data:`~scope_shared.types.DEFAULT_OUTPUT_TOKENS` and four times that.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scope_shared.suites import AnchorSuite, SuiteQuestion
from scope_shared.types import DEFAULT_OUTPUT_TOKENS, ModelCard, estimate_tokens

__all__ = ["TokenGuess", "guess_tokens"]

_NO_RECORD = (DEFAULT_OUTPUT_TOKENS, 4 * DEFAULT_OUTPUT_TOKENS)


@dataclass(frozen=True, slots=True)
class TokenGuess:
    """Tokens a call is expected to use (``input_tokens``, ``output_tokens``) and those reserved for it."""

    input_tokens: float
    output_tokens: float
    reserve_input_tokens: float
    reserve_output_tokens: float
    source: str  # where the output guess comes from: "question", "task" or "default"

    def expected_cost(self, card: ModelCard) -> float:
        return card.cost(self.input_tokens, self.output_tokens)

    def reserve_cost(self, card: ModelCard) -> float:
        return card.cost(self.reserve_input_tokens, self.reserve_output_tokens)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _task_outputs(suite: AnchorSuite) -> dict[str, tuple[float, float]]:
    pooled: dict[str, list[float]] = defaultdict(list)
    for q in suite:
        pooled[q.task].extend(float(o.output_tokens) for o in q.outcomes.values() if o.output_tokens is not None)
    return {task: (statistics.median(v), _quantile(v, 0.9)) for task, v in pooled.items() if v}


def guess_tokens(
    suite: AnchorSuite,
    questions: Iterable[SuiteQuestion],
    prompts: Mapping[str, str],
    *,
    tokens_per_char: float,
    templated: bool,
) -> dict[str, TokenGuess]:
    """Each question's token guess, by query id.

    Args:
        suite: the suite (for its tasks' recorded outputs).
        questions: the questions to guess for.
        prompts: the text sent for each question, by query id.
        tokens_per_char: input tokens per character of prompt, where none was recorded.
        templated: the prompt is not the one the reference models were sent; its input tokens are estimated
            from its length (and reserved at the larger of that and the recorded count).
    """
    by_task = _task_outputs(suite)
    out: dict[str, TokenGuess] = {}
    for q in questions:
        estimated = estimate_tokens(prompts[q.query_id], tokens_per_char)
        recorded = float(q.input_tokens) if q.input_tokens is not None else None
        inp = recorded if recorded is not None and not templated else estimated
        outputs = [float(o.output_tokens) for o in q.outcomes.values() if o.output_tokens is not None]
        if outputs:
            expected, reserved, source = statistics.median(outputs), max(outputs), "question"
        elif q.task in by_task:
            (expected, reserved), source = by_task[q.task], "task"
        else:
            (expected, reserved), source = _NO_RECORD, "default"
        out[q.query_id] = TokenGuess(
            input_tokens=inp,
            output_tokens=expected,
            reserve_input_tokens=max(inp, estimated, recorded or 0.0),
            reserve_output_tokens=reserved,
            source=source,
        )
    return out
