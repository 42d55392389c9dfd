"""``ScopeLLM``: one LlamaIndex LLM face over several LLMs, each call routed by SCOPE.

Every ``chat``/``complete`` (streaming and async too) asks the engine which model should answer, calls that
model's LLM, settles the budget reservation with the real token usage, stamps the decision onto the
response (``response.additional_kwargs["scope"]``) and announces the finished call with a
:class:`~scope_llamaindex.ScopeCallEvent` for :class:`~scope_llamaindex.ScopeEventHandler`.

``ScopeLLM`` is a ``FunctionCallingLLM``: ``chat_with_tools`` and its forms (what ``FunctionAgent``,
``predict_and_call`` and structured outputs use) are routed among the wrapped LLMs that support function
calling, and the chosen one formats the tools and reads its own tool calls. The wrapped LLM's call runs
inside ScopeLLM's span (streams included), so tracing tools show it as a child of the routed call.
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

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
from scope_llamaindex._responses import measure, prompt_of
from scope_llamaindex.events import ScopeCallEvent
from scope_shared import ConfigError, Decision, RouteOptions, ScopeEngine, UnknownModelError
from scope_shared.cascade import Cascade, CascadePlan, CascadeStep

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["ScopeLLM"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

R = TypeVar("R", ChatResponse, CompletionResponse)

# The chat kwarg that carries a chat_with_tools request from _prepare_chat_with_tools to chat().
_TOOLS = "scope_tool_request"


@dataclass(frozen=True, slots=True)
class _ToolRequest:
    """A ``chat_with_tools`` call, kept whole so the chosen LLM can prepare it in its own format."""

    tools: Sequence[BaseTool]
    verbose: bool = False
    allow_parallel_tool_calls: bool = False
    tool_required: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)

    def arguments(self, messages: Sequence[ChatMessage], extra: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the chosen LLM's ``chat_with_tools`` for ``messages``."""
        args: dict[str, Any] = {
            "chat_history": list(messages),
            "verbose": self.verbose,
            "allow_parallel_tool_calls": self.allow_parallel_tool_calls,
            **self.kwargs,
            **extra,
        }
        if self.tool_required:  # passed only when set: integrations older than the flag do not take it
            args["tool_required"] = True
        return args


def supports_function_calling(llm: LLM) -> bool:
    """Whether ``llm`` takes tools: a ``FunctionCallingLLM`` whose metadata says it is a function-calling model."""
    return isinstance(llm, FunctionCallingLLM) and bool(llm.metadata.is_function_calling_model)


@dataclass(frozen=True, slots=True)
class _Call:
    """A routed call in flight, and the span (ScopeLLM's) the chosen LLM's call runs under."""

    call_id: str
    decision: Decision
    query: str
    prompt: str
    llm: LLM
    span_id: str | None = None
    tools: _ToolRequest | None = None

    @property
    def model(self) -> str:
        return self.decision.model

    @property
    def tool_llm(self) -> FunctionCallingLLM:
        return cast(FunctionCallingLLM, self.llm)


@contextmanager
def _in_span(span_id: str | None) -> Iterator[None]:
    """Make ``span_id`` the active span: work a stream does lazily nests under the call that opened it."""
    if span_id is None:
        yield
        return
    token = active_span_id.set(span_id)
    try:
        yield
    finally:
        active_span_id.reset(token)


