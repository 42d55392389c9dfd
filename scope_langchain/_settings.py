"""The router's settings: the fields ``ScopeRouter`` and ``ScopeChatModel`` share, their validation, and the
per-call ``config["configurable"]`` keys laid over them."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable
from pydantic import BaseModel, ConfigDict

from scope_shared import ConfigError, RouteOptions, ScopeEngine, UnknownModelError
from scope_shared.cascade import Cascade
from scope_shared.transient import is_transient

#: Keys of ``config["configurable"]`` read on every call.
CONFIG_KEYS = ("value_per_correct", "max_cost_per_call", "force_model", "candidates")

QuestionFn = Callable[[Sequence[BaseMessage]], str]
TokenCounter = Callable[[Sequence[BaseMessage]], int]


def _known(models: Mapping[str, Any], name: Any, what: str) -> str:
    if not isinstance(name, str) or name not in models:
        msg = f"{what} {name!r} is not one of this router's models: {sorted(models)}"
        raise UnknownModelError(msg)
    return name


def with_model_override(configurable: Mapping[str, Any], model: Any, models: Mapping[str, Any]) -> dict[str, Any]:
    """``configurable`` with a per-call ``model=`` keyword (LangChain's model override) as ``force_model``.

    The router books and bills the model it calls, so ``model=`` never reaches the wrapped model: it must name
    one of the router's models, and forces it.
    """
    out = dict(configurable)
    if model is None:
        return out
    if not isinstance(model, str) or model not in models:
        msg = (
            f"model={model!r} is not one of this router's models: {sorted(models)}; a per-call model= forces one "
            "of them (the router books and bills the model it calls, so it never passes model= on)"
        )
        raise UnknownModelError(msg)
    forced = out.get("force_model")
    if forced is not None and forced != model:
        msg = f"model={model!r} and configurable force_model={forced!r} disagree; give one of them"
        raise ConfigError(msg)
    out["force_model"] = model
    return out


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


#: Arguments a router does not take, with what to do instead.
_ELSEWHERE = {
    "timeout": "a timeout belongs to each wrapped model's client: set it where you build them, e.g. "
    "ChatOpenAI(model=..., timeout=30)",
    "request_timeout": "a timeout belongs to each wrapped model's client: set it where you build them",
    "api_key": "the router holds no credentials: give each wrapped model its own",
    "base_url": "the router has no endpoint: each wrapped model has its own",
    "model": "the router chooses among models={name: chat model}; force one with force_model= (or per call with "
    "model= / configurable force_model)",
    "model_name": "the router chooses among models={name: chat model}; force one with force_model=",
    "temperature": "set it on each wrapped model, or pass it per call: router.invoke(x, temperature=0) passes it "
    "to the chosen model (ScopeChatModel also takes it as a default)",
    "max_tokens": "set it on each wrapped model, or pass it per call (ScopeChatModel also takes it as a default)",
    "stop": "pass it per call: router.invoke(x, stop=[...]) (ScopeChatModel also takes it as a default)",
    "max_retries": "the router's retries of transient errors are retries= (ScopeChatModel also takes max_retries=)",
}


def check_names(owner: type[BaseModel], given: Mapping[str, Any]) -> None:
    """Refuse constructor arguments that are not fields of ``owner`` (pydantic would drop them silently)."""
    known = set(owner.model_fields) | {f.alias for f in owner.model_fields.values() if f.alias}
    for name in given:
        if name in known:
            continue
        hint = _ELSEWHERE.get(name)
        if hint is not None:
            msg = f"{owner.__name__} does not take {name}=: {hint}"
        else:
            msg = f"{owner.__name__} got an unknown argument {name!r}; it takes {sorted(known)}"
        raise ConfigError(msg)


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
    cascade = options.get("cascade")
    if cascade is not None and not isinstance(cascade, Cascade):
        msg = f"cascade must be a scope_shared.cascade.Cascade, got {type(cascade).__name__}"
        raise ConfigError(msg)
    for key in ("question", "token_counter", "retry_if"):
        fn = options.get(key)
        if fn is not None and not callable(fn):
            msg = f"{key} must be callable, got {type(fn).__name__}"
            raise ConfigError(msg)


class RouterFields(BaseModel):
    """The fields and the validating constructor that :class:`ScopeRouter` and :class:`ScopeChatModel` share
    (documented on ``ScopeRouter``).

    ``value_per_correct`` and ``max_cost_per_call`` left out take the engine's options (``engine.options``,
    fixed when the engine was built), read once here; they stay pydantic fields so that
    ``configurable_fields`` can expose them.
    """

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
    cascade: Cascade | None = None

    def __init__(self, *, engine: ScopeEngine, models: Mapping[str, Runnable[Any, Any]], **kwargs: Any) -> None:
        check_names(type(self), kwargs)
        validate_setup(engine, models, kwargs)
        kwargs.setdefault("value_per_correct", engine.options.value_per_correct)
        kwargs.setdefault("max_cost_per_call", engine.options.max_cost_per_call)
        super().__init__(engine=engine, models=dict(models), **kwargs)
