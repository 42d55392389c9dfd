"""SCOPE predicting each candidate's correctness and output length from its record on similar anchors.

For every (query, candidate) pair the estimator shows SCOPE the candidate's own record on the ``k`` most
similar retrieved anchors (see :mod:`~scope_shared.estimators.scope.prompt`), samples ``samples`` answers
in one request (``n``), and aggregates them (:mod:`~scope_shared.estimators.scope.aggregate`). Unparsable
samples are counted and reported. The samples come from a :class:`ScopeBackend`: a vLLM server
(:class:`HTTPBackend`, built from ``base_url``) or in-process vLLM (``backend=InProcessBackend(...)``).
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from scope_shared.errors import ConfigError, EstimatorUnavailableError, NoAnchorDataError
from scope_shared.estimators.base import AnchorOutcome, AnchorRecord, Estimator, Prediction, QueryContext
from scope_shared.estimators.scope.aggregate import aggregate_samples, typical_tokens
from scope_shared.estimators.scope.backends import DEFAULT_SCOPE_MODEL, Completion, SamplingConfig, ScopeBackend
from scope_shared.estimators.scope.http import HTTPBackend
from scope_shared.estimators.scope.prompt import (
    SCOPE_COT,
    AnchorExample,
    ParsedSample,
    PromptTemplate,
    build_prompt,
    parse_output,
)
from scope_shared.types import DEFAULT_OUTPUT_TOKENS, AnchorEvidence

__all__ = ["EstimatorCounters", "OnNoAnchorData", "ScopeLLMEstimator"]

logger = logging.getLogger(__name__)

OnNoAnchorData = Literal["raise", "degrade"]

#: A sample that stopped at ``max_tokens``: whatever its last line says, the model did not end there.
_CUT_SAMPLE = ParsedSample(correct=None, length=None, analysis=None)


@dataclass(slots=True)
class EstimatorCounters:
    """Running totals of what the estimator asked the backend for (for benchmarks and evaluation)."""

    prompts: int = 0
    cache_hits: int = 0
    generated_tokens: int = 0
    samples: int = 0
    unparsed_samples: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, value in deltas.items():
                setattr(self, name, getattr(self, name) + value)


@dataclass(slots=True)
class _Job:
    """One distinct prompt of a batch and the (query index, model) slots waiting on it."""

    prompt: str
    key: str
    model: str
    ctx: QueryContext
    shown: list[tuple[AnchorRecord, AnchorOutcome]]
    slots: list[tuple[int, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Plan:
    rows: list[dict[str, Prediction]]
    jobs: dict[str, _Job]


class ScopeLLMEstimator(Estimator):
    """SCOPE (Cooolder/SCOPE) predicting each candidate's correctness and output length.

    Pass ``base_url`` for a vLLM server (the production path), or ``backend=InProcessBackend(...)`` for
    in-process vLLM.

    Args:
        base_url: a vLLM OpenAI-compatible server, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name; ``None`` uses the server's only model.
        api_key: bearer token for the server; never shown in repr or logs.
        backend: a :class:`ScopeBackend` to use instead of building an :class:`HTTPBackend`.
        k: anchors shown per prompt: the most similar retrieved anchors on which the target model has an
            outcome (SCOPE was trained with 5).
        samples, temperature, top_p, top_k, max_tokens, seed, structured_outputs: see
            :class:`SamplingConfig`.
        template: :data:`SCOPE_COT` (default) or :data:`SCOPE_NOCOT` for Cooolder/SCOPE_NoCoT.
        max_question_chars: cut the target and anchor questions to this many characters in the prompt,
            to keep long questions within the server's ``--max-model-len``; ``None`` (default) sends them
            whole, as in training. A prompt over the limit is rejected (400) and the engine falls back.
        cache_size: predictions kept, keyed by (template, backend, sampling, anchor_version, prompt);
            the prompt holds the query, the model and its anchor records. 0 disables the cache.
        on_no_anchor_data: when no retrieved anchor has an outcome for a candidate, ``"raise"``
            :class:`NoAnchorDataError`, or ``"degrade"``: use the model's overall record from the store,
            marked degraded (still raises when the model has no record at all).
        max_concurrency, timeout, connect_timeout, retries, backoff: see :class:`HTTPBackend`.
    """

    name = "scope"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str | None = DEFAULT_SCOPE_MODEL,
        api_key: str | None = None,
        backend: ScopeBackend | None = None,
        k: int = 5,
        samples: int = 8,
        temperature: float = 0.6,
        top_p: float = 0.95,
        top_k: int = 20,
        max_tokens: int = 1536,
        seed: int | None = None,
        structured_outputs: Mapping[str, Any] | None = None,
        template: PromptTemplate = SCOPE_COT,
        max_question_chars: int | None = None,
        cache_size: int = 4096,
        on_no_anchor_data: OnNoAnchorData = "raise",
        max_concurrency: int = 16,
        timeout: float = 300.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if backend is None and base_url is None:
            msg = "ScopeLLMEstimator needs base_url=... (a vLLM server) or backend=InProcessBackend(...)"
            raise ConfigError(msg)
        if backend is not None and base_url is not None:
            msg = "pass either base_url or backend, not both"
            raise ConfigError(msg)
        if k < 1:
            msg = f"k must be >= 1, got {k}"
            raise ConfigError(msg)
        if max_question_chars is not None and max_question_chars < 1:
            msg = f"max_question_chars must be >= 1 or None, got {max_question_chars}"
            raise ConfigError(msg)
        if cache_size < 0:
            msg = f"cache_size must be >= 0, got {cache_size}"
            raise ConfigError(msg)
        if on_no_anchor_data not in ("raise", "degrade"):
            msg = f"on_no_anchor_data must be 'raise' or 'degrade', got {on_no_anchor_data!r}"
            raise ConfigError(msg)
        self.sampling = SamplingConfig(
            n=samples,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            seed=seed,
            structured_outputs=structured_outputs,
        )
        if backend is None:
            assert base_url is not None
            backend = HTTPBackend(
                base_url=base_url,
                model=model,
                api_key=api_key,
                timeout=timeout,
                connect_timeout=connect_timeout,
                max_concurrency=max_concurrency,
                retries=retries,
                backoff=backoff,
            )
        self.backend = backend
        self.k = k
        self.template = template
        self.on_no_anchor_data: OnNoAnchorData = on_no_anchor_data
        self.cache_size = cache_size
        self.max_question_chars = max_question_chars
        self.counters = EstimatorCounters()
        self._cache: OrderedDict[str, Prediction] = OrderedDict()
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ScopeLLMEstimator(backend={self.backend!r}, k={self.k}, samples={self.sampling.n}, "
            f"temperature={self.sampling.temperature}, template={self.template.version!r}, "
            f"cache_size={self.cache_size})"
        )

    # -- the two entry points differ only by `await` ------------------------------------------

    @property
    def anchors_per_model(self) -> int | None:
        return self.k

    def _predict(self, queries: Sequence[QueryContext], models: Sequence[str]) -> list[dict[str, Prediction]]:
        plan = self._plan(queries, models)
        jobs = list(plan.jobs.values())
        completions = self.backend.generate([j.prompt for j in jobs], self.sampling)
        return self._finish(plan, jobs, completions)

    async def _apredict(self, queries: Sequence[QueryContext], models: Sequence[str]) -> list[dict[str, Prediction]]:
        plan = self._plan(queries, models)
        jobs = list(plan.jobs.values())
        completions = await self.backend.agenerate([j.prompt for j in jobs], self.sampling)
        return self._finish(plan, jobs, completions)

    def close(self) -> None:
        self.backend.close()

    def clear_cache(self) -> None:
        """Forget every cached prediction."""
        with self._cache_lock:
            self._cache.clear()

    # -- shared pure-ish helpers --------------------------------------------------------------

    def select_anchors(self, ctx: QueryContext, model: str) -> list[tuple[AnchorRecord, AnchorOutcome]]:
        """The ``k`` most similar retrieved anchors on which ``model`` has an outcome."""
        shown: list[tuple[AnchorRecord, AnchorOutcome]] = []
        for anchor in ctx.anchors:
            outcome = anchor.outcomes.get(model)
            if outcome is not None:
                shown.append((anchor, outcome))
                if len(shown) == self.k:
                    break
        return shown

    def build_prompt(self, ctx: QueryContext, model: str) -> str:
        """The exact prompt SCOPE gets for ``model`` on ``ctx`` (raises when no anchor has its record)."""
        shown = self.select_anchors(ctx, model)
        if not shown:
            raise NoAnchorDataError(self._no_anchor_message(model))
        return self._render(ctx, model, shown)

    def _render(self, ctx: QueryContext, model: str, shown: Sequence[tuple[AnchorRecord, AnchorOutcome]]) -> str:
        # Unknown lengths are shown as the model's typical length, else 0 (the authors' convention).
        fill = typical_tokens(ctx.stats.get(model)) or 0.0
        examples = [
            AnchorExample(
                question=self._cut(anchor.question),
                output_tokens=round(out.output_tokens if out.output_tokens is not None else fill),
                correct=out.correct >= 0.5,
            )
            for anchor, out in shown
        ]
        return build_prompt(self.template, target_question=self._cut(ctx.query), target_model=model, examples=examples)

    def _cut(self, text: str) -> str:
        return text if self.max_question_chars is None else text[: self.max_question_chars]

    def _no_anchor_message(self, model: str) -> str:
        return (
            f"no retrieved anchor has an outcome for model {model!r}, so SCOPE has nothing to reason "
            "from; record outcomes for it, retrieve more anchors, or pass on_no_anchor_data='degrade'"
        )

    def _cache_key(self, ctx: QueryContext, prompt: str) -> str:
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        return "|".join((self.template.version, self.backend.identity, self.sampling.key(), ctx.anchor_version, digest))

    def _cache_get(self, key: str) -> Prediction | None:
        if self.cache_size == 0:
            return None
        with self._cache_lock:
            pred = self._cache.get(key)
            if pred is not None:
                self._cache.move_to_end(key)
            return pred

    def _cache_put(self, key: str, pred: Prediction) -> None:
        if self.cache_size == 0 or pred.degraded:
            return
        with self._cache_lock:
            self._cache[key] = pred
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _plan(self, queries: Sequence[QueryContext], models: Sequence[str]) -> _Plan:
        rows: list[dict[str, Prediction]] = [{} for _ in queries]
        jobs: dict[str, _Job] = {}
        hits = 0
        for qi, ctx in enumerate(queries):
            for model in models:
                shown = self.select_anchors(ctx, model)
                if not shown:
                    rows[qi][model] = self._no_anchor_prediction(ctx, model)
                    continue
                prompt = self._render(ctx, model, shown)
                key = self._cache_key(ctx, prompt)
                cached = self._cache_get(key)
                if cached is not None:
                    hits += 1
                    rows[qi][model] = replace(cached, estimator_tokens=0)
                    continue
                job = jobs.get(key)
                if job is None:
                    job = jobs[key] = _Job(prompt=prompt, key=key, model=model, ctx=ctx, shown=shown)
                job.slots.append((qi, model))
        self.counters.add(cache_hits=hits, prompts=len(jobs))
        return _Plan(rows=rows, jobs=jobs)

    def _finish(
        self, plan: _Plan, jobs: Sequence[_Job], completions: Sequence[Completion]
    ) -> list[dict[str, Prediction]]:
        if len(completions) != len(jobs):
            msg = f"SCOPE backend returned {len(completions)} completions for {len(jobs)} prompts"
            raise EstimatorUnavailableError(msg)
        for job, completion in zip(jobs, completions, strict=True):
            pred = self._prediction(job, completion)
            self._cache_put(job.key, pred)
            for i, (qi, model) in enumerate(job.slots):
                # A duplicate slot in the same batch cost nothing extra.
                plan.rows[qi][model] = pred if i == 0 else replace(pred, estimator_tokens=0)
        return plan.rows

    def _no_anchor_prediction(self, ctx: QueryContext, model: str) -> Prediction:
        stats = ctx.stats.get(model)
        if self.on_no_anchor_data == "raise" or stats is None or stats.n == 0:
            raise NoAnchorDataError(self._no_anchor_message(model))
        reason = f"no retrieved anchor has an outcome for {model!r}; used its overall record (n={stats.n})"
        logger.warning("%s", reason)
        return Prediction(
            p_correct=stats.p_correct,
            output_tokens=typical_tokens(stats) or DEFAULT_OUTPUT_TOKENS,
            degraded=True,
            reason=reason,
        )

    def _prediction(self, job: _Job, completion: Completion) -> Prediction:
        quoted = [self._cut(job.ctx.query), *(self._cut(a.question) for a, _ in job.shown)]
        cut = completion.cut or (False,) * len(completion.texts)
        parsed = [
            _CUT_SAMPLE if was_cut else parse_output(text, quoted=quoted)
            for text, was_cut in zip(completion.texts, cut, strict=True)
        ]
        agg = aggregate_samples(parsed)
        shown_tokens = [o.output_tokens for _, o in job.shown if o.output_tokens is not None]
        evidence = tuple(
            AnchorEvidence(
                anchor_id=a.anchor_id,
                similarity=max(-1.0, min(1.0, a.similarity)),
                correct=o.correct,
                output_tokens=o.output_tokens,
            )
            for a, o in job.shown
        )
        self.counters.add(
            generated_tokens=completion.generated_tokens,
            samples=len(parsed),
            unparsed_samples=agg.unparsed,
        )
        fallback_tokens = (
            float(statistics.median(shown_tokens))
            if shown_tokens
            else typical_tokens(job.ctx.stats.get(job.model)) or DEFAULT_OUTPUT_TOKENS
        )
        reasons: list[str] = []
        degraded = False
        p = agg.p_correct
        if p is None:
            degraded = True
            p = sum(o.correct for _, o in job.shown) / len(job.shown)
            n_cut = sum(cut)
            cut_note = f" ({n_cut} cut at max_tokens={self.sampling.max_tokens})" if n_cut else ""
            reasons.append(
                f"SCOPE gave no parsable verdict in {len(parsed)} samples{cut_note}; used the mean of the "
                f"{len(job.shown)} anchor records in its prompt"
            )
            logger.warning("SCOPE unparsable for model %s: %s", job.model, reasons[-1])
        tokens = agg.output_tokens
        if not shown_tokens:
            tokens = fallback_tokens
            reasons.append(
                "no token counts among the anchors shown; output_tokens from the model's overall "
                "record or a default, not from SCOPE"
            )
        elif tokens is None:
            tokens = fallback_tokens
            reasons.append("SCOPE stated no length; output_tokens is the median of the anchors shown")
        return Prediction(
            p_correct=p,
            output_tokens=tokens,
            evidence=evidence,
            p_std=agg.p_std,
            explanation=agg.explanation,
            samples=len(parsed),
            unparsed_samples=agg.unparsed,
            degraded=degraded,
            reason="; ".join(reasons),
            estimator_tokens=completion.generated_tokens,
        )
