"""Glue shared by :class:`ScopeRouter` and :class:`ScopeChatModel`: LangChain input -> question, config ->
settings, and the dispatch of a decision to the chosen model (retries, fallbacks, settling, metadata).

Sync and async paths share the pure helpers here; their bodies differ only by ``await``.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    BaseMessageChunk,
    ChatMessage,
    HumanMessage,
    convert_to_messages,
)
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, ConfigDict
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from scope_shared import BudgetExceededError, ConfigError, Decision, RouteOptions, ScopeEngine, UnknownModelError

logger = logging.getLogger(__name__)

#: Keys of ``config["configurable"]`` read on every call.
CONFIG_KEYS = ("value_per_correct", "max_cost_per_call", "force_model", "candidates")
#: Metadata keys set on the chosen model's run, read by :class:`ScopeOutcomeHandler`.
META_MODEL = "scope_model"
META_RESERVATION = "scope_reservation_id"
META_QUESTION = "scope_question"

M = TypeVar("M", bound=BaseMessage)
T = TypeVar("T")
QuestionFn = Callable[[Sequence[BaseMessage]], str]
TokenCounter = Callable[[Sequence[BaseMessage]], int]

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
_TRANSIENT_NAMES = (
    "RateLimit",
    "APIConnection",
    "APITimeout",
    "Timeout",
    "ServiceUnavailable",
    "InternalServerError",
    "Overloaded",
)


# -- messages --------------------------------------------------------------------------------------


def message_text(message: BaseMessage) -> str:
    """The text parts of a message's content (works with langchain-core 0.3 and 1.x)."""
    text: Any = message.text
    return str(text if isinstance(text, str) else text())


def to_messages(value: Any) -> list[BaseMessage]:
    """Anything a chat model accepts (str, messages, ``PromptValue``) as a list of messages."""
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, str):
        return [HumanMessage(content=value)]
    if isinstance(value, BaseMessage):
        return [value]
    if isinstance(value, Sequence):
        return convert_to_messages(value)
    msg = (
        f"cannot route a {type(value).__name__}; pass what a chat model accepts: "
        "a str, a list of messages or a PromptValue"
    )
    raise ConfigError(msg)


def _is_human(message: BaseMessage) -> bool:
    return message.type == "human" or (isinstance(message, ChatMessage) and message.role.lower() in ("user", "human"))


def last_question(messages: Sequence[BaseMessage]) -> str:
    """The text routed on: the last human message that has text, else the last message that has text.

    System prompts, earlier turns, tool results and images do not change which model is chosen; the whole
    conversation still counts toward the expected input tokens.
    """
    for message in reversed(messages):
        if _is_human(message) and message_text(message).strip():
            return message_text(message)
    for message in reversed(messages):
        if message_text(message).strip():
            return message_text(message)
    msg = "the conversation has no text to route on; send at least one message with text content"
    raise ConfigError(msg)


