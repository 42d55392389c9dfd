"""``ScopeLLM``: one LlamaIndex LLM face over several LLMs, each call routed by SCOPE.

Every ``chat``/``complete`` (streaming and async too) asks the engine which model should answer, calls that
model's LLM, settles the budget reservation with the real token usage, stamps the decision onto the
response (``response.additional_kwargs["scope"]``) and announces the finished call with a
:class:`~scope_llamaindex.ScopeCallEvent` for :class:`~scope_llamaindex.ScopeEventHandler`.

``ScopeLLM`` is a ``FunctionCallingLLM``: ``chat_with_tools`` and its forms (what ``FunctionAgent``,
``predict_and_call`` and structured outputs use) are routed among the wrapped LLMs that support function
calling, and the chosen one formats the tools and reads its own tool calls. The wrapped LLM's call runs
inside ScopeLLM's span (streams included), so tracing tools show it as a child of the routed call.

One job, hence the length: the eight entry points LlamaIndex's ``LLM`` requires (chat and complete; sync,
async, streaming) over one routed call's life (route, call, settle or release, stamp, announce); the call in
flight lives in ``_calls``, function calling in ``_tools``, the cascade's driving in ``_cascade``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection

from scope_llamaindex import _cascade
from scope_llamaindex._calls import Call, R, Watch, aonce, call_id_of, in_span, once
from scope_llamaindex._responses import measure, prompt_of
from scope_llamaindex._tools import (
    ToolRequest,
    prepare_tool_chat,
    read_tool_calls,
    supports_function_calling,
    tool_request,
)
from scope_llamaindex.events import ScopeCallEvent
from scope_shared import ConfigError, Decision, RouteOptions, ScopeEngine, UnknownModelError
from scope_shared.cascade import Cascade, CascadePlan, CascadeStep

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["ScopeLLM"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

def last_user_message(messages: Sequence[ChatMessage]) -> str:
    """The text of the last user message (every message's text when there is none)."""
    for message in reversed(messages):
        if message.role == MessageRole.USER and (message.content or "").strip():
            return str(message.content)
    return "\n".join(str(m.content or "") for m in messages)


class ScopeLLM(FunctionCallingLLM):
    """Routes each call to one of several LLMs by SCOPE's expected utility.

    Args:
        engine: the routing engine.
        llms: model name (an engine model) -> the LlamaIndex LLM that serves it. Only these are candidates.
        options: :class:`~scope_shared.RouteOptions` (or a mapping of its fields) laid over the engine's, e.g.
            ``{"value_per_correct": 0.01}``; the same fields may also be given as keywords
            (``value_per_correct=0.01``). They are laid over ``engine.options`` once, at construction (the
            engine's options are fixed when the engine is built); unset fields keep the engine's settings.
        query_from: picks the text to route on from chat messages (default: the last user message).
            ``complete`` routes on the prompt.
        count_tokens: counts prompt tokens for the cost estimate and when a provider reports no usage
            (default: the store's characters-per-token estimate).
        callback_manager: LlamaIndex's legacy callback manager.
        cascade: a :class:`~scope_shared.cascade.Cascade`: each call then looks at each answer before deciding
            whether to return it or to call another LLM (docs/cascade.md). Every step is settled, stamped and
            announced like a routed call (one :class:`~scope_llamaindex.ScopeCallEvent` each, so the event
            handler records every step); the response returned also holds ``additional_kwargs["scope"]
            ["cascade"]``: every step and why it stopped. The ``stream_*`` methods run the cascade to its end
            and yield the returned answer as one chunk.

    Tool calls (``chat_with_tools``, ``FunctionAgent``, ``predict_and_call``) are routed among the wrapped
    LLMs that support function calling (a ``FunctionCallingLLM`` whose ``metadata.is_function_calling_model``
    is True: the OpenAI, Anthropic, Gemini, Mistral, Bedrock Converse, Ollama integrations, among others);
    ``metadata.is_function_calling_model`` is True when at least one does, and ``chat_with_tools`` raises
    :class:`~scope_shared.ConfigError` when none does.

    The response's ``additional_kwargs["scope"]`` holds ``call_id``, ``model``, ``decision`` (the decision's
    summary) and, once the call has finished, ``input_tokens``, ``output_tokens``, ``usage_reported`` and
    ``cost`` (USD), and for a tool call ``tool_calls`` (how many the chosen LLM asked for). A stream's chunks
    carry the first three; its last chunk gets the rest when it ends.
    """

    engine: ScopeEngine = Field(exclude=True)
    llms: dict[str, LLM] = Field(exclude=True)

    _options: RouteOptions = PrivateAttr(default_factory=RouteOptions)
    _query_from: Callable[[Sequence[ChatMessage]], str] | None = PrivateAttr(default=None)
    _count_tokens: Callable[[str], int] | None = PrivateAttr(default=None)
    _warned: set[str] = PrivateAttr(default_factory=set)
    _tool_models: list[str] = PrivateAttr(default_factory=list)
    _tool_options: RouteOptions = PrivateAttr(default_factory=RouteOptions)
    _cascade: Cascade | None = PrivateAttr(default=None)

    def __init__(
        self,
        *,
        engine: ScopeEngine,
        llms: Mapping[str, LLM],
        options: RouteOptions | Mapping[str, Any] | None = None,
        query_from: Callable[[Sequence[ChatMessage]], str] | None = None,
        count_tokens: Callable[[str], int] | None = None,
        callback_manager: CallbackManager | None = None,
        cascade: Cascade | None = None,
        **route_options: Any,
    ) -> None:
        if not isinstance(engine, ScopeEngine):
            msg = f"engine must be a ScopeEngine, got {type(engine).__name__}"
            raise ConfigError(msg)
        if not isinstance(llms, Mapping) or not llms:
            msg = "llms must be a non-empty mapping of model name -> LlamaIndex LLM"
            raise ConfigError(msg)
        for name, llm in llms.items():
            if name not in engine.models:
                msg = f"llms key {name!r} is not a model of the engine; known: {sorted(engine.models)}"
                raise UnknownModelError(msg)
            if not isinstance(llm, LLM):
                msg = f"llms[{name!r}] must be a LlamaIndex LLM, got {type(llm).__name__}"
                raise ConfigError(msg)
        if cascade is not None and not isinstance(cascade, Cascade):
            msg = f"cascade must be a scope_shared.cascade.Cascade, got {type(cascade).__name__}"
            raise ConfigError(msg)
        given = RouteOptions.of(options, **route_options)
        for label, fn in (("query_from", query_from), ("count_tokens", count_tokens)):
            if fn is not None and not callable(fn):
                msg = f"{label} must be callable or None"
                raise ConfigError(msg)
        kwargs: dict[str, Any] = {"engine": engine, "llms": dict(llms)}
        if callback_manager is not None:
            kwargs["callback_manager"] = callback_manager
        super().__init__(**kwargs)
        self._options = engine.options.merged(given).merged({"candidates": list(llms)})
        self._tool_models = [name for name, llm in llms.items() if supports_function_calling(llm)]
        self._tool_options = self._options.merged({"candidates": self._tool_models or list(llms)})
        self._query_from = query_from
        self._count_tokens = count_tokens
        self._cascade = cascade

    @classmethod
    def class_name(cls) -> str:
        return "ScopeLLM"

    @property
    def metadata(self) -> LLMMetadata:
        metas = [llm.metadata for llm in self.llms.values()]
        return LLMMetadata(
            model_name="scope-router",
            context_window=min(m.context_window for m in metas),
            num_output=min(m.num_output for m in metas),
            is_chat_model=all(m.is_chat_model for m in metas),
            is_function_calling_model=bool(self._tool_models),
        )

    @property
    def tool_models(self) -> list[str]:
        """The wrapped models that support function calling: the candidates of a tool call."""
        return list(self._tool_models)

    # -- shared helpers: sync and async bodies differ only by await ------------------------------

    def _tokens(self, text: str) -> int:
        if self._count_tokens is not None:
            return int(self._count_tokens(text))
        return int(self.engine.estimate_tokens(text))

    def _route_kwargs(self, query: str, prompt: str, tools: ToolRequest | None) -> dict[str, Any]:
        tokens = float(self._tokens(prompt)) if self._count_tokens is not None or prompt != query else None
        return {"input_tokens": tokens, "options": self._options if tools is None else self._tool_options}

    def _call(self, decision: Decision, query: str, prompt: str, tools: ToolRequest | None) -> Call:
        llm = self.llms[decision.model]
        return Call(uuid.uuid4().hex, decision, query, prompt, llm, active_span_id.get(), tools)

    def _tool_calls(self, call: Call, response: Any) -> int:
        """How many tool calls the chosen LLM finds in its response (0 for a call without tools)."""
        if call.tools is None:
            return 0
        try:
            return len(call.tool_llm.get_tool_calls_from_response(response, error_on_no_tool_call=False))
        except Exception:
            logger.debug("%s: could not read tool calls from its response", call.model, exc_info=True)
            return 0

    def _stamp(self, call: Call) -> dict[str, Any]:
        return {"call_id": call.call_id, "model": call.model, "decision": call.decision.summary()}

    def _abort(self, call: Call) -> None:
        self.engine.release(call.decision)

    def _finish(self, call: Call, response: R, *, completed: bool = True) -> R:
        """Settle the reservation with the real usage, stamp the response and announce the call."""
        used = measure(response, call.prompt, self._tokens)
        if not used.reported and call.model not in self._warned:
            self._warned.add(call.model)
            logger.warning(
                "%s reported no token usage; its cost is settled from token counts estimated from the text "
                "(usage_reported=False in the response)",
                call.model,
            )
        inp, out = used.input_tokens, used.output_tokens
        cost = self.engine.cost_of(call.model, input_tokens=inp, output_tokens=out)
        self.engine.settle(call.decision, cost=cost)
        info = self._stamp(call)
        info.update(input_tokens=inp, output_tokens=out, usage_reported=used.reported, cost=cost)
        tool_calls = self._tool_calls(call, response)
        if call.tools is not None:
            info["tool_calls"] = tool_calls
        response.additional_kwargs["scope"] = info
        if completed:
            dispatcher.event(
                ScopeCallEvent(
                    call_id=call.call_id,
                    query=call.query,
                    model=call.model,
                    answer=used.answer,
                    input_tokens=inp,
                    output_tokens=out,
                    usage_reported=used.reported,
                    cost=cost,
                    decision=call.decision,
                    tool_calls=tool_calls,
                )
            )
        return response

    @contextmanager
    def _releasing(self, call: Call) -> Iterator[Call]:
        """Release the call's reservation if the chosen LLM raises."""
        try:
            yield call
        except BaseException:
            self._abort(call)
            raise

    @contextmanager
    def _routed(self, query: str, prompt: str, tools: ToolRequest | None = None) -> Iterator[Call]:
        """Route ``query`` and hold the chosen LLM's call (released if it raises)."""
        decision = self.engine.route(query, **self._route_kwargs(query, prompt, tools))
        with self._releasing(self._call(decision, query, prompt, tools)) as call:
            yield call

    @asynccontextmanager
    async def _arouted(self, query: str, prompt: str, tools: ToolRequest | None = None) -> AsyncIterator[Call]:
        """Async form of :meth:`_routed`."""
        decision = await self.engine.aroute(query, **self._route_kwargs(query, prompt, tools))
        with self._releasing(self._call(decision, query, prompt, tools)) as call:
            yield call

    @contextmanager
    def _watching(self, call: Call) -> Iterator[Watch[Any]]:
        """Stamp a stream's chunks; when it ends, settle what ran (or release, if nothing did: a stream that
        yielded nothing never cost anything we can count)."""
        watch: Watch[Any] = Watch(self._stamp(call))
        completed = False
        try:
            yield watch
            completed = True
        finally:
            if watch.last is None:
                self._abort(call)
            else:
                self._finish(call, watch.last, completed=completed)

    def _stream(self, call: Call, chunks: Generator[R, None, None]) -> Generator[R, None, None]:
        with self._watching(call) as watch:
            while True:
                with in_span(call.span_id):
                    chunk = next(chunks, None)
                if chunk is None:
                    return
                yield watch(chunk)

    async def _astream(self, call: Call, chunks: AsyncGenerator[R, None]) -> AsyncGenerator[R, None]:
        with self._watching(call) as watch:
            while True:
                with in_span(call.span_id):
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return
                yield watch(chunk)

    # -- cascades (scope_llamaindex._cascade makes the calls the plan asks for) -------------------

    def _cascade_or_raise(self) -> Cascade:
        if self._cascade is None:
            msg = "this ScopeLLM has no cascade"
            raise ConfigError(msg)
        return self._cascade

    def _plan(self, query: str, prompt: str) -> CascadePlan:
        return self._cascade_or_raise().start(self.engine, query, **self._route_kwargs(query, prompt, None))

    async def _aplan(self, query: str, prompt: str) -> CascadePlan:
        return await self._cascade_or_raise().astart(self.engine, query, **self._route_kwargs(query, prompt, None))

    def _cascaded(self, query: str, prompt: str, ask: Callable[[Call], R]) -> R:
        return _cascade.drive(
            self._plan(query, prompt), self._starter(query, prompt), ask, self._finish, call_id_of
        )

    async def _acascaded(self, query: str, prompt: str, ask: Callable[[Call], Awaitable[R]]) -> R:
        plan = await self._aplan(query, prompt)
        return await _cascade.adrive(plan, self._starter(query, prompt), ask, self._finish, call_id_of)

    def _starter(self, query: str, prompt: str) -> Callable[[CascadeStep], Call]:
        return lambda step: self._call(step.decision, query, prompt, None)

    # -- chat ------------------------------------------------------------------------------------

    def _chat_query(self, messages: Sequence[ChatMessage]) -> tuple[str, str]:
        """The text routed on and the whole prompt."""
        return (self._query_from or last_user_message)(messages), prompt_of(messages)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        tools = tool_request(kwargs)
        if self._cascade is not None and tools is None:  # a tool call's answer is no answer to compare
            return self._cascaded(*self._chat_query(messages), lambda c: c.llm.chat(messages, **kwargs))
        with self._routed(*self._chat_query(messages), tools) as call:
            if call.tools is None:
                response = call.llm.chat(messages, **kwargs)
            else:
                response = call.tool_llm.chat_with_tools(call.tools.tools, **call.tools.arguments(messages, kwargs))
        return self._finish(call, response)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        tools = tool_request(kwargs)
        if self._cascade is not None and tools is None:
            return await self._acascaded(*self._chat_query(messages), lambda c: c.llm.achat(messages, **kwargs))
        async with self._arouted(*self._chat_query(messages), tools) as call:
            if call.tools is None:
                response = await call.llm.achat(messages, **kwargs)
            else:
                response = await call.tool_llm.achat_with_tools(
                    call.tools.tools, **call.tools.arguments(messages, kwargs)
                )
        return self._finish(call, response)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        tools = tool_request(kwargs)
        if self._cascade is not None and tools is None:
            done = self._cascaded(*self._chat_query(messages), lambda c: c.llm.chat(messages, **kwargs))
            return once(_cascade.one_chunk(done))
        with self._routed(*self._chat_query(messages), tools) as call:
            if call.tools is None:
                chunks = call.llm.stream_chat(messages, **kwargs)
            else:
                chunks = call.tool_llm.stream_chat_with_tools(
                    call.tools.tools, **call.tools.arguments(messages, kwargs)
                )
            return self._stream(call, chunks)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        tools = tool_request(kwargs)
        if self._cascade is not None and tools is None:
            done = await self._acascaded(*self._chat_query(messages), lambda c: c.llm.achat(messages, **kwargs))
            return aonce(_cascade.one_chunk(done))
        async with self._arouted(*self._chat_query(messages), tools) as call:
            if call.tools is None:
                chunks = await call.llm.astream_chat(messages, **kwargs)
            else:
                chunks = await call.tool_llm.astream_chat_with_tools(
                    call.tools.tools, **call.tools.arguments(messages, kwargs)
                )
            return self._astream(call, chunks)

    # -- function calling ------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The messages, and the tool request that :meth:`chat` hands whole to the chosen LLM's
        ``chat_with_tools`` (each integration formats tools its own way)."""
        return prepare_tool_chat(
            self.llms,
            self._tool_models,
            tools,
            user_msg,
            chat_history,
            verbose=verbose,
            allow_parallel_tool_calls=allow_parallel_tool_calls,
            tool_required=tool_required,
            kwargs=kwargs,
        )

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The tool calls in a response, read by the LLM that wrote it (named by its ``scope`` stamp)."""
        return read_tool_calls(
            self.llms, self._tool_models, response, error_on_no_tool_call=error_on_no_tool_call, kwargs=kwargs
        )


    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        if self._cascade is not None:
            return self._cascaded(prompt, prompt, lambda c: c.llm.complete(prompt, formatted=formatted, **kwargs))
        with self._routed(prompt, prompt) as call:
            response = call.llm.complete(prompt, formatted=formatted, **kwargs)
        return self._finish(call, response)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        if self._cascade is not None:
            ask = lambda c: c.llm.acomplete(prompt, formatted=formatted, **kwargs)  # noqa: E731
            return await self._acascaded(prompt, prompt, ask)
        async with self._arouted(prompt, prompt) as call:
            response = await call.llm.acomplete(prompt, formatted=formatted, **kwargs)
        return self._finish(call, response)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        if self._cascade is not None:
            done = self._cascaded(prompt, prompt, lambda c: c.llm.complete(prompt, formatted=formatted, **kwargs))
            return once(_cascade.one_chunk(done))
        with self._routed(prompt, prompt) as call:
            return self._stream(call, call.llm.stream_complete(prompt, formatted=formatted, **kwargs))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        if self._cascade is not None:
            ask = lambda c: c.llm.acomplete(prompt, formatted=formatted, **kwargs)  # noqa: E731
            return aonce(_cascade.one_chunk(await self._acascaded(prompt, prompt, ask)))
        async with self._arouted(prompt, prompt) as call:
            return self._astream(call, await call.llm.astream_complete(prompt, formatted=formatted, **kwargs))
