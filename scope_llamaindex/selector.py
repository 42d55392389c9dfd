"""SCOPE as a LlamaIndex selector, for ``RouterQueryEngine`` and ``RouterRetriever``.

Each choice stands for a model of the engine: its ``ToolMetadata.name`` is the model's name, or a key of
``aliases`` that maps it to one. The selector routes the query over those models and returns the winner (or
the top ``max_outputs`` by utility within the cost limits) with a reason that explains the decision.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llama_index.core.base.base_selector import BaseSelector, MultiSelection, SelectorResult, SingleSelection
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle
from llama_index.core.tools.types import ToolMetadata

from scope_llamaindex._tickets import Ticket, open_tickets, watch_selections
from scope_shared import ConfigError, Decision, RouteOptions, ScopeEngine, UnknownModelError

__all__ = ["ScopeSelection", "ScopeSelector", "explain"]

logger = logging.getLogger(__name__)


class ScopeSelection(SingleSelection):
    """A :class:`SingleSelection` that also carries the SCOPE decision behind it: ``model`` (the engine
    model chosen), ``tool`` (the chosen tool's name: the model's, or its alias), ``decision``, ``call_id``.

    ``input_tokens``, ``output_tokens`` and ``cost`` sum the LLM calls attributed to this selection by a
    registered :class:`~scope_llamaindex.ScopeEventHandler` (zero without one).
    """

    model: str
    tool: str
    call_id: str
    decision: Decision
    _ticket: Ticket | None = PrivateAttr(default=None)

    @property
    def calls(self) -> int:
        return self._ticket.calls if self._ticket else 0

    @property
    def input_tokens(self) -> int:
        return self._ticket.input_tokens if self._ticket else 0

    @property
    def output_tokens(self) -> int:
        return self._ticket.output_tokens if self._ticket else 0

    @property
    def cost(self) -> float:
        """Real USD of the LLM calls attributed to this selection."""
        return self._ticket.cost if self._ticket else 0.0


def explain(decision: Decision, model: str | None = None) -> str:
    """One sentence: the chosen model's and the runner-up's expected accuracy and cost, and the anchors."""
    name = model or decision.model
    est = decision.estimates[name]
    text = f"SCOPE chose {name}: expected accuracy {est.p_correct:.0%} at ${est.cost:.6f}"
    others = [m for m in decision.ranking() if m != name and m in decision.utilities]
    if others:
        ru = decision.estimates[others[0]]
        text += f"; runner-up {others[0]}: {ru.p_correct:.0%} at ${ru.cost:.6f}"
    value = decision.value_per_correct
    if name in decision.utilities and others:
        if value is None or math.isinf(value):
            text += " (ranked by accuracy)"
        else:
            text += (
                f" (utility {decision.utilities[name]:.6g} vs {decision.utilities[others[0]]:.6g} "
                f"at ${value:.6g} per correct answer)"
            )
    if est.evidence:
        top = est.evidence[0]
        question = (top.question or "").replace("\n", " ").strip()
        snippet = f': "{question[:60]}{"..." if len(question) > 60 else ""}"' if question else ""
        text += (
            f"; based on similar anchors (nearest at similarity {top.similarity:.2f}{snippet}; "
            f"{len(est.evidence)} kept as evidence)"
        )
    else:
        text += f"; estimated by {est.estimator} without anchor evidence"
    if decision.excluded:
        text += f"; {len(decision.excluded)} excluded by cost limits"
    if decision.degraded:
        text += f"; degraded: {decision.reason}"
    return text + "."


class ScopeSelector(BaseSelector):
    """Selects among tools named after the engine's models by SCOPE's expected utility.

    Args:
        engine: the routing engine; every choice's ``ToolMetadata.name`` must be one of its models or a key
            of ``aliases``.
        aliases: tool name -> engine model, for tools not named after their model (``{"docs_fast":
            "mistralai/mistral-7b-chat"}``). SCOPE chooses between models, so two tools of one model are
            refused.
        options: :class:`~scope_shared.RouteOptions` (or a mapping of its fields) laid over the engine's, e.g.
            ``{"value_per_correct": 0.01}``; the same fields may also be given as keywords
            (``value_per_correct=0.01``). They are laid over ``engine.options`` once, at construction (the
            engine's options are fixed when the engine is built); unset fields keep the engine's settings.
        max_outputs: 1 for a single selection; more for top-n by utility among the candidates within the
            cost limits (each extra one must also fit the budget), like ``PydanticMultiSelector``.
        reserve: with a budget, hold each selected model's expected cost until a registered
            :class:`~scope_llamaindex.ScopeEventHandler` settles it with the real cost of its LLM calls
            (or :meth:`release` is called). A ``RouterRetriever`` selection is held only while its retrieval
            runs (a retrieval makes no LLM call): it is released when ``retrieve()`` returns or raises.
            ``False`` decides without consulting the budget.
        count_tokens: counts a query's prompt tokens for the cost estimate (default: the store's
            characters-per-token estimate).
    """

    def __init__(
        self,
        *,
        engine: ScopeEngine,
        options: RouteOptions | Mapping[str, Any] | None = None,
        aliases: Mapping[str, str] | None = None,
        max_outputs: int = 1,
        reserve: bool = True,
        count_tokens: Callable[[str], int] | None = None,
        **route_options: Any,
    ) -> None:
        if not isinstance(engine, ScopeEngine):
            msg = f"engine must be a ScopeEngine, got {type(engine).__name__}"
            raise ConfigError(msg)
        if isinstance(max_outputs, bool) or not isinstance(max_outputs, int) or max_outputs < 1:
            msg = f"max_outputs must be an int >= 1, got {max_outputs!r}"
            raise ConfigError(msg)
        given = RouteOptions.of(options, **route_options)
        if count_tokens is not None and not callable(count_tokens):
            msg = "count_tokens must be a callable str -> int, or None"
            raise ConfigError(msg)
        self.engine = engine
        self.aliases = _checked_aliases(engine, aliases)
        self.options = engine.options.merged(given)
        self.max_outputs = max_outputs
        self.reserve = reserve
        self.count_tokens = count_tokens
        watch_selections()

    def __repr__(self) -> str:
        return f"ScopeSelector(engine={self.engine!r}, max_outputs={self.max_outputs})"

    # -- prompt mixin: SCOPE uses no prompt --------------------------------------------------------

    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts_dict: PromptDictType) -> None:
        if prompts_dict:
            logger.debug("ScopeSelector has no prompts; ignored %s", sorted(prompts_dict))

    # -- selection -----------------------------------------------------------------------------

    def _candidates(self, choices: Sequence[ToolMetadata]) -> list[str]:
        """The engine model each choice stands for, in the choices' order."""
        known = sorted(self.engine.models)
        models: list[str] = []
        for i, choice in enumerate(choices):
            name = choice.name
            if not name:
                msg = f"choice {i} has no name; name each tool after one of the engine's models: {known}"
                raise ConfigError(msg)
            model = self.aliases.get(name, name)
            if model not in self.engine.models:
                msg = (
                    f"choice {i} is named {name!r}, not a model of the engine nor a key of aliases=; name each "
                    f"tool after one of {known}, or map it: ScopeSelector(aliases={{{name!r}: <model>}})"
                )
                raise UnknownModelError(msg)
            if model in models:
                j = models.index(model)
                if choices[j].name == name:
                    msg = f"choices {j} and {i} are both named {name!r}; one tool per model"
                else:
                    msg = (
                        f"choices {j} ({choices[j].name!r}) and {i} ({name!r}) both stand for {model!r}; SCOPE "
                        "chooses between models: one tool per model"
                    )
                raise ConfigError(msg)
            models.append(model)
        if not models:
            msg = "no choices to select from"
            raise ConfigError(msg)
        return models

    def _route_kwargs(self, query: QueryBundle, names: list[str]) -> dict[str, Any]:
        tokens = float(self.count_tokens(query.query_str)) if self.count_tokens is not None else None
        return {"input_tokens": tokens, "options": self.options.merged({"candidates": names, "reserve": self.reserve})}

    def _select(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> SelectorResult:
        names = self._candidates(choices)
        decision = self.engine.route(query.query_str, **self._route_kwargs(query, names))
        return self._result(decision, names, choices)

    async def _aselect(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> SelectorResult:
        names = self._candidates(choices)
        decision = await self.engine.aroute(query.query_str, **self._route_kwargs(query, names))
        return self._result(decision, names, choices)

    def _extras(self, decision: Decision) -> list[Decision]:
        """The next-best candidates within the cost limits, each with its own reservation."""
        extras: list[Decision] = []
        for name in decision.ranking():
            if 1 + len(extras) >= self.max_outputs:
                break
            if name == decision.model or name not in decision.utilities:
                continue
            reason = f"ranked #{len(extras) + 2} by utility"
            extra = (
                self.engine.reserve_next(decision, name, reason=reason)
                if self.reserve
                else decision.switched(name, reason=reason)
            )
            if extra is None:
                logger.debug(
                    "multi-selection: %s (expected $%.6g) does not fit the budget", name, decision.estimates[name].cost
                )
                continue
            extras.append(extra)
        return extras

    def _result(self, decision: Decision, names: list[str], choices: Sequence[ToolMetadata]) -> SelectorResult:
        decisions = [decision] + (self._extras(decision) if self.max_outputs > 1 else [])
        watch_selections()
        tickets = open_tickets(self.engine, decisions)
        selections: list[SingleSelection] = []
        for d, ticket in zip(decisions, tickets, strict=True):
            index = names.index(d.model)
            sel = ScopeSelection(
                index=index,
                reason=explain(decision, d.model),
                model=d.model,
                tool=str(choices[index].name),
                call_id=ticket.call_id,
                decision=d,
            )
            sel._ticket = ticket
            selections.append(sel)
        logger.debug("selected %s for query %.60r", [d.model for d in decisions], decision.query)
        return MultiSelection(selections=selections)

    def release(self, result: Any) -> int:
        """Release the reservations of selections whose models were never called; returns how many.

        Use it when you call :meth:`select` yourself and the routed call never runs (a router's retrievals
        and failed queries are released on their own). ``result`` is a ``SelectorResult``, a router
        ``Response`` (its ``metadata["selector_result"]``) or a ScopeSelection.
        """
        if isinstance(result, ScopeSelection):
            selections: list[Any] = [result]
        else:
            found = getattr(result, "selections", None)
            if found is None:
                metadata = getattr(result, "metadata", None)
                found = getattr(metadata.get("selector_result"), "selections", None) if metadata else None
            selections = list(found or [])
        released = 0
        for sel in selections:
            ticket = getattr(sel, "_ticket", None)
            if isinstance(ticket, Ticket) and ticket.calls == 0 and ticket.close():
                released += ticket.decision.reservation_id is not None
        return released


def _checked_aliases(engine: ScopeEngine, aliases: Mapping[str, str] | None) -> dict[str, str]:
    if aliases is None:
        return {}
    if not isinstance(aliases, Mapping):
        msg = f"aliases must be a mapping of tool name -> engine model, got {type(aliases).__name__}"
        raise ConfigError(msg)
    for tool, model in aliases.items():
        if not isinstance(tool, str) or not tool:
            msg = f"aliases keys must be tool names (non-empty str), got {tool!r}"
            raise ConfigError(msg)
        if model not in engine.models:
            msg = f"aliases[{tool!r}] = {model!r} is not a model of the engine; known: {sorted(engine.models)}"
            raise UnknownModelError(msg)
    return dict(aliases)
