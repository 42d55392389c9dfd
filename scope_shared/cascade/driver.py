"""The loop that drives a :class:`~.plan.CascadePlan` to its end, written once for sync and async callers.

A caller gives three pieces: ``start`` (a step -> the call it makes, e.g. a run id and a child config),
``ask`` (the call -> the model's raw reply: the only part that may fail, and the only part that differs
between :meth:`CascadeDriver.run` and :meth:`CascadeDriver.arun`) and ``finish`` (the call and its raw reply ->
the reply kept, e.g. settled and stamped); ``read`` turns a kept reply into the :class:`Reply` the plan observes.
A call whose ``ask`` raises an :class:`Exception` is reported to the plan (:meth:`~.plan.CascadePlan.fail`
releases its reservation and decides again without that model); anything else raised, in any piece,
cancels the plan (releasing what it holds) and propagates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from scope_shared.cascade.plan import CascadePlan
from scope_shared.cascade.steps import CascadeResult, CascadeStep

__all__ = ["CascadeDriver", "Reply"]

C = TypeVar("C")
A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class Reply:
    """What the plan reads of a reply: its text, real usage where known, token log-probabilities where given."""

    text: str
    input_tokens: float | None = None
    output_tokens: float | None = None
    logprobs: Sequence[float] | None = None


@dataclass(frozen=True)
class _Failed:
    error: Exception


class CascadeDriver(Generic[C, A, R]):
    """Runs one plan's steps; see the module docstring.

    Attributes:
        replies: model -> its kept reply, for every call that answered.
        errors: (model, error) of every call that failed, in order.
    """

    def __init__(
        self,
        plan: CascadePlan,
        *,
        start: Callable[[CascadeStep], C],
        finish: Callable[[C, A], R],
        read: Callable[[R], Reply],
    ) -> None:
        self.plan = plan
        self._start = start
        self._finish = finish
        self._read = read
        self.replies: dict[str, R] = {}
        self.errors: list[tuple[str, Exception]] = []
        self._step: CascadeStep | CascadeResult = plan.first

    def run(self, ask: Callable[[C], A]) -> tuple[CascadeResult, R]:
        """Make every call the plan asks for; the result and the reply of the model it returns."""
        with self._cancel_on_error():
            while isinstance(step := self._step, CascadeStep):
                call = self._start(step)
                self._took(step, call, _attempt(ask, call))
        return self._returned()

    async def arun(self, ask: Callable[[C], Awaitable[A]]) -> tuple[CascadeResult, R]:
        """Async form of :meth:`run`."""
        with self._cancel_on_error():
            while isinstance(step := self._step, CascadeStep):
                call = self._start(step)
                self._took(step, call, await _aattempt(ask, call))
        return self._returned()

    @contextlib.contextmanager
    def _cancel_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.plan.cancel()
            raise

    def _took(self, step: CascadeStep, call: C, got: A | _Failed) -> None:
        if isinstance(got, _Failed):
            self.errors.append((step.model, got.error))
            self._step = self.plan.fail(step.model, got.error)
            return
        kept = self._finish(call, got)
        self.replies[step.model] = kept
        reply = self._read(kept)
        self._step = self.plan.observe(
            step.model,
            reply.text,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            logprobs=reply.logprobs,
        )

    def _returned(self) -> tuple[CascadeResult, R]:
        result = self._step
        assert isinstance(result, CascadeResult)  # the loops end only on a result
        if result.model is None or result.model not in self.replies:
            if self.errors:
                raise self.errors[0][1]
            msg = f"the cascade returned no answer ({result.stop_reason})"
            raise RuntimeError(msg)
        return result, self.replies[result.model]


def _attempt(ask: Callable[[C], A], call: C) -> A | _Failed:
    try:
        return ask(call)
    except Exception as exc:
        return _Failed(exc)


async def _aattempt(ask: Callable[[C], Awaitable[A]], call: C) -> A | _Failed:
    try:
        return await ask(call)
    except Exception as exc:
        return _Failed(exc)
