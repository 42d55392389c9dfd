"""Bring your own model, replayed on recorded data: what ``scope-router demo`` shows and ``benchmarks/byom.py``
measures.

1. **A store from the suite**: the packaged anchor suite's questions and reference outcomes, from its
   precomputed vectors (nothing is embedded), with one recorded model's outcomes left out of it.
2. **Profile the "new" model**: that model, served under a new name by a real OpenAI-compatible HTTP server
   that replays its recorded answers (:mod:`scope_shared.profile.replay_server`), is profiled through it with the
   ``openai`` client on ``n`` of the suite's questions of its dataset: ``scope-router profile``'s code path
   (:class:`~scope_shared.profile.OpenAIChatCall` and :func:`~scope_shared.profile.profile`). The selection sees
   the suite without the model's outcomes.
3. **Route**: the dataset's held-out test queries of the tasks the suite covers are routed by replay over that
   store (:func:`~scope_shared.evaluation.evaluate` with ``anchors=None``), the model among the candidates under
   its new name with its recorded test outcomes.

The data folder is one of ``../shared/data`` (``test.csv.gz``, ``prices.csv``, and the ``responses.csv.gz`` and
``anchors.csv.gz`` the server replays); its name is the suite source its questions come from.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scope_shared.data import load_outcomes, load_prices
from scope_shared.embeddings import Embedder
from scope_shared.errors import ConfigError
from scope_shared.estimators.base import Estimator
from scope_shared.evaluation import DEFAULT_VALUES, evaluate
from scope_shared.profile import OpenAIChatCall, ProfileReport, profile
from scope_shared.profile.replay_server import ReplayServer, load_recorded
from scope_shared.store import AnchorStore
from scope_shared.suites import AnchorSuite, seed_store
from scope_shared.types import ModelCard, Outcome

__all__ = [
    "DEMO_MODELS",
    "Connect",
    "DemoData",
    "Journey",
    "new_name",
    "profile_replayed",
    "route_test",
    "run_journey",
    "suite_store",
    "without_models",
]

logger = logging.getLogger(__name__)

#: The model each dataset's demo treats as new: recorded responses in the dataset, and in its routing pool.
DEMO_MODELS = {"routerbench-zs": "mistralai/mixtral-8x7b-chat", "zeroeval": "gpt-4o-mini-2024-07-18"}
#: The files a data folder needs: routing replays the test split at these prices; the server replays responses
#: with the usage recorded in the outcome files.
DATA_FILES = ("test.csv.gz", "prices.csv", "responses.csv.gz", "anchors.csv.gz")

#: ``connect(server) -> openai client``: how profiling reaches the replay server (default: over a local port).
Connect = Callable[[ReplayServer], Any]


def new_name(model: str) -> str:
    """The name a recorded model is served and routed under as a new model: ``new/<its last path part>``."""
    return f"new/{model.rsplit('/', 1)[-1]}"


@dataclass(frozen=True)
class DemoData:
    """A dataset folder: its held-out test outcomes and its prices. Its name is the suite source of its questions."""

    folder: Path
    test: list[Outcome]
    cards: list[ModelCard]

    @property
    def source(self) -> str:
        return self.folder.name

    @classmethod
    def load(cls, folder: str | Path) -> DemoData:
        path = Path(folder)
        missing = [str(path / f) for f in DATA_FILES if not (path / f).is_file()]
        if missing:
            msg = f"demo data not found: {missing}; pass --data DIR (a folder of ../shared/data with responses)"
            raise ConfigError(msg)
        return cls(path, load_outcomes(path / "test.csv.gz"), load_prices(path / "prices.csv"))


def without_models(suite: AnchorSuite, models: Iterable[str]) -> AnchorSuite:
    """The suite with these models' reference outcomes removed (questions, vectors and references kept).

    Custom graders of ``suite`` are not carried over: use it with suites of the built-in grader kinds.
    """
    drop = set(models)
    questions = [
        dataclasses.replace(q, outcomes={m: o for m, o in q.outcomes.items() if m not in drop}) for q in suite
    ]
    return AnchorSuite(
        questions=questions,
        name=suite.name,
        metadata=suite.metadata,
        vectors=suite.vectors,
        embedder=suite.vector_embedder,
        embed_tail_chars=suite.embed_tail_chars,
    )


def suite_store(suite: AnchorSuite, inner: Embedder, **store_options: Any) -> AnchorStore:
    """A store seeded with ``suite``: from its vectors when ``inner`` computed them, else embedded by ``inner``."""
    store = AnchorStore(embedder=suite.embedder_or(inner), **store_options)
    seed_store(store, suite, progress=False)
    return store


def profile_replayed(
    store: AnchorStore,
    *,
    suite: AnchorSuite,
    data: DemoData,
    model: str,
    card: ModelCard,
    n: int | None,
    select: str = "informative",
    seed: int = 0,
    concurrency: int = 8,
    connect: Connect | None = None,
) -> tuple[ProfileReport, int]:
    """Profile ``model``'s recorded answers, served as ``card.name``, on ``n`` of the suite's questions of the
    dataset that it answered; returns the report and the number of requests the server answered.

    ``suite`` must not hold ``model``'s outcomes (:func:`without_models`): the selection reads the suite's
    reference outcomes. ``connect(server)`` returns the ``openai`` client to call the server with instead of
    starting it on a local port (a test's transport that calls :meth:`ReplayServer.respond`).
    """
    if model in suite.models:
        msg = f"the suite holds outcomes of {model!r}: profile it on without_models(suite, [{model!r}])"
        raise ConfigError(msg)
    sources = {q.source for q in suite}
    if data.source not in sources:
        msg = (
            f"the suite has no questions from {data.source!r}: the data folder must be named as a suite source "
            f"({', '.join(sorted(sources))})"
        )
        raise ConfigError(msg)
    recorded = load_recorded(suite.subset(sources=[data.source]), model, data.folder.parent)
    if not recorded:
        msg = f"no recorded responses of {model!r} to the suite's questions in {data.folder / 'responses.csv.gz'}"
        raise ConfigError(msg)
    answerable = suite.select(sorted(r.query_id for r in recorded.values()))
    server = ReplayServer(recorded, served_name=card.name)
    with server if connect is None else nullcontext(server):
        if connect is None:
            call = OpenAIChatCall(base_url=server.base_url, model=card.name)
        else:
            call = OpenAIChatCall(base_url="http://replay.invalid/v1", model=card.name, client=connect(server))
        call.check()
        report = profile(
            store,
            model=card,
            call=call,
            suite=answerable,
            n=n,
            select=select,
            seed=seed,
            concurrency=concurrency,
            progress=False,
        )
        answered = sum(server.answered.values())
    return report, answered


def route_test(
    store: AnchorStore,
    *,
    data: DemoData,
    tasks: Iterable[str],
    rename: Mapping[str, str] | None = None,
    estimator: Estimator | None = None,
    k: int = 10,
    values: Sequence[float | None] = DEFAULT_VALUES,
) -> dict[str, Any]:
    """Replay-route the dataset's test queries of ``tasks`` over ``store`` as it is; ``rename`` maps recorded
    model names to the names they are routed under (their test outcomes and prices follow them)."""
    names = dict(rename or {})
    wanted = set(tasks)
    test = [o.model_copy(update={"model": names.get(o.model, o.model)}) for o in data.test if o.task in wanted]
    cards = [c.model_copy(update={"name": names.get(c.name, c.name)}) for c in data.cards]
    return evaluate(None, test, cards, store=store, estimator=estimator, k=k, values=values)


@dataclass
class Journey:
    """One run of the journey: what was profiled, what was routed, and how long each step took (seconds)."""

    model: str
    name: str
    store: AnchorStore
    profile: ProfileReport
    answered: int
    report: dict[str, Any]
    tasks: list[str]
    left_out: dict[str, int]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "name": self.name,
            "tasks": self.tasks,
            "left_out": self.left_out,
            "seconds": self.seconds,
            "served_answers": self.answered,
            "profile": self.profile.to_dict(),
            "evaluation": self.report,
        }


def run_journey(
    *,
    data: DemoData,
    suite: AnchorSuite,
    model: str,
    inner: Embedder,
    n: int | None = 50,
    select: str = "informative",
    seed: int = 0,
    estimator: Estimator | None = None,
    k: int = 10,
    values: Sequence[float | None] = DEFAULT_VALUES,
    name: str | None = None,
    connect: Connect | None = None,
) -> Journey:
    """The whole journey for ``model`` of ``data`` (see the module docstring).

    Args:
        data: the dataset (its name is a source of ``suite``).
        suite: the anchor suite, with ``model``'s reference outcomes (they are left out of the store).
        model: a recorded model of ``data`` with responses, priced, and with an outcome on every routed test query.
        inner: the embedder of the store (the suite's vectors serve its questions when it computed them); a
            suite without vectors is embedded with it first.
        n, select, seed: the profiling selection.
        estimator: the router's estimator (default the engine's, the learned one).
        name: the new name (default :func:`new_name`).
        connect: see :func:`profile_replayed`.

    Raises:
        ConfigError: the model is not priced, has no outcome in the suite or on every routed test query, or no
            recorded responses to the suite's questions.
    """
    t0 = time.perf_counter()
    name = name or new_name(model)
    prices = {c.name: c for c in data.cards}
    if model not in prices:
        msg = f"{model!r} is not in {data.folder / 'prices.csv'}; known: {sorted(prices)}"
        raise ConfigError(msg)
    if model not in suite.models:
        msg = f"suite {suite.name!r} has no outcomes of {model!r}: nothing to leave out and replay"
        raise ConfigError(msg)
    tasks = sorted({q.task for q in suite if q.source == data.source})
    routed = {o.query for o in data.test if o.task in tasks}
    answered_test = {o.query for o in data.test if o.model == model and o.task in tasks}
    if not routed or answered_test != routed:
        msg = (
            f"{model!r} has outcomes on {len(answered_test)} of the {len(routed)} test queries of tasks {tasks}; "
            "choose a model with an outcome on each (it must be in the routing pool)"
        )
        raise ConfigError(msg)
    left = Counter(o.task or "" for o in data.test if o.task not in tasks and o.model == model)
    if suite.vectors is None:  # the informative selection reads them; the store then embeds nothing more
        suite = suite.with_vectors(inner, embed_tail_chars=suite.embed_tail_chars)
    held = without_models(suite, [model])
    store = suite_store(held, inner)
    t_seed = time.perf_counter() - t0
    card = prices[model].model_copy(update={"name": name})
    t1 = time.perf_counter()
    report, answered = profile_replayed(
        store, suite=held, data=data, model=model, card=card, n=n, select=select, seed=seed, connect=connect
    )
    t_profile = time.perf_counter() - t1
    t2 = time.perf_counter()
    routing = route_test(store, data=data, tasks=tasks, rename={model: name}, estimator=estimator, k=k, values=values)
    t_route = time.perf_counter() - t2
    if name not in routing["routing"]["pool"]:
        msg = f"{name} is not in the routing pool {routing['routing']['pool']}"
        raise ConfigError(msg)
    seconds = {
        "store": round(t_seed, 2),
        "profile": round(t_profile, 2),
        "route": round(t_route, 2),
        "total": round(time.perf_counter() - t0, 2),
    }
    return Journey(model, name, store, report, answered, routing, tasks, dict(left), seconds)
