"""``ScopeChatModel``: the router as a ``BaseChatModel``, for places that expect a chat model."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    BaseCallbackManager,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config
from langchain_core.tools import BaseTool

from scope_langchain import _cascade
from scope_langchain._call import acall, call
from scope_langchain._dispatch import Dispatcher, Prepared
from scope_langchain._messages import conversation_text
from scope_langchain._nesting import inner_callbacks
from scope_langchain._settings import CONFIG_KEYS, RouterFields
from scope_langchain._stream import astream, stream
from scope_shared import ConfigError

__all__ = ["ScopeChatModel"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Call:
    """One ``invoke``/``stream`` call of a ScopeChatModel, as its ``_generate``/``_stream`` needs it.

    ``BaseChatModel`` passes neither the config nor (in ``stream()``, and in ``invoke()`` when it streams) a run
    manager down; the public methods leave this in :data:`_CALL` instead of in the call's keyword arguments,
    which would reach the invocation params (traces) and the LLM cache key.
    """

    owner: ScopeChatModel
    configurable: dict[str, Any]
    config: RunnableConfig = field(repr=False)
    run_id: uuid.UUID


_CALL: ContextVar[_Call | None] = ContextVar("scope_chat_model_call", default=None)


class ScopeChatModel(RouterFields, BaseChatModel):
    """The same routing as :class:`~scope_langchain.ScopeRouter`, as a chat model.

    It stands wherever a ``BaseChatModel`` is expected (agents, ``with_structured_output``, ``bind_tools``).
    Each call is routed and sent to the chosen wrapped model; the returned message carries the decision in
    ``response_metadata["scope"]`` and the chosen model's name in ``response_metadata["model_name"]``.
    Per-call settings come from ``config["configurable"]`` (the keys ``value_per_correct``,
    ``max_cost_per_call``, ``force_model``, ``candidates``) or from ``configurable_fields``; a per-call
    ``model=`` must name one of the wrapped models and forces it (it is never passed on: the router books and
    bills the model it calls). ``batch`` routes each input on its own (use ``ScopeRouter.batch`` to route a
    batch in one estimator call).

    LangChain's standard parameters: ``temperature``, ``max_tokens`` and ``stop`` are passed to the chosen
    model on every call, as call arguments (``invoke(..., temperature=0)``), unless the call gives its own;
    ``max_retries`` is another name for ``retries``; ``streaming=True`` makes ``invoke`` stream the chosen
    model. ``timeout`` and ``api_key`` are refused: they are settings of each wrapped model's client.

    Callback handlers see a call as one chat-model run, this model's; tracers and ``ScopeOutcomeHandler``
    also see the chosen model's run, nested under it and tagged ``nostream`` (see
    :mod:`scope_langchain._nesting`). So streaming consumers get each token once, however it is called.

    ``bind_tools`` binds the tools to every wrapped model and returns a new ``ScopeChatModel`` over the bound
    models; ``with_structured_output`` uses it (tool calling, ``tool_choice="any"``). Both need every
    wrapped model to support tool calling, and say which one does not.

    Token counts (``get_num_tokens``, ``get_num_tokens_from_messages``) are the router's own: the
    ``token_counter`` when given, else the engine's estimate from the anchors' tokens per character, which is
    what routing prices the prompt with.

    Args are those of :class:`~scope_langchain.ScopeRouter`, plus ``temperature``, ``max_tokens``, ``stop``,
    ``streaming`` and ``max_retries`` above.
    """

    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    streaming: bool = False

    def __init__(self, **kwargs: Any) -> None:
        if "max_retries" in kwargs:
            retries = kwargs.pop("max_retries")
            if "retries" in kwargs and kwargs["retries"] != retries:
                msg = f"max_retries={retries!r} and retries={kwargs['retries']!r} disagree; give one of them"
                raise ConfigError(msg)
            kwargs["retries"] = retries
        _check_number(kwargs.get("temperature"), "temperature", "a number >= 0", lower=0.0, integer=False)
        _check_number(kwargs.get("max_tokens"), "max_tokens", "an int >= 1", lower=1.0, integer=True)
        super().__init__(**kwargs)

    @property
    def _llm_type(self) -> str:
        return "scope-router"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "models": sorted(self.models),
            "value_per_correct": self.value_per_correct,
            "max_cost_per_call": self.max_cost_per_call,
            "force_model": self.force_model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """LangSmith's standard params. The model is chosen per call, after the run starts: ``ls_model_name``
        is a per-call ``model=`` or ``force_model`` when one is set, else ``"scope-router"``."""
        params = super()._get_ls_params(stop=stop if stop is not None else self.stop, **kwargs)
        params["ls_provider"] = "scope-router"
        if "ls_model_name" not in params:
            params["ls_model_name"] = self.force_model or "scope-router"
        return params

    def _dispatcher(self) -> Dispatcher:
        return Dispatcher.of(self)

    # -- token counts ------------------------------------------------------------------------------

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Input tokens of ``messages`` as the router counts them: ``token_counter(messages)`` when given, else
        the engine's estimate of the conversation's text. ``tools`` are not counted."""
        if self.token_counter is not None:
            return int(self.token_counter(messages))
        return math.ceil(self.engine.estimate_tokens(conversation_text(messages)))

    def get_num_tokens(self, text: str) -> int:
        """Tokens of ``text``, counted as :meth:`get_num_tokens_from_messages` counts one human message."""
        return self.get_num_tokens_from_messages([HumanMessage(content=text)])

    # -- the public calls: leave the call's settings and run for _generate / _stream ----------------

    def _enter(self, config: RunnableConfig | None) -> tuple[RunnableConfig, Token[_Call | None]]:
        """The call's config, with the run id of this model's run fixed in advance, and the :class:`_Call`."""
        config = ensure_config(config)
        run_id = config.get("run_id") or uuid.uuid4()
        config = {**config, "run_id": run_id}
        configurable = config.get("configurable") or {}
        picked = {k: configurable[k] for k in CONFIG_KEYS if k in configurable}
        return config, _CALL.set(_Call(self, picked, config, run_id))

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        config, token = self._enter(config)
        try:
            return super().invoke(input, config, stop=stop, **kwargs)
        finally:
            _CALL.reset(token)

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        config, token = self._enter(config)
        try:
            return await super().ainvoke(input, config, stop=stop, **kwargs)
        finally:
            _CALL.reset(token)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        config, token = self._enter(config)
        try:
            it = super().stream(input, config, stop=stop, **kwargs)
            first = next(it, None)  # _stream reads the call here
        finally:
            _CALL.reset(token)
        if first is not None:
            yield first
            yield from it

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config, token = self._enter(config)
        try:
            it = super().astream(input, config, stop=stop, **kwargs)
            first = await anext(it, None)  # _astream reads the call here
        finally:
            _CALL.reset(token)
        try:
            if first is not None:
                yield first
                async for chunk in it:
                    yield chunk
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    # -- generation ------------------------------------------------------------------------------

    def _prepare(
        self,
        messages: list[BaseMessage],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        stop: list[str] | None,
        kwargs: dict[str, Any],
        *,
        is_async: bool,
    ) -> tuple[Dispatcher, Prepared, RunnableConfig, dict[str, Any]]:
        """The dispatcher, the prepared call, the wrapped model's config and its call kwargs."""
        current = _CALL.get()
        if current is not None and current.owner is self:
            _CALL.set(None)  # read once: a nested call of another model must not see it
        else:
            current = None
        config: RunnableConfig = {}
        if run_manager is not None:
            config["callbacks"] = inner_callbacks(
                run_manager.inheritable_handlers,
                run_manager.inheritable_tags,
                run_manager.inheritable_metadata,
                run_manager.run_id,
                is_async=is_async,
            )
        elif current is not None:
            config["callbacks"] = _callbacks_of(current, is_async=is_async)
        defaults = {"temperature": self.temperature, "max_tokens": self.max_tokens, "stop": self.stop}
        call_kwargs = {k: v for k, v in defaults.items() if v is not None}
        call_kwargs.update(kwargs)
        if stop is not None:
            call_kwargs["stop"] = stop
        model = call_kwargs.pop("model", None)
        d = self._dispatcher()
        return d, d.prepare(messages, current.configurable if current else {}, model), config, call_kwargs

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        d, p, config, call_kwargs = self._prepare(messages, run_manager, stop, kwargs, is_async=False)
        if d.cascading(p):
            message = _cascade.run(d, p, config, call_kwargs)
        else:
            message = call(d, p, d.decide(p), config, call_kwargs)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        d, p, config, call_kwargs = self._prepare(messages, run_manager, stop, kwargs, is_async=True)
        if d.cascading(p):
            message = await _cascade.arun(d, p, config, call_kwargs)
        else:
            message = await acall(d, p, await d.adecide(p), config, call_kwargs)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        d, p, config, call_kwargs = self._prepare(messages, run_manager, stop, kwargs, is_async=False)
        if d.cascading(p):  # a cascade reads each answer whole: the answer it returns comes as one chunk
            yield ChatGenerationChunk(message=_cascade.as_one_chunk(_cascade.run(d, p, config, call_kwargs)))
            return
        for chunk in stream(d, p, d.decide(p), config, call_kwargs):
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        d, p, config, call_kwargs = self._prepare(messages, run_manager, stop, kwargs, is_async=True)
        if d.cascading(p):  # a cascade reads each answer whole: the answer it returns comes as one chunk
            message = await _cascade.arun(d, p, config, call_kwargs)
            yield ChatGenerationChunk(message=_cascade.as_one_chunk(message))
            return
        async for chunk in astream(d, p, await d.adecide(p), config, call_kwargs):
            yield ChatGenerationChunk(message=chunk)

    # -- tools -----------------------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> ScopeChatModel:
        """Bind ``tools`` to every wrapped model; returns a ``ScopeChatModel`` over the bound models."""
        bound: dict[str, Runnable[Any, Any]] = {}
        for name, model in self.models.items():
            binder = getattr(model, "bind_tools", None)
            if binder is None:
                msg = (
                    f"model {name!r} ({type(model).__name__}) has no bind_tools; wrap tool-calling chat "
                    "models only, or bind tools before wrapping"
                )
                raise ConfigError(msg)
            try:
                choice = {"tool_choice": tool_choice} if tool_choice is not None else {}
                bound[name] = binder(tools, **choice, **kwargs)
            except NotImplementedError:
                msg = f"model {name!r} ({type(model).__name__}) does not support tool calling (bind_tools)"
                raise ConfigError(msg) from None
        return self.model_copy(update={"models": bound})


def _check_number(value: Any, name: str, must: str, *, lower: float, integer: bool) -> None:
    kinds = int if integer else int | float
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds) or not lower <= value < math.inf):
        msg = f"{name} must be {must}, got {value!r}"
        raise ConfigError(msg)


def _callbacks_of(current: _Call, *, is_async: bool) -> BaseCallbackManager:
    """The wrapped model's callbacks when LangChain gave ``_generate``/``_stream`` no run manager: the handlers,
    tags and metadata this model's run inherited from the call's config, under its pre-set run id."""
    config = current.config
    inherited = CallbackManager.configure(
        inheritable_callbacks=config.get("callbacks"),
        inheritable_tags=config.get("tags"),
        inheritable_metadata=config.get("metadata"),
    )
    return inner_callbacks(
        inherited.inheritable_handlers,
        inherited.inheritable_tags,
        inherited.inheritable_metadata,
        current.run_id,
        is_async=is_async,
    )
