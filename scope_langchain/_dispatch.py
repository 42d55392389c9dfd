"""Deciding: one call's LangChain input -> question, tokens and settings -> the engine's decision (single or
batch), and settling the decision's reservation once the chosen model has answered.

Sync and async paths share the helpers here; their bodies differ only by ``await``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.runnables import Runnable, RunnableConfig

from scope_langchain._messages import conversation_text, last_question, to_messages
from scope_langchain._metadata import child_config
from scope_langchain._retry import Recovery
from scope_langchain._settings import QuestionFn, RouterFields, TokenCounter, resolve_settings, with_model_override
from scope_shared import BudgetExceededError, ConfigError, Decision, RouteOptions, ScopeEngine
from scope_shared.cascade import Cascade

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Prepared:
    """One call's input, ready to route."""

    messages: list[BaseMessage]
    question: str
    input_tokens: float | None
    settings: RouteOptions


def capture(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | Exception:
    """``fn(*args, **kwargs)``, or the exception it raised."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return exc


async def acapture(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T | Exception:
    """Async form of :func:`capture`."""
    try:
        return await fn(*args, **kwargs)
    except Exception as exc:
        return exc


def ready(
    prepared: Sequence[Prepared | Exception], decisions: Sequence[Decision | Exception]
) -> list[tuple[Prepared, Decision] | Exception]:
    """A batch's items ready to call, each as ``(prepared, decision)`` or the error that stopped it."""
    out: list[tuple[Prepared, Decision] | Exception] = []
    for p, d in zip(prepared, decisions, strict=True):
        out.append(p if isinstance(p, Exception) else d if isinstance(d, Exception) else (p, d))
    return out


class _Pending(Exception):
    """Placeholder for a batch item not routed yet (never raised)."""


_PENDING = _Pending()


@dataclass(frozen=True)
class Dispatcher:
    """Routes prepared calls through the engine; :mod:`._call` and :mod:`._stream` run the chosen model."""

    engine: ScopeEngine
    models: Mapping[str, Runnable[Any, Any]]
    defaults: RouteOptions
    question: QuestionFn | None
    token_counter: TokenCounter | None
    recovery: Recovery
    cascade: Cascade | None = None

    @classmethod
    def of(cls, owner: RouterFields) -> Dispatcher:
        """Build from a ScopeRouter or ScopeChatModel (their fields share these names)."""
        return cls(
            engine=owner.engine,
            models=owner.models,
            defaults=RouteOptions.of(
                value_per_correct=owner.value_per_correct,
                max_cost_per_call=owner.max_cost_per_call,
                force_model=owner.force_model,
                candidates=tuple(owner.models),
            ),
            question=owner.question,
            token_counter=owner.token_counter,
            recovery=Recovery.of(owner.engine, owner),
            cascade=owner.cascade,
        )

    def cascading(self, p: Prepared) -> bool:
        """Whether this call runs a cascade (one is set, and the call does not force a model)."""
        return self.cascade is not None and p.settings.force_model is None

    def cascade_of(self, p: Prepared) -> Cascade:
        if self.cascade is None or p.settings.force_model is not None:
            msg = "this call does not cascade (no cascade set, or a model is forced)"
            raise ConfigError(msg)
        return self.cascade

    # -- preparing and deciding ------------------------------------------------------------------

    def prepare(self, value: Any, configurable: Mapping[str, Any] | None, model: Any = None) -> Prepared:
        """One call's input, question, input tokens and settings (``model``: a per-call ``model=`` keyword,
        which forces that model)."""
        messages = to_messages(value)
        question = (self.question or last_question)(messages)
        if not isinstance(question, str) or not question.strip():
            msg = f"the question function returned {question!r}; it must return the text to route on"
            raise ConfigError(msg)
        tokens: float | None = None
        if self.token_counter is not None:
            tokens = float(self.token_counter(messages))
        else:
            whole = conversation_text(messages)
            if whole != question:  # system prompt, earlier turns: they are paid for too
                tokens = self.engine.estimate_tokens(whole)
        configurable = with_model_override(configurable or {}, model, self.models)
        settings = resolve_settings(self.defaults, configurable, self.models)
        return Prepared(messages, question, tokens, settings)

    def prepare_batch(
        self, inputs: Sequence[Any], configs: Sequence[RunnableConfig], model: Any = None
    ) -> list[Prepared | Exception]:
        """Each input prepared with its own config; an input that cannot be prepared is its error."""
        return [capture(self.prepare, x, c.get("configurable"), model) for x, c in zip(inputs, configs, strict=True)]

    def decide(self, p: Prepared, *, reserve: bool = True) -> Decision:
        options = p.settings.merged({"reserve": reserve})
        return self.engine.route(p.question, input_tokens=p.input_tokens, options=options)

    async def adecide(self, p: Prepared, *, reserve: bool = True) -> Decision:
        return await self.engine.aroute(
            p.question, input_tokens=p.input_tokens, options=p.settings.merged({"reserve": reserve})
        )

    def _batch_groups(self, prepared: Sequence[Prepared | Exception]) -> list[tuple[list[int], dict[str, Any]]]:
        """Per distinct settings: the items' indices and the engine's ``route_batch`` arguments (unreserved)."""
        groups: dict[RouteOptions, list[int]] = {}
        for i, p in enumerate(prepared):
            if isinstance(p, Prepared):
                groups.setdefault(p.settings, []).append(i)
        out = []
        for s, idx in groups.items():
            ps = [p for p in (prepared[i] for i in idx) if isinstance(p, Prepared)]
            kwargs = {"queries": [p.question for p in ps], "input_tokens": [p.input_tokens for p in ps]}
            out.append((idx, {**kwargs, "options": s.merged({"reserve": False})}))
        return out

    def _reserve_in_order(
        self,
        prepared: Sequence[Prepared | Exception],
        groups: Sequence[tuple[list[int], dict[str, Any]]],
        routed: Sequence[list[Decision] | Exception],
    ) -> list[Decision | Exception]:
        """Each item's decision (or its group's error), reserved in input order: routed without reserving (one
        estimator call per settings group), a budget that runs out fails the items that do not fit, not the
        whole batch."""
        out: list[Decision | Exception] = [p if isinstance(p, Exception) else _PENDING for p in prepared]
        for (idx, _), ds in zip(groups, routed, strict=True):
            items: Sequence[Decision | Exception] = [ds] * len(idx) if isinstance(ds, Exception) else ds
            for i, d in zip(idx, items, strict=True):
                out[i] = d
        if self.engine.remaining_budget is None:
            return out
        for i, d in enumerate(out):
            p = prepared[i]
            if isinstance(d, Decision) and isinstance(p, Prepared):
                try:
                    keep = {"max_cost_per_call": p.settings.max_cost_per_call, "force_model": p.settings.force_model}
                    out[i] = self.engine.redecide(d, options=keep)
                except BudgetExceededError as exc:
                    out[i] = exc
        return out

    def decide_batch(self, prepared: Sequence[Prepared | Exception]) -> list[Decision | Exception]:
        """Route a batch: one engine call per distinct settings, then reserve item by item."""
        groups = self._batch_groups(prepared)
        return self._reserve_in_order(prepared, groups, [capture(self.engine.route_batch, **kw) for _, kw in groups])

    async def adecide_batch(self, prepared: Sequence[Prepared | Exception]) -> list[Decision | Exception]:
        """Async form of :meth:`decide_batch`."""
        groups = self._batch_groups(prepared)
        routed = [await acapture(self.engine.aroute_batch, **kw) for _, kw in groups]
        return self._reserve_in_order(prepared, groups, routed)

    # -- the chosen model's run ------------------------------------------------------------------

    def child_config(
        self, config: RunnableConfig, p: Prepared, decision: Decision, run_id: uuid.UUID
    ) -> RunnableConfig:
        """The chosen model's config (the handler applies the default question rule itself)."""
        return child_config(config, decision, run_id, p.question if self.question is not None else None)

    def settle(self, decision: Decision, usage: UsageMetadata | None) -> float | None:
        """Settle the decision's reservation with the real cost; returns that cost when usage is known."""
        cost = None
        if usage is not None:
            cost = self.engine.cost_of(
                decision.model, input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"]
            )
        if decision.reservation_id is not None:
            if cost is None:
                logger.warning(
                    "%s reported no usage_metadata; its budget reservation is settled at the expected cost $%.6g",
                    decision.model,
                    decision.estimate.cost,
                )
            self.engine.settle(decision, cost=decision.estimate.cost if cost is None else cost)
        return cost
