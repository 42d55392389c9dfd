"""``ScopeChatModel``: the router as a ``BaseChatModel``, for places that expect a chat model."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackManager,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config
from langchain_core.tools import BaseTool

from scope_langchain import _cascade
from scope_langchain._call import acall, call
from scope_langchain._dispatch import Dispatcher, Prepared
from scope_langchain._settings import CONFIG_KEYS, RouterFields
from scope_langchain._stream import astream, stream
from scope_shared import ConfigError

__all__ = ["ScopeChatModel"]

logger = logging.getLogger(__name__)

#: Call kwarg carrying the per-call ``configurable`` settings from ``invoke`` down to ``_generate``.
_SETTINGS_KWARG = "scope_configurable"


class ScopeChatModel(RouterFields, BaseChatModel):
    """The same routing as :class:`~scope_langchain.ScopeRouter`, as a chat model.

    It stands wherever a ``BaseChatModel`` is expected (agents, ``with_structured_output``, ``bind_tools``).
    Each call is routed and sent to the chosen wrapped model; the returned message carries the decision in
    ``response_metadata["scope"]``. Per-call settings come from ``config["configurable"]`` (the keys
    ``value_per_correct``, ``max_cost_per_call``, ``force_model``, ``candidates``) or from
    ``configurable_fields``. ``batch`` routes each input on its own (use ``ScopeRouter.batch`` to route a
    batch in one estimator call).

    ``bind_tools`` binds the tools to every wrapped model and returns a new ``ScopeChatModel`` over the
    bound models; ``with_structured_output`` uses it (tool calling, ``tool_choice="any"``). Both need every
    wrapped model to support tool calling, and say which one does not.

    Args are those of :class:`~scope_langchain.ScopeRouter`.
    """

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
        }

    def _dispatcher(self) -> Dispatcher:
        return Dispatcher.of(self)

    # -- per-call settings: BaseChatModel does not pass the config down to _generate -------------

    @staticmethod
    def _with_settings(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        configurable = ensure_config(config).get("configurable") or {}
        picked = {k: configurable[k] for k in CONFIG_KEYS if k in configurable}
        return {**kwargs, _SETTINGS_KWARG: picked} if picked else kwargs

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        return super().invoke(input, config, stop=stop, **self._with_settings(config, kwargs))

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        return await super().ainvoke(input, config, stop=stop, **self._with_settings(config, kwargs))

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        yield from super().stream(input, config, stop=stop, **self._with_settings(config, kwargs))

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        async for chunk in super().astream(input, config, stop=stop, **self._with_settings(config, kwargs)):
            yield chunk

    # -- generation ------------------------------------------------------------------------------

    def _prepare(
        self,
        messages: list[BaseMessage],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        stop: list[str] | None,
        kwargs: dict[str, Any],
    ) -> tuple[Dispatcher, Prepared, RunnableConfig, dict[str, Any]]:
        """The dispatcher, the prepared call, the wrapped model's config and its call kwargs."""
        configurable = kwargs.pop(_SETTINGS_KWARG, None) or {}
        config: RunnableConfig = {"callbacks": _child_callbacks(run_manager)} if run_manager else {}
        call_kwargs = {**kwargs, "stop": stop} if stop is not None else kwargs
        d = self._dispatcher()
        return d, d.prepare(messages, configurable), config, call_kwargs

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        d, p, config, call_kwargs = self._prepare(messages, run_manager, stop, kwargs)
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
        d, p, config, call_kwargs = self._prepare(messages, run_manager, stop, kwargs)
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
        d, p, config, call_kwargs = self._prepare(messages, run_manager, stop, kwargs)
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
        d, p, config, call_kwargs = self._prepare(messages, run_manager, stop, kwargs)
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


def _child_callbacks(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun) -> BaseCallbackManager:
    """Callbacks for the wrapped model's run, nested under this chat model's run (LLM run managers have no
    ``get_child``; this is what chain run managers do)."""
    manager: BaseCallbackManager
    if isinstance(run_manager, AsyncCallbackManagerForLLMRun):
        manager = AsyncCallbackManager(handlers=[], parent_run_id=run_manager.run_id)
    else:
        manager = CallbackManager(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return manager