# -- errors ----------------------------------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying on the same model: timeouts, connection errors, HTTP 408/429/5xx.

    Recognises builtin and httpx transport errors, any error carrying such a ``status_code`` (or a
    ``response.status_code``), and provider errors named like ``RateLimitError`` or ``APITimeoutError``
    without importing the provider SDKs.
    """
    if isinstance(exc, TimeoutError | ConnectionError | httpx.TransportError):
        return True
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and status in _TRANSIENT_STATUS:
        return True
    name = type(exc).__name__
    return any(part in name for part in _TRANSIENT_NAMES)


@dataclass(frozen=True, slots=True)
class Failure:
    """One model that failed during a call."""

    model: str
    error: BaseException


# -- settings --------------------------------------------------------------------------------------


def _known(models: Mapping[str, Any], name: Any, what: str) -> str:
    if not isinstance(name, str) or name not in models:
        msg = f"{what} {name!r} is not one of this router's models: {sorted(models)}"
        raise UnknownModelError(msg)
    return name


def resolve_settings(
    defaults: RouteOptions, configurable: Mapping[str, Any], models: Mapping[str, Any]
) -> RouteOptions:
    """``defaults`` with the keys of :data:`CONFIG_KEYS` present in ``configurable`` laid over them."""
    over = {k: configurable[k] for k in CONFIG_KEYS if k in configurable}
    if over.get("force_model") is not None:
        _known(models, over["force_model"], "force_model")
    if "candidates" in over:
        if over["candidates"] is None:
            del over["candidates"]
        else:
            over = {**RouteOptions.of(candidates=over["candidates"]).given(), **over}
            over["candidates"] = tuple(_known(models, n, "candidate") for n in over["candidates"])
    return defaults.merged(over)


def validate_setup(engine: Any, models: Any, options: Mapping[str, Any]) -> None:
    """Check a router's constructor arguments; raises with what to do."""
    if not isinstance(engine, ScopeEngine):
        msg = (
            f"engine must be a ScopeEngine, got {type(engine).__name__}; "
            "build one with ScopeEngine(store=AnchorStore(...), models=[ModelCard(...), ...])"
        )
        raise ConfigError(msg)
    if not isinstance(models, Mapping) or not models:
        msg = "models must be a non-empty mapping {model card name: chat model}"
        raise ConfigError(msg)
    for name, model in models.items():
        if not isinstance(model, Runnable):
            msg = (
                f"models[{name!r}] is a {type(model).__name__}, not a LangChain Runnable; "
                "pass a chat model (or wrap a function in RunnableLambda)"
            )
            raise ConfigError(msg)
        if name not in engine.models:
            msg = (
                f"models[{name!r}] has no ModelCard in the engine; known cards: {sorted(engine.models)}. "
                "Name each chat model after its card (the card holds its prices)"
            )
            raise UnknownModelError(msg)
    RouteOptions.of({k: options[k] for k in ("value_per_correct", "max_cost_per_call") if k in options})
    force = options.get("force_model")
    if force is not None:
        _known(models, force, "force_model")
    for key in ("retries", "max_fallbacks"):
        value = options.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            msg = f"{key} must be an int >= 0, got {value!r}"
            raise ConfigError(msg)
    wait = options.get("retry_wait", 0.0)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < math.inf:
        msg = f"retry_wait must be a number of seconds >= 0, got {wait!r}"
        raise ConfigError(msg)
    fallback_on = options.get("fallback_on", (Exception,))
    if not isinstance(fallback_on, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in fallback_on
    ):
        msg = f"fallback_on must be a tuple of exception classes, got {fallback_on!r}"
        raise ConfigError(msg)
    for key in ("question", "token_counter", "retry_if"):
        fn = options.get(key)
        if fn is not None and not callable(fn):
            msg = f"{key} must be callable, got {type(fn).__name__}"
            raise ConfigError(msg)