class _Watch(Generic[R]):
    """A stream in flight: stamps each chunk with the call and keeps the last one."""

    def __init__(self, stamp: dict[str, Any]) -> None:
        self.stamp = stamp
        self.last: R | None = None

    def __call__(self, chunk: R) -> R:
        chunk.additional_kwargs["scope"] = self.stamp
        self.last = chunk
        return chunk


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

    def _route_kwargs(self, query: str, prompt: str, tools: _ToolRequest | None) -> dict[str, Any]:
        tokens = float(self._tokens(prompt)) if self._count_tokens is not None or prompt != query else None
        return {"input_tokens": tokens, "options": self._options if tools is None else self._tool_options}

    def _call(self, decision: Decision, query: str, prompt: str, tools: _ToolRequest | None) -> _Call:
        llm = self.llms[decision.model]
        return _Call(uuid.uuid4().hex, decision, query, prompt, llm, active_span_id.get(), tools)

    def _tool_calls(self, call: _Call, response: Any) -> int:
        """How many tool calls the chosen LLM finds in its response (0 for a call without tools)."""
        if call.tools is None:
            return 0
        try:
            return len(call.tool_llm.get_tool_calls_from_response(response, error_on_no_tool_call=False))
        except Exception:
            logger.debug("%s: could not read tool calls from its response", call.model, exc_info=True)
            return 0

    def _stamp(self, call: _Call) -> dict[str, Any]:
        return {"call_id": call.call_id, "model": call.model, "decision": call.decision.summary()}

    def _abort(self, call: _Call) -> None:
        self.engine.release(call.decision)

    def _finish(self, call: _Call, response: R, *, completed: bool = True) -> R:
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
    def _releasing(self, call: _Call) -> Iterator[_Call]:
        """Release the call's reservation if the chosen LLM raises."""
        try:
            yield call
        except BaseException:
            self._abort(call)
            raise

    @contextmanager
    def _routed(self, query: str, prompt: str, tools: _ToolRequest | None = None) -> Iterator[_Call]:
        """Route ``query`` and hold the chosen LLM's call (released if it raises)."""
        decision = self.engine.route(query, **self._route_kwargs(query, prompt, tools))
        with self._releasing(self._call(decision, query, prompt, tools)) as call:
            yield call

    @asynccontextmanager
    async def _arouted(self, query: str, prompt: str, tools: _ToolRequest | None = None) -> AsyncIterator[_Call]:
        """Async form of :meth:`_routed`."""
        decision = await self.engine.aroute(query, **self._route_kwargs(query, prompt, tools))
        with self._releasing(self._call(decision, query, prompt, tools)) as call:
            yield call

    @contextmanager
    def _watching(self, call: _Call) -> Iterator[_Watch[Any]]:
        """Stamp a stream's chunks; when it ends, settle what ran (or release, if nothing did: a stream that
        yielded nothing never cost anything we can count)."""
        watch: _Watch[Any] = _Watch(self._stamp(call))
        completed = False
        try:
            yield watch
            completed = True
        finally:
            if watch.last is None:
                self._abort(call)
            else:
                self._finish(call, watch.last, completed=completed)

    def _stream(self, call: _Call, chunks: Generator[R, None, None]) -> Generator[R, None, None]:
        with self._watching(call) as watch:
            while True:
                with _in_span(call.span_id):
                    chunk = next(chunks, None)
                if chunk is None:
                    return
                yield watch(chunk)

    async def _astream(self, call: _Call, chunks: AsyncGenerator[R, None]) -> AsyncGenerator[R, None]:
        with self._watching(call) as watch:
            while True:
                with _in_span(call.span_id):
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

    def _cascaded(self, query: str, prompt: str, ask: Callable[[_Call], R]) -> R:
        return _cascade.drive(
            self._plan(query, prompt), self._starter(query, prompt), ask, self._finish, _call_id
        )

    async def _acascaded(self, query: str, prompt: str, ask: Callable[[_Call], Awaitable[R]]) -> R:
        plan = await self._aplan(query, prompt)
        return await _cascade.adrive(plan, self._starter(query, prompt), ask, self._finish, _call_id)

    def _starter(self, query: str, prompt: str) -> Callable[[CascadeStep], _Call]:
        return lambda step: self._call(step.decision, query, prompt, None)

    # -- chat ------------------------------------------------------------------------------------

    def _chat_query(self, messages: Sequence[ChatMessage]) -> tuple[str, str]:
        """The text routed on and the whole prompt."""
        return (self._query_from or last_user_message)(messages), prompt_of(messages)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        tools = _tool_request(kwargs)
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
        tools = _tool_request(kwargs)
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
        tools = _tool_request(kwargs)
        if self._cascade is not None and tools is None:
            done = self._cascaded(*self._chat_query(messages), lambda c: c.llm.chat(messages, **kwargs))
            return _once(_cascade.one_chunk(done))
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
        tools = _tool_request(kwargs)
        if self._cascade is not None and tools is None:
            done = await self._acascaded(*self._chat_query(messages), lambda c: c.llm.achat(messages, **kwargs))
            return _aonce(_cascade.one_chunk(done))
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
        if not self._tool_models:
            msg = (
                f"none of the wrapped LLMs supports function calling ({self._kinds(self.llms)}); wrap at least one "
                "FunctionCallingLLM whose metadata.is_function_calling_model is True (e.g. OpenAI, Anthropic), "
                "or use an agent that needs no tool calling (ReActAgent)"
            )
            raise ConfigError(msg)
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        request = _ToolRequest(
            tools=list(tools),
            verbose=verbose,
            allow_parallel_tool_calls=allow_parallel_tool_calls,
            tool_required=tool_required,
            kwargs=dict(kwargs),
        )
        return {"messages": messages, _TOOLS: request}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The tool calls in a response, read by the LLM that wrote it (named by its ``scope`` stamp)."""
        scope = response.additional_kwargs.get("scope")
        model = scope.get("model") if isinstance(scope, Mapping) else None
        if model in self.llms and model not in self._tool_models:
            if error_on_no_tool_call:
                msg = f"{model} answered without tool calls: it does not support function calling"
                raise ValueError(msg)
            return []
        if model in self._tool_models:
            llm = cast(FunctionCallingLLM, self.llms[model])
        else:
            llm = self._unstamped_reader()
        return llm.get_tool_calls_from_response(response, error_on_no_tool_call=error_on_no_tool_call, **kwargs)

    def _unstamped_reader(self) -> FunctionCallingLLM:
        """The LLM that reads tool calls of a response this ScopeLLM did not stamp: any, if all are one kind."""
        if not self._tool_models:
            msg = f"none of the wrapped LLMs supports function calling ({self._kinds(self.llms)})"
            raise ConfigError(msg)
        tool_llms = {name: self.llms[name] for name in self._tool_models}
        if len({type(llm) for llm in tool_llms.values()}) > 1:
            msg = (
                "this response carries no additional_kwargs['scope'] naming the model that wrote it, and the "
                f"function-calling LLMs read tool calls differently ({self._kinds(tool_llms)}); pass a "
                "response this ScopeLLM returned"
            )
            raise ConfigError(msg)
        return cast(FunctionCallingLLM, tool_llms[self._tool_models[0]])

    @staticmethod
    def _kinds(llms: Mapping[str, LLM]) -> str:
        return ", ".join(f"{name}: {type(llm).__name__}" for name, llm in llms.items())

    # -- completion ------------------------------------------------------------------------------

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
            return _once(_cascade.one_chunk(done))
        with self._routed(prompt, prompt) as call:
            return self._stream(call, call.llm.stream_complete(prompt, formatted=formatted, **kwargs))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        if self._cascade is not None:
            ask = lambda c: c.llm.acomplete(prompt, formatted=formatted, **kwargs)  # noqa: E731
            return _aonce(_cascade.one_chunk(await self._acascaded(prompt, prompt, ask)))
        async with self._arouted(prompt, prompt) as call:
            return self._astream(call, await call.llm.astream_complete(prompt, formatted=formatted, **kwargs))


def _call_id(call: _Call) -> str:
    return call.call_id


def _once(response: R) -> Generator[R, None, None]:
    yield response


async def _aonce(response: R) -> AsyncGenerator[R, None]:
    yield response


def _tool_request(kwargs: dict[str, Any]) -> _ToolRequest | None:
    """Take the tool request :meth:`ScopeLLM._prepare_chat_with_tools` put into a chat's kwargs."""
    request = kwargs.pop(_TOOLS, None)
    if request is not None and not isinstance(request, _ToolRequest):
        msg = f"{_TOOLS} is ScopeLLM's own chat argument; got {type(request).__name__}"
        raise ConfigError(msg)
    return request
