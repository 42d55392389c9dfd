"""``ScopeRouter``: a runnable that sends each call to the chat model with the best expected utility."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, NamedTuple

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableSerializable
from langchain_core.runnables.config import ensure_config, get_executor_for_config
from langchain_core.runnables.utils import gather_with_concurrency

from scope_langchain import _cascade
from scope_langchain._call import acall, call
from scope_langchain._dispatch import Dispatcher, acapture, capture, ready
from scope_langchain._settings import RouterFields
from scope_langchain._stream import astream, stream
from scope_shared import Decision

__all__ = ["ScopeRoute", "ScopeRouter"]

logger = logging.getLogger(__name__)


class ScopeRoute(NamedTuple):
    """A routing decision without a call: the chosen model's name and the full decision."""

    model: str
    decision: Decision


class ScopeRouter(RouterFields, RunnableSerializable[LanguageModelInput, BaseMessage]):
    """Routes each call to one of several chat models by expected utility, then calls it.

    Input is anything a chat model accepts (str, messages, ``PromptValue``), so ``prompt | router |
    StrOutputParser()`` works. The router routes on the question (by default the last human message that has
    text; see :func:`~scope_langchain.last_question`), calls the chosen model with the whole conversation,
    and returns its message with the decision in ``response_metadata["scope"]``: the chosen model, every
    candidate's ``p_correct``, expected output tokens, expected cost and utility, the degraded flag and
    reason, the chosen model's ``run_id``, the models that ``failed`` before it (with their errors, credentials
    masked) and the ``actual_cost`` when the model reported ``usage_metadata``; ``response_metadata
    ["model_name"]`` is the chosen model. With a budget, the reservation is settled with that real cost (at
    the expected cost, with a warning, when the model reports no usage). A model that does not stream natively
    streams its whole answer as one chunk.

    Per call, ``config["configurable"]`` may set ``value_per_correct`` (USD a correct answer is worth;
    ``None`` = accuracy only), ``max_cost_per_call`` (USD), ``force_model`` and ``candidates`` (a subset of
    the models), e.g. ``router.with_config(configurable={"value_per_correct": 0.01})``. The same fields
    can be exposed under ids of your choice with ``router.configurable_fields(...)``. Other call keyword
    arguments (``stop``, ``temperature``, ...) are passed to the chosen model, except ``model=``: it must name
    one of the models and forces it (the router books and bills the model it calls, so it never passes
    ``model=`` on).

    If the chosen model raises before producing output, transient errors (:func:`is_transient`) are retried
    on it (``retries`` times, exponential backoff from ``retry_wait`` seconds, via tenacity); then the next
    best candidate that still fits the budget is tried, at most ``max_fallbacks`` times, for errors in
    ``fallback_on``. A forced model is never replaced, and a stream that has yielded a chunk is never
    retried.

    Args:
        engine: the :class:`~scope_shared.ScopeEngine` that decides.
        models: ``{card name: chat model}``; every name must be a model card of the engine (the engine may
            know more models; only these are candidates).
        value_per_correct: default trade-off (left out: ``engine.options.value_per_correct``, read at
            construction; the engine's options are fixed when the engine is built).
        max_cost_per_call: default per-call cap in USD (left out: ``engine.options.max_cost_per_call``, read
            at construction).
        force_model: always use this model (still estimated, reserved and reported).
        question: ``messages -> str``, the text to route on (default :func:`last_question`).
        token_counter: ``messages -> int``, the prompt's input tokens for cost estimates (default: the
            engine's characters-based estimate of the whole conversation), e.g.
            ``chat.get_num_tokens_from_messages``.
        retries: extra attempts on the same model for transient errors.
        retry_wait: first backoff in seconds (doubling, with as much jitter).
        max_fallbacks: other models tried after the chosen one fails.
        fallback_on: exception types that trigger a fallback.
        retry_if: predicate for transient errors (default :func:`is_transient`).
        cascade: a :class:`~scope_shared.cascade.Cascade`: each call then looks at each answer before deciding
            whether to return it or to call another model (docs/cascade.md). ``response_metadata["scope"]``
            then also holds ``cascade``: every step (model, run id, answer, a summary of the response, the
            checkers' evidence, P(correct), cost) and why it stopped; ``stream`` yields the returned answer as
            one chunk once the cascade has ended; a forced model never cascades; ``batch`` runs each input's
            cascade on its own. Each step is a child run, so the outcome handler records every step.

    Any other argument is a :class:`~scope_shared.ConfigError` that says where the setting belongs.
    """

    def __repr__(self) -> str:
        return (
            f"ScopeRouter(models={list(self.models)}, value_per_correct={self.value_per_correct}, "
            f"max_cost_per_call={self.max_cost_per_call}, force_model={self.force_model!r})"
        )

    def _dispatcher(self) -> Dispatcher:
        return Dispatcher.of(self)

    # -- deciding only ---------------------------------------------------------------------------

    def route(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, reserve: bool = False
    ) -> ScopeRoute:
        """Decide which model should answer, without calling it.

        With ``reserve=True`` and a budget, the chosen model's expected cost is held until you call
        ``engine.settle(decision, ...)`` or ``engine.release(decision)``; the default only decides (and
        so does not see the budget).
        """
        config = ensure_config(config)
        d = self._dispatcher()
        decision = d.decide(d.prepare(input, config.get("configurable")), reserve=reserve)
        return ScopeRoute(decision.model, decision)

    async def aroute(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, reserve: bool = False
    ) -> ScopeRoute:
        """Async form of :meth:`route`."""
        config = ensure_config(config)
        d = self._dispatcher()
        decision = await d.adecide(d.prepare(input, config.get("configurable")), reserve=reserve)
        return ScopeRoute(decision.model, decision)

    def selector(self) -> Runnable[LanguageModelInput, str]:
        """A runnable that returns the chosen model's name only (LangChain's router convention), e.g. the
        ``key`` of a :class:`~langchain_core.runnables.RouterRunnable`."""

        def select(value: LanguageModelInput, config: RunnableConfig) -> str:
            return self.route(value, config).model

        async def aselect(value: LanguageModelInput, config: RunnableConfig) -> str:
            return (await self.aroute(value, config)).model

        return RunnableLambda(select, afunc=aselect, name="ScopeSelector")

    # -- invoke ----------------------------------------------------------------------------------

    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> BaseMessage:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def _invoke(
        self,
        value: LanguageModelInput,
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> BaseMessage:
        d = self._dispatcher()
        p = d.prepare(value, config.get("configurable"), kwargs.pop("model", None))
        if d.cascading(p):
            return _cascade.run(d, p, config, kwargs)
        return call(d, p, d.decide(p), config, kwargs)

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> BaseMessage:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    async def _ainvoke(
        self,
        value: LanguageModelInput,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> BaseMessage:
        d = self._dispatcher()
        p = d.prepare(value, config.get("configurable"), kwargs.pop("model", None))
        if d.cascading(p):
            return await _cascade.arun(d, p, config, kwargs)
        return await acall(d, p, await d.adecide(p), config, kwargs)

    # -- batch -----------------------------------------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """Route every input in one engine call (per distinct settings), then call the chosen models
        concurrently (``max_concurrency`` from the config)."""
        if not inputs:
            return []
        return self._batch_with_config(self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _batch(
        self,
        inputs: list[LanguageModelInput],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
        **kwargs: Any,
    ) -> list[Exception | BaseMessage]:
        d = self._dispatcher()
        model = kwargs.pop("model", None)
        prepared = d.prepare_batch(inputs, config, model)
        if d.cascade is not None:  # each input runs its own cascade (each step is decided on its answers)
            again = kwargs if model is None else {**kwargs, "model": model}

            def own(i: int) -> Exception | BaseMessage:
                p = prepared[i]
                if isinstance(p, Exception):
                    return p
                return capture(self._invoke, inputs[i], run_manager[i], config[i], **again)

            with get_executor_for_config(config[0]) as executor:
                return list(executor.map(own, range(len(inputs))))
        todo = ready(prepared, d.decide_batch(prepared))

        def one(i: int) -> Exception | BaseMessage:
            item = todo[i]
            return item if isinstance(item, Exception) else capture(call, d, *item, config[i], kwargs)

        with get_executor_for_config(config[0]) as executor:
            return list(executor.map(one, range(len(inputs))))

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """Async form of :meth:`batch`."""
        if not inputs:
            return []
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    async def _abatch(
        self,
        inputs: list[LanguageModelInput],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
        **kwargs: Any,
    ) -> list[Exception | BaseMessage]:
        d = self._dispatcher()
        model = kwargs.pop("model", None)
        prepared = d.prepare_batch(inputs, config, model)
        if d.cascade is not None:  # each input runs its own cascade (each step is decided on its answers)
            again = kwargs if model is None else {**kwargs, "model": model}

            async def own(i: int) -> Exception | BaseMessage:
                p = prepared[i]
                if isinstance(p, Exception):
                    return p
                return await acapture(self._ainvoke, inputs[i], run_manager[i], config[i], **again)

            limit = config[0].get("max_concurrency")
            return await gather_with_concurrency(limit, *(own(i) for i in range(len(inputs))))
        todo = ready(prepared, await d.adecide_batch(prepared))

        async def one(i: int) -> Exception | BaseMessage:
            item = todo[i]
            return item if isinstance(item, Exception) else await acapture(acall, d, *item, config[i], kwargs)

        limit = config[0].get("max_concurrency")
        return await gather_with_concurrency(limit, *(one(i) for i in range(len(inputs))))

    # -- stream ----------------------------------------------------------------------------------

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[BaseMessage]:
        """The chosen model's chunks; the decision is in the first chunk's ``response_metadata``."""
        yield from self._transform_stream_with_config(iter([input]), self._stream, config, **kwargs)

    def _stream(
        self,
        inputs: Iterator[LanguageModelInput],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Iterator[BaseMessage]:
        value = _last(inputs)
        d = self._dispatcher()
        p = d.prepare(value, config.get("configurable"), kwargs.pop("model", None))
        if d.cascading(p):  # a cascade reads each answer whole: the answer it returns comes as one chunk
            yield _cascade.as_one_chunk(_cascade.run(d, p, config, kwargs))
            return
        yield from stream(d, p, d.decide(p), config, kwargs)

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[BaseMessage]:
        """Async form of :meth:`stream`."""

        async def single() -> AsyncIterator[LanguageModelInput]:
            yield input

        async for chunk in self._atransform_stream_with_config(single(), self._astream, config, **kwargs):
            yield chunk

    async def _astream(
        self,
        inputs: AsyncIterator[LanguageModelInput],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AsyncIterator[BaseMessage]:
        value: Any = None
        async for value in inputs:  # noqa: B007 - the last input is the one routed
            pass
        d = self._dispatcher()
        p = d.prepare(value, config.get("configurable"), kwargs.pop("model", None))
        if d.cascading(p):  # a cascade reads each answer whole: the answer it returns comes as one chunk
            yield _cascade.as_one_chunk(await _cascade.arun(d, p, config, kwargs))
            return
        async for chunk in astream(d, p, await d.adecide(p), config, kwargs):
            yield chunk


def _last(inputs: Iterator[Any]) -> Any:
    value: Any = None
    for value in inputs:  # noqa: B007 - the last input is the one routed
        pass
    return value