class RouterFields(BaseModel):
    """The fields and the validating constructor that :class:`ScopeRouter` and :class:`ScopeChatModel` share
    (documented on ``ScopeRouter``); :meth:`Dispatcher.of` reads them."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: ScopeEngine
    models: dict[str, Runnable[Any, Any]]
    value_per_correct: float | None = None
    max_cost_per_call: float | None = None
    force_model: str | None = None
    question: QuestionFn | None = None
    token_counter: TokenCounter | None = None
    retries: int = 2
    retry_wait: float = 0.5
    max_fallbacks: int = 2
    fallback_on: tuple[type[BaseException], ...] = (Exception,)
    retry_if: Callable[[BaseException], bool] = is_transient

    def __init__(self, *, engine: ScopeEngine, models: Mapping[str, Runnable[Any, Any]], **kwargs: Any) -> None:
        validate_setup(engine, models, kwargs)
        kwargs.setdefault("value_per_correct", engine.value_per_correct)
        kwargs.setdefault("max_cost_per_call", engine.max_cost_per_call)
        super().__init__(engine=engine, models=dict(models), **kwargs)


# -- metadata --------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def scope_metadata(
    decision: Decision, run_id: uuid.UUID, failures: Sequence[Failure], cost: float | None
) -> dict[str, Any]:
    """What goes into ``response_metadata["scope"]``: the decision's summary, the chosen model's run id,
    the models that failed before it and the real cost (when the model reported its usage)."""
    meta: dict[str, Any] = _json_safe(decision.summary())
    meta["run_id"] = str(run_id)
    meta["failed"] = [{"model": f.model, "error": f"{type(f.error).__name__}: {f.error}"} for f in failures]
    if cost is not None:
        meta["actual_cost"] = cost
    return meta


def with_scope(message: M, scope: Mapping[str, Any]) -> M:
    """A copy of ``message`` with ``scope`` in its ``response_metadata``."""
    return message.model_copy(update={"response_metadata": {**message.response_metadata, "scope": dict(scope)}})


def _as_message(out: Any, model: str) -> BaseMessage:
    if isinstance(out, BaseMessage):
        return out
    if isinstance(out, str):
        return AIMessage(content=out)
    msg = f"model {model!r} returned a {type(out).__name__}; a routed model must return a message or a str"
    raise TypeError(msg)


def _as_chunk(out: Any, model: str) -> BaseMessageChunk:
    if isinstance(out, BaseMessageChunk):
        return out
    if isinstance(out, str):
        return AIMessageChunk(content=out)
    msg = f"model {model!r} streamed a {type(out).__name__}; a routed model must stream message chunks"
    raise TypeError(msg)


def _usage(message: BaseMessage) -> UsageMetadata | None:
    usage = getattr(message, "usage_metadata", None)
    return usage if usage else None


# -- dispatch --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """One call's input, ready to route."""

    messages: list[BaseMessage]
    question: str
    input_tokens: float | None
    settings: RouteOptions


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning(
        "transient error from the chosen model (attempt %d): %s: %s; retrying",
        state.attempt_number,
        type(exc).__name__,
        exc,
    )


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


