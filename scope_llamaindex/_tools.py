"""ScopeLLM's function calling: the tool request a chat carries whole to the chosen LLM (each integration
formats tools its own way), and the tool calls of a response, read by the LLM that wrote it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection

from scope_shared import ConfigError

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["TOOLS", "ToolRequest", "prepare_tool_chat", "read_tool_calls", "supports_function_calling", "tool_request"]

# The chat kwarg that carries a chat_with_tools request from _prepare_chat_with_tools to chat().
TOOLS = "scope_tool_request"


@dataclass(frozen=True, slots=True)
class ToolRequest:
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


def tool_request(kwargs: dict[str, Any]) -> ToolRequest | None:
    """Take the tool request :func:`prepare_tool_chat` put into a chat's kwargs."""
    request = kwargs.pop(TOOLS, None)
    if request is not None and not isinstance(request, ToolRequest):
        msg = f"{TOOLS} is ScopeLLM's own chat argument; got {type(request).__name__}"
        raise ConfigError(msg)
    return request


def prepare_tool_chat(
    llms: Mapping[str, LLM],
    tool_models: Sequence[str],
    tools: Sequence[BaseTool],
    user_msg: str | ChatMessage | None,
    chat_history: list[ChatMessage] | None,
    *,
    verbose: bool,
    allow_parallel_tool_calls: bool,
    tool_required: bool,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """The messages, and the tool request that ScopeLLM's ``chat`` hands whole to the chosen LLM's
    ``chat_with_tools``; ``tool_models`` are the names in ``llms`` that support function calling."""
    if not tool_models:
        msg = (
            f"none of the wrapped LLMs supports function calling ({_kinds(llms)}); wrap at least one "
            "FunctionCallingLLM whose metadata.is_function_calling_model is True (e.g. OpenAI, Anthropic), "
            "or use an agent that needs no tool calling (ReActAgent)"
        )
        raise ConfigError(msg)
    messages = list(chat_history or [])
    if isinstance(user_msg, str):
        messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
    elif user_msg is not None:
        messages.append(user_msg)
    request = ToolRequest(
        tools=list(tools),
        verbose=verbose,
        allow_parallel_tool_calls=allow_parallel_tool_calls,
        tool_required=tool_required,
        kwargs=dict(kwargs),
    )
    return {"messages": messages, TOOLS: request}


def read_tool_calls(
    llms: Mapping[str, LLM],
    tool_models: Sequence[str],
    response: ChatResponse,
    *,
    error_on_no_tool_call: bool,
    kwargs: Mapping[str, Any],
) -> list[ToolSelection]:
    """The tool calls in a response, read by the LLM that wrote it (named by its ``scope`` stamp)."""
    scope = response.additional_kwargs.get("scope")
    model = scope.get("model") if isinstance(scope, Mapping) else None
    if model in llms and model not in tool_models:
        if error_on_no_tool_call:
            msg = f"{model} answered without tool calls: it does not support function calling"
            raise ValueError(msg)
        return []
    if model in tool_models:
        llm = cast(FunctionCallingLLM, llms[cast(str, model)])
    else:
        llm = _unstamped_reader(llms, tool_models)
    return llm.get_tool_calls_from_response(response, error_on_no_tool_call=error_on_no_tool_call, **kwargs)


def _unstamped_reader(llms: Mapping[str, LLM], tool_models: Sequence[str]) -> FunctionCallingLLM:
    """The LLM that reads tool calls of a response ScopeLLM did not stamp: any, if all are one kind."""
    if not tool_models:
        msg = f"none of the wrapped LLMs supports function calling ({_kinds(llms)})"
        raise ConfigError(msg)
    tool_llms = {name: llms[name] for name in tool_models}
    if len({type(llm) for llm in tool_llms.values()}) > 1:
        msg = (
            "this response carries no additional_kwargs['scope'] naming the model that wrote it, and the "
            f"function-calling LLMs read tool calls differently ({_kinds(tool_llms)}); pass a "
            "response this ScopeLLM returned"
        )
        raise ConfigError(msg)
    return cast(FunctionCallingLLM, tool_llms[tool_models[0]])


def _kinds(llms: Mapping[str, LLM]) -> str:
    return ", ".join(f"{name}: {type(llm).__name__}" for name, llm in llms.items())