@dataclass(frozen=True)
class Dispatcher:
    """Routes one prepared call and runs it on the chosen model, with retries and fallbacks."""

    engine: ScopeEngine
    models: Mapping[str, Runnable[Any, Any]]
    defaults: RouteOptions
    question: QuestionFn | None
    token_counter: TokenCounter | None
    retries: int
    retry_wait: float
    max_fallbacks: int
    fallback_on: tuple[type[BaseException], ...]
    retry_if: Callable[[BaseException], bool]

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
            retries=owner.retries,
            retry_wait=owner.retry_wait,
            max_fallbacks=owner.max_fallbacks,
            fallback_on=owner.fallback_on,
            retry_if=owner.retry_if,
        )

    # -- preparing and deciding ------------------------------------------------------------------

    def prepare(self, value: Any, configurable: Mapping[str, Any] | None) -> Prepared:
        messages = to_messages(value)
        question = (self.question or last_question)(messages)
        if not isinstance(question, str) or not question.strip():
            msg = f"the question function returned {question!r}; it must return the text to route on"
            raise ConfigError(msg)
        tokens: float | None = None
        if self.token_counter is not None:
            tokens = float(self.token_counter(messages))
        else:
            whole = "\n".join(t for t in (message_text(m) for m in messages) if t)
            if whole != question:  # system prompt, earlier turns: they are paid for too
                tokens = self.engine.estimate_tokens(whole)
        settings = resolve_settings(self.defaults, configurable or {}, self.models)
        return Prepared(messages, question, tokens, settings)

    def prepare_batch(
        self, inputs: Sequence[Any], configs: Sequence[RunnableConfig]
    ) -> list[Prepared | Exception]:
        """Each input prepared with its own config; an input that cannot be prepared is its error."""
        return [capture(self.prepare, x, c.get("configurable")) for x, c in zip(inputs, configs, strict=True)]

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

    # -- calling the chosen model ----------------------------------------------------------------

    def _retry_options(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.retries + 1),
            "wait": wait_exponential_jitter(initial=self.retry_wait, max=self.retry_wait * 16, jitter=self.retry_wait),
            "retry": retry_if_exception(self.retry_if),
            "reraise": True,
            "before_sleep": _log_retry,
        }

    def child_config(
        self, config: RunnableConfig, p: Prepared, decision: Decision, run_id: uuid.UUID
    ) -> RunnableConfig:
        """The chosen model's config: its own run id, and metadata naming the decision for the handler."""
        meta: dict[str, Any] = {**(config.get("metadata") or {}), META_MODEL: decision.model}
        if decision.reservation_id:
            meta[META_RESERVATION] = decision.reservation_id
        if self.question is not None:  # the handler applies the default rule itself
            meta[META_QUESTION] = p.question
        child: RunnableConfig = {**config, "metadata": meta, "run_id": run_id}
        child.pop("run_name", None)
        return child

    def _invoke_once(
        self, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
    ) -> tuple[uuid.UUID, BaseMessage]:
        run_id = uuid.uuid4()
        model = self.models[decision.model]
        out = model.invoke(p.messages, self.child_config(config, p, decision, run_id), **kwargs)
        return run_id, _as_message(out, decision.model)

    async def _ainvoke_once(
        self, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
    ) -> tuple[uuid.UUID, BaseMessage]:
        run_id = uuid.uuid4()
        model = self.models[decision.model]
        out = await model.ainvoke(p.messages, self.child_config(config, p, decision, run_id), **kwargs)
        return run_id, _as_message(out, decision.model)

    def _after_failure(self, p: Prepared, decision: Decision, exc: BaseException, failures: list[Failure]) -> Decision:
        """Release the failed call's reservation; return the fallback decision or raise the first error."""
        self.engine.release(decision)
        if not isinstance(exc, Exception):  # cancelled, interrupted: stop at once
            raise exc
        failures.append(Failure(decision.model, exc))
        logger.warning("routed model %s failed: %s: %s", decision.model, type(exc).__name__, exc)
        nxt = self._fallback(p, decision, exc, failures)
        if nxt is None:
            first = failures[0].error
            if len(failures) > 1 and hasattr(first, "add_note"):  # Python >= 3.11
                tried = ", ".join(f"{f.model} ({type(f.error).__name__})" for f in failures)
                first.add_note(f"scope-router tried: {tried}")
            raise first
        logger.warning("falling back from %s to %s", decision.model, nxt.model)
        return nxt

    def _fallback(
        self, p: Prepared, decision: Decision, exc: Exception, failures: Sequence[Failure]
    ) -> Decision | None:
        if not isinstance(exc, self.fallback_on) or len(failures) > self.max_fallbacks:
            return None
        if p.settings.force_model is not None or not decision.utilities:
            return None  # forced, or nothing fitted the limits: there is no ranked alternative
        failed = [f.model for f in failures]
        if not any(m in decision.utilities and m not in failed for m in decision.estimates):
            return None
        try:
            return self.engine.redecide(
                decision,
                exclude=failed,
                options={"max_cost_per_call": p.settings.max_cost_per_call},
                reason=f"fallback after {decision.model} failed ({type(exc).__name__})",
            )
        except (BudgetExceededError, ConfigError) as err:
            logger.warning("no fallback after %s failed: %s", decision.model, err)
            return None

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

    def call(self, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]) -> BaseMessage:
        """Run the decision; on failure retry transient errors, then fall back down the ranking."""
        failures: list[Failure] = []
        while True:
            try:
                done: tuple[uuid.UUID, BaseMessage] = Retrying(**self._retry_options())(
                    self._invoke_once, p, decision, config, kwargs
                )
            except BaseException as exc:
                decision = self._after_failure(p, decision, exc, failures)
                continue
            run_id, message = done
            cost = self.settle(decision, _usage(message))
            return with_scope(message, scope_metadata(decision, run_id, failures, cost))

    async def acall(
        self, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
    ) -> BaseMessage:
        """Async form of :meth:`call`."""
        failures: list[Failure] = []
        while True:
            try:
                done: tuple[uuid.UUID, BaseMessage] = await AsyncRetrying(**self._retry_options())(
                    self._ainvoke_once, p, decision, config, kwargs
                )
            except BaseException as exc:
                decision = self._after_failure(p, decision, exc, failures)
                continue
            run_id, message = done
            cost = self.settle(decision, _usage(message))
            return with_scope(message, scope_metadata(decision, run_id, failures, cost))

    # -- streaming -------------------------------------------------------------------------------

    def _open_stream(
        self, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
    ) -> tuple[uuid.UUID, Iterator[Any], BaseMessageChunk]:
        run_id = uuid.uuid4()
        model = self.models[decision.model]
        it = iter(model.stream(p.messages, self.child_config(config, p, decision, run_id), **kwargs))
        try:
            first = next(it)
        except StopIteration:
            msg = f"model {decision.model!r} streamed no output"
            raise ValueError(msg) from None
        return run_id, it, _as_chunk(first, decision.model)

    async def _aopen_stream(
        self, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
    ) -> tuple[uuid.UUID, AsyncIterator[Any], BaseMessageChunk]:
        run_id = uuid.uuid4()
        model = self.models[decision.model]
        it = model.astream(p.messages, self.child_config(config, p, decision, run_id), **kwargs).__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            msg = f"model {decision.model!r} streamed no output"
            raise ValueError(msg) from None
        return run_id, it, _as_chunk(first, decision.model)

    def stream(
        self, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
    ) -> Iterator[BaseMessageChunk]:
        """Stream the chosen model's chunks, the decision on the first one.

        Retries and fallbacks happen only until the first chunk arrives; after that an error propagates.
        """
        failures: list[Failure] = []
        while True:
            try:
                opened: tuple[uuid.UUID, Iterator[Any], BaseMessageChunk] = Retrying(**self._retry_options())(
                    self._open_stream, p, decision, config, kwargs
                )
            except BaseException as exc:
                decision = self._after_failure(p, decision, exc, failures)
                continue
            break
        run_id, it, first = opened
        usage = _usage(first)
        try:
            yield with_scope(first, scope_metadata(decision, run_id, failures, None))
            for raw in it:
                chunk = _as_chunk(raw, decision.model)
                if (u := _usage(chunk)) is not None:
                    usage = add_usage(usage, u)
                yield chunk
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            self.settle(decision, usage)

    async def astream(
        self, p: Prepared, decision: Decision, config: RunnableConfig, kwargs: Mapping[str, Any]
    ) -> AsyncIterator[BaseMessageChunk]:
        """Async form of :meth:`stream`."""
        failures: list[Failure] = []
        while True:
            try:
                aopened: tuple[uuid.UUID, AsyncIterator[Any], BaseMessageChunk] = await AsyncRetrying(
                    **self._retry_options()
                )(self._aopen_stream, p, decision, config, kwargs)
            except BaseException as exc:
                decision = self._after_failure(p, decision, exc, failures)
                continue
            break
        run_id, ait, first = aopened
        usage = _usage(first)
        try:
            yield with_scope(first, scope_metadata(decision, run_id, failures, None))
            async for raw in ait:
                chunk = _as_chunk(raw, decision.model)
                if (u := _usage(chunk)) is not None:
                    usage = add_usage(usage, u)
                yield chunk
        finally:
            aclose = getattr(ait, "aclose", None)
            if aclose is not None:
                await aclose()
            self.settle(decision, usage)


class _Pending(Exception):
    """Placeholder for a batch item not routed yet (never raised)."""


_PENDING = _Pending()
