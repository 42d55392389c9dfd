"""The ``scope-router`` command: ingest, profile, route, evaluate, demo, store check/repair.

Errors print one line to stderr and exit with status 2; secrets are read from environment variables
named on the command line, never from the arguments themselves.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scope_shared.embeddings import EMBEDDERS
from scope_shared.errors import ConfigError, ScopeError

__all__ = ["main"]

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path("../shared/data/routerbench-zs")
#: The demo's three trade-off settings: USD a correct answer is worth (None = accuracy only).
DEMO_SETTINGS: tuple[tuple[str, float | None], ...] = (
    ("thrifty", 0.001),
    ("balanced", 0.01),
    ("quality", None),
)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _embedder(name: str) -> Any:
    from scope_shared.embeddings import embedder_named

    return embedder_named(name)


def _store(args: argparse.Namespace, *, must_exist: bool = False, embedder: Any = None) -> Any:
    from scope_shared.store import AnchorStore

    if not args.chroma_host:
        path = Path(args.store)
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            msg = f"--store {path}: {blocker} is a file; the store is a directory"
            raise ConfigError(msg)
        if must_exist and not path.exists():
            msg = (
                f"no anchor store at {path}; build one with: scope-router ingest --store {path} --suite default "
                "(or OUTCOMES_FILE)"
            )
            raise ConfigError(msg)
    token = None
    if args.chroma_token_env:
        token = os.environ.get(args.chroma_token_env)
        if not token:
            msg = f"environment variable {args.chroma_token_env} is not set"
            raise ConfigError(msg)
    return AnchorStore(
        path=args.store if not args.chroma_host else None,
        host=args.chroma_host,
        port=args.chroma_port,
        ssl=args.chroma_ssl,
        token=token,
        verify=args.chroma_ca or True,
        timeout=args.chroma_timeout,
        collection=args.collection,
        embedder=embedder if embedder is not None else _embedder(args.embedder),
        hnsw={"ef_search": args.ef_search} if args.ef_search is not None else None,
    )


def _suite_embedder(suite: Any, name: str) -> Any:
    """The suite's precomputed vectors over embedder ``name`` when it holds that embedder's; else the embedder."""
    inner = _embedder(name)
    if suite.vector_embedder != inner.name:
        logger.info("suite %r holds no vectors of %s: its questions are embedded", suite.name, inner.name)
        return inner
    return suite.embedder(inner)


def _routing(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's ``estimator`` and ``escalation`` for ``--estimator``, as keyword arguments."""
    from scope_shared.routing import build_routing

    options: dict[str, Any] = {}
    if args.vllm_url:
        options["base_url"] = args.vllm_url
        options["model"] = args.vllm_model  # None: the server's only model
        if args.vllm_key_env:
            options["api_key"] = os.environ.get(args.vllm_key_env)
    return build_routing(args.estimator, k=args.k, **options)._asdict()


def _fmt_value(v: float | None) -> str:
    return "accuracy" if v is None or math.isinf(v) else f"${v:g}"


def cmd_ingest(args: argparse.Namespace) -> int:
    from scope_shared.data import load_outcomes

    if not args.files and not args.suite:
        msg = "nothing to ingest: give outcome files, or --suite default (or a suite folder or CSV)"
        raise ConfigError(msg)
    suite = None
    if args.suite:
        from scope_shared.suites import load_suite

        suite = load_suite(args.suite)
    store = _store(args, embedder=_suite_embedder(suite, args.embedder) if suite is not None else None)
    if suite is not None:
        from scope_shared.suites import seed_store

        t0 = time.perf_counter()
        report = seed_store(store, suite, progress=not args.quiet)
        _out(
            f"suite {suite.name!r}: {report.outcomes} outcomes of {len(suite.models)} reference models on "
            f"{len(suite)} questions, {report.anchors_new} new anchors, {report.anchors_updated} updated, "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    for f in args.files:
        rows = load_outcomes(f)
        report = store.add(rows, progress=not args.quiet)
        _out(f"{f}: {report.outcomes} outcomes, {report.anchors_new} new anchors, {report.anchors_updated} updated")
    _out(f"store {store!r}: {store.count()} anchors, {len(store.model_stats())} models")
    if args.estimator == "learned":  # fit once now and save it with the store: every router loads it
        from scope_shared.estimators.learned import LearnedEstimator

        fit = LearnedEstimator(k=args.k).fit(store)
        _out(f"learned estimator fitted on {fit.fit_anchors} of {fit.anchors} anchors in {fit.seconds:.1f}s, saved")
    return 0


def _template(path: str | None) -> tuple[str | None, str | None]:
    """``--template FILE``: (system message, user template). A ``.json`` file holds ``{"system": ..., "user": ...}``;
    any other file is the user template."""
    if not path:
        return None, None
    from scope_shared.profile import check_template

    text = Path(path).read_text(encoding="utf-8")
    if not path.endswith(".json"):
        return None, check_template(text, where=path)
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"--template {path}: not valid JSON ({exc.msg} at line {exc.lineno})"
        raise ConfigError(msg) from None
    if not isinstance(spec, dict) or not set(spec) <= {"system", "user"} or not spec:
        msg = f'--template {path}: expected {{"system": "...", "user": "...{{prompt}}..."}} (either key optional)'
        raise ConfigError(msg)
    system, user = spec.get("system"), spec.get("user")
    if not all(v is None or isinstance(v, str) for v in (system, user)):
        msg = f"--template {path}: system and user must be text"
        raise ConfigError(msg)
    return system or None, None if user is None else check_template(user, where=path)


def cmd_profile(args: argparse.Namespace) -> int:
    from scope_shared.data import load_prices
    from scope_shared.profile import OpenAIChatCall, profile
    from scope_shared.suites import load_suite

    cards = {c.name: c for c in load_prices(args.prices)}
    if args.model not in cards:
        msg = (
            f"model {args.model!r} is not in {args.prices}; add a row: {args.model},INPUT_USD_PER_MTOK,"
            f"OUTPUT_USD_PER_MTOK (it has {len(cards)} models)"
        )
        raise ConfigError(msg)
    if not args.dry_run and not args.base_url:
        msg = "--base-url is required (the OpenAI-compatible endpoint serving the model), except with --dry-run"
        raise ConfigError(msg)
    system, template = _template(args.template)
    if system and template is None:  # a system message changes the setup: the report says templated
        template = "{prompt}"
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            msg = f"environment variable {args.api_key_env} (--api-key-env) is not set"
            raise ConfigError(msg)
    suite = load_suite(args.suite)
    store = _store(args, must_exist=True, embedder=_suite_embedder(suite, args.embedder))
    call = OpenAIChatCall(
        base_url=args.base_url or "http://unused.invalid/v1",
        model=args.served_model or args.model,
        api_key=api_key,
        system=system,
        max_tokens=args.max_tokens,
        timeout=args.timeout,
    )
    if not args.dry_run:
        call.check()
    report = profile(
        store,
        model=cards[args.model],
        call=call,
        suite=suite,
        n=args.n,
        select=args.select,
        max_cost=args.max_cost,
        concurrency=args.concurrency,
        template=template,
        seed=args.seed,
        progress=False if args.quiet else None,
        dry_run=args.dry_run,
        retries=args.retries,
    )
    for line in report.lines():
        _out(line)
    if args.json:
        _out(f"report: {report.save(args.json)}")
    return 0 if args.dry_run or report.complete else 1


def cmd_route(args: argparse.Namespace) -> int:
    from scope_shared.data import load_prices
    from scope_shared.engine import ScopeEngine

    store = _store(args, must_exist=True)
    engine = ScopeEngine(
        store=store,
        models=load_prices(args.prices),
        **_routing(args),
        k=args.k,
        value_per_correct=args.value,
        max_cost_per_call=args.max_cost,
    )
    engine.wait_ready()  # a one-off decision: load the saved fit (or fit) rather than answer from the fallback
    decision = engine.route(args.query, options={"reserve": False})
    if args.json:
        _out(json.dumps(decision.model_dump(mode="json"), indent=2))
        return 0
    _out(f"chosen: {decision.model}   (value per correct: {_fmt_value(decision.value_per_correct)})")
    _out(f"why:    {decision.reason}")
    _out("")
    _out(f"{'model':40} {'p_correct':>9} {'out_tok':>8} {'cost $':>11} {'utility':>11}  note")
    for name in decision.ranking():
        est = decision.estimates[name]
        u = decision.utilities.get(name)
        note = decision.excluded.get(name, "<- chosen" if name == decision.model else "")
        _out(
            f"{name[:40]:40} {est.p_correct:9.3f} {est.output_tokens:8.0f} {est.cost:11.6f} "
            f"{'' if u is None else f'{u:11.6g}':>11}  {note}"
        )
    ev = decision.estimate.evidence
    if ev:
        _out("")
        _out(f"anchors behind {decision.model}:")
        docs = store.get([e.anchor_id for e in ev])
        for e in ev:
            text = docs[e.anchor_id].question if e.anchor_id in docs else ""
            text = " ".join(text.split())[:90]
            _out(f"  sim={e.similarity:.3f} correct={e.correct:.0f} tokens={e.output_tokens}  {text}")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    store = _store(args, must_exist=True)
    if args.action == "repair":
        stats = store.rebuild_stats()
        _out(f"store {store!r}: recounted {store.count()} anchors from a full scan; running totals reset")
        for name, st in stats.items():
            _out(f"  {name}: {st.n} outcomes, p_correct {st.p_correct:.4f}")
        return 0
    check = store.check_stats()
    counted = check.anchors_in_totals
    _out(
        f"store {store!r}: {check.anchors} anchors; in the running totals: "
        + ("not counted (totals begun by an older version)" if counted is None else str(counted))
    )
    _out(f"{'model':40} {'outcomes':>9} {'totals':>9} {'drift':>7} {'p_correct':>10} {'totals':>10}")
    drifted = check.drifted()
    off = 0
    for name in sorted({*check.scanned, *check.totals}):
        a, b = check.scanned.get(name), check.totals.get(name)
        n_a, n_b = (a.n if a else 0), (b.n if b else 0)
        off += abs(n_b - n_a)
        p_a, p_b = (f"{a.p_correct:.4f}" if a else "-"), (f"{b.p_correct:.4f}" if b else "-")
        mark = "  <- differs" if name in drifted else ""
        _out(f"{name[:40]:40} {n_a:9d} {n_b:9d} {n_b - n_a:+7d} {p_a:>10} {p_b:>10}{mark}")
    for line in check.journals:
        _out(f"unsettled batch journal: {line}")
    if not check.drift:
        _out("no drift: the running totals match a full scan")
        return 0
    anchors = "" if counted in (None, check.anchors) else f"; the totals count {counted} anchors, not {check.anchors}"
    _out(
        f"drift: {len(drifted)} model(s) differ, by {off} outcomes{anchors}. Recount with: scope-router store "
        "repair (the same store options; while nothing writes)"
    )
    return 1


def _summary_lines(report: dict[str, Any]) -> list[str]:
    est, rt = report["estimation"], report["routing"]

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    return [
        f"estimator={report['estimator']} embedder={report['embedder']} anchors={report['anchors']} "
        f"test queries={report['test_queries']} pool={len(rt['pool'])} models",
        f"estimation: auroc_within_model={fmt(est['auroc_within_model'])} auroc_pooled={fmt(est['auroc_pooled'])} "
        f"brier={fmt(est['brier'])} ece={fmt(est['ece'])} length_log_mae={fmt(est['length_log_mae'])}",
        f"routing: best single {rt['best_single']['model']} acc={rt['best_single']['accuracy']:.3f} "
        f"cost=${rt['best_single']['cost']:.6f}; router acc at its cost={fmt(rt['router_acc_at_best_single_cost'])}; "
        f"cost to match it={fmt(rt['router_cost_to_match_best_single'])}x; max acc={fmt(rt['router_max_accuracy'])}; "
        f"aiq={fmt(rt['aiq'])}",
        f"lift over mixing single models: router aiq {fmt(rt['aiq'])} - singles' hull aiq {fmt(rt['hull_aiq'])} = "
        f"{'n/a' if rt['lift_over_singles'] is None else format(rt['lift_over_singles'], '+.3f')}",
        *_holdout_lines(report),
    ]


def _holdout_lines(report: dict[str, Any]) -> list[str]:
    ho = report.get("holdout")
    if not ho:
        return []
    per = ", ".join(
        f"{m}={'n/a' if a is None else f'{a:.3f}'} (share {ho['mean_share_over_curve'][m]:.3f})"
        for m, a in ho["auroc_per_model"].items()
    )
    mean = ho["auroc_within_model"]
    return [
        f"holdout: {len(ho['models'])} models keep {sorted(set(ho['anchors_kept'].values()))} anchors "
        f"(seed {ho['seed']}); auroc_within_model={'n/a' if mean is None else f'{mean:.3f}'}; {per}"
    ]


def _cascade_replay(args: argparse.Namespace) -> Any:
    """The cascade replay of ``evaluate --cascade``; responses and references default to files beside --test."""
    from scope_shared.cascade.replay import CascadeReplay

    folder = Path(args.test).parent
    return CascadeReplay(
        responses=args.responses or folder / "responses.csv.gz",
        references=args.references or folder / "references.csv.gz",
        max_calls=args.cascade_max_calls,
        max_candidates=args.cascade_candidates,
        factors=args.cascade_factors,
        estimator_factory=lambda: _routing(args)["estimator"],
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scope_shared.embeddings import CachedEmbedder
    from scope_shared.evaluation import evaluate, plot_report

    cascade = _cascade_replay(args) if args.cascade else None
    embedder = _embedder(args.embedder)
    if cascade is not None:  # the cascade's cross-fitted stores embed the anchors again: once is enough
        embedder = CachedEmbedder(embedder, maxsize=100_000)
    report = evaluate(
        args.anchors,
        args.test,
        args.prices,
        embedder=embedder,
        **_routing(args),
        k=args.k,
        holdout_models=[m.strip() for m in args.holdout_models.split(",") if m.strip()],
        holdout_anchors=args.holdout_anchors,
        holdout_seed=args.holdout_seed,
        cascade=cascade,
        holdout_select=args.holdout_select,
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_report(report, args.plot)
    for line in _summary_lines(report):
        _out(line)
    if cascade is not None:
        from scope_shared.cascade.replay import summary_lines

        for line in summary_lines(report["cascade"]):
            _out(line)
    if args.json:
        _out(f"report: {args.json}")
    if args.plot:
        _out(f"plot:   {args.plot}")
    return 0


def _demo_singles(singles: dict[str, dict[str, float]], keep: str) -> tuple[list[str], int]:
    """The single models worth a row, most accurate first: those no other model matches in accuracy for less
    (or beats for the same), and ``keep``; and how many others there are."""

    def dominated(name: str) -> bool:
        a, c = singles[name]["accuracy"], singles[name]["cost"]
        return any(
            o != name and s["accuracy"] >= a and s["cost"] <= c and (s["accuracy"] > a or s["cost"] < c)
            for o, s in singles.items()
        )

    shown = [n for n in singles if n == keep or not dominated(n)]
    shown.sort(key=lambda n: (-singles[n]["accuracy"], singles[n]["cost"]))
    return shown, len(singles) - len(shown)


def cmd_demo(args: argparse.Namespace) -> int:
    from scope_shared.demo import DEMO_MODELS, DemoData, run_journey
    from scope_shared.evaluation import DEFAULT_VALUES, plot_report
    from scope_shared.suites import load_suite

    t0 = time.perf_counter()
    data = DemoData.load(args.data)
    model = args.new_model or DEMO_MODELS.get(data.source)
    if not model:
        msg = f"no default new model for {data.source!r}: pass --new-model (a model with recorded responses there)"
        raise ConfigError(msg)
    suite = load_suite(args.suite)
    _out(
        f"bring your own model, replayed on {data.source}: {model} is left out of a store from suite "
        f"{suite.name!r}, served as new by a replay server, profiled on {args.n} {args.select} anchors, then routed"
    )
    values = [v for _, v in DEMO_SETTINGS]
    trip = run_journey(
        data=data,
        suite=suite,
        model=model,
        inner=_embedder(args.embedder),
        n=args.n,
        select=args.select,
        seed=args.seed,
        k=args.k,
        values=[*DEFAULT_VALUES, *values],
    )
    report, rt, new = trip.report, trip.report["routing"], trip.name
    stats = trip.store.model_stats()
    _out("")
    _out(
        f"1. store: {trip.store.count()} anchors of suite {suite.name!r} with {len(stats) - 1} reference models' "
        f"outcomes ({model}'s left out), from its precomputed vectors, in {trip.seconds['store']:.1f} s"
    )
    _out(f"2. profile: {new} through the replay server over HTTP ({trip.answered} answers served)")
    for line in trip.profile.lines():
        _out(f"   {line}" if line else "")
    left = ", ".join(f"{task} ({n} queries)" for task, n in sorted(trip.left_out.items()))
    _out("")
    _out(
        f"3. route: {rt['queries']} held-out test queries of {', '.join(trip.tasks)} (the tasks the suite covers"
        f"{'; left out: ' + left if left else ''}), {len(rt['pool'])} models, in {trip.seconds['route']:.1f} s; "
        "mean cost per query in USD"
    )
    _out("")
    points = {pt["value_per_correct"]: pt for pt in rt["curve"]}
    best_cost = rt["best_single"]["cost"]
    _out(f"{'':44} {'accuracy':>9} {'cost/query':>12} {'vs best single':>15} {'new model share':>16}")
    for label, v in DEMO_SETTINGS:
        pt = points[v]
        _out(
            f"{'scope-router ' + label + (' (accuracy only)' if v is None else f' (value ${v:g})'):44} "
            f"{pt['accuracy']:9.3f} {pt['cost']:12.6f} {pt['cost'] / best_cost:14.2f}x "
            f"{pt['model_share'].get(new, 0.0):16.3f}"
        )
    _out(
        f"{'oracle (cheapest correct model)':44} {rt['oracle']['accuracy']:9.3f} {rt['oracle']['cost']:12.6f} "
        f"{rt['oracle']['cost'] / best_cost:14.2f}x"
    )
    shown, more = _demo_singles(rt["singles"], new)
    for name in shown:
        s = rt["singles"][name]
        note = " (best single)" if name == rt["best_single"]["model"] else " (new)" if name == new else ""
        label = name[: 44 - len(note)] + note
        _out(f"{label:44} {s['accuracy']:9.3f} {s['cost']:12.6f} {s['cost'] / best_cost:14.2f}x")
    if more:
        _out(f"({more} more models, each less accurate and dearer than one above)")
    _out("")
    auroc = report["estimation"]["auroc_per_model"].get(new)
    share = sum(pt["model_share"].get(new, 0.0) for pt in rt["curve"]) / len(rt["curve"])
    _out(
        f"new model {new}: auroc_within_model={'n/a' if auroc is None else f'{auroc:.3f}'} from its "
        f"{len(trip.profile.recorded)} profiled anchors; share of the router's picks {share:.3f} "
        "(mean over the value sweep)"
    )
    for line in _summary_lines(report):
        _out(line)
    out = Path(args.out)
    plot = plot_report(report, out / "demo_curve.png", title=f"scope-router on {data.source}, {new} profiled")
    (out / "demo_report.json").write_text(json.dumps(trip.to_dict(), indent=2))
    _out(f"plot:   {plot}")
    _out(f"report: {out / 'demo_report.json'}")
    _out(
        f"wall time: {time.perf_counter() - t0:.1f} s (store {trip.seconds['store']:.1f} s, profile "
        f"{trip.seconds['profile']:.1f} s, route {trip.seconds['route']:.1f} s)"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scope-router", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    def store_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", default=".scope/anchors", help="embedded store directory")
        sp.add_argument("--chroma-host", help="use a Chroma server instead of --store")
        sp.add_argument("--chroma-port", type=int, default=8000)
        sp.add_argument("--chroma-ssl", action="store_true")
        sp.add_argument("--chroma-token-env", help="name of the env var holding the Chroma auth token")
        sp.add_argument("--chroma-ca", help="CA bundle (PEM) that signed the Chroma server's TLS certificate")
        sp.add_argument(
            "--chroma-timeout", type=float, default=10.0, help="seconds a Chroma server has to answer (default 10)"
        )
        sp.add_argument("--collection", default="scope-anchors")
        sp.add_argument(
            "--ef-search", type=int, help="HNSW candidates per search (Chroma's default 100); stored with the index"
        )

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--embedder", default="minilm", choices=EMBEDDERS)
        sp.add_argument("--k", type=int, default=10, help="anchors per estimate")

    def estimator_args(sp: argparse.ArgumentParser) -> None:
        from scope_shared.routing import DEFAULT_ESTIMATOR, ESTIMATORS

        sp.add_argument("--estimator", default=DEFAULT_ESTIMATOR, choices=list(ESTIMATORS))
        sp.add_argument("--vllm-url", help="OpenAI-compatible vLLM base URL serving the SCOPE model")
        sp.add_argument("--vllm-model", help="served model name (default: the server's only model)")
        sp.add_argument("--vllm-key-env", help="name of the env var holding the vLLM API key")

    sp = sub.add_parser("ingest", help="load outcome files (CSV/JSONL, .gz) into an anchor store")
    store_args(sp)
    model_args(sp)
    sp.add_argument(
        "--estimator",
        default="learned",
        choices=["learned", "anchors"],
        help="learned: fit it after loading and save the fit with the store (anchors: nothing to fit)",
    )
    sp.add_argument("files", nargs="*", help="outcome files (CSV/JSONL, .gz)")
    sp.add_argument(
        "--suite",
        help="seed the store with an anchor suite: 'default' (packaged), a suite folder, or a CSV of your questions",
    )
    sp.add_argument("-q", "--quiet", action="store_true")
    sp.set_defaults(fn=cmd_ingest)

    sp = sub.add_parser(
        "profile",
        help="run a new model over a suite's anchors through an OpenAI-compatible endpoint; grade and record it",
        description="Exit status: 0 when every chosen anchor has an outcome of the model (or --dry-run), 1 when "
        "the run stopped short (the cost cap, refused anchors), 2 on an error, 130 when interrupted.",
    )
    store_args(sp)
    sp.add_argument("--embedder", default="minilm", choices=EMBEDDERS, help="the embedder the store was built with")
    sp.add_argument("--model", required=True, help="the model's name: outcomes are recorded under it")
    sp.add_argument("--base-url", help="the OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    sp.add_argument("--served-model", help="the model name the endpoint serves, when it differs from --model")
    sp.add_argument("--api-key-env", help="name of the env var holding the endpoint's API key")
    sp.add_argument("--prices", required=True, help="prices CSV: model,input_per_mtok,output_per_mtok")
    sp.add_argument("--suite", default="default", help="'default', a suite folder, or a CSV of your questions")
    sp.add_argument("--n", type=int, default=100, help="anchors to profile on (default 100)")
    sp.add_argument("--select", default="random", choices=["random", "informative", "all"])
    sp.add_argument("--seed", type=int, default=0, help="seed of the anchor choice")
    sp.add_argument("--max-cost", type=float, help="USD cap on the run's spend; stops cleanly at it")
    sp.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    sp.add_argument("--max-tokens", type=int, help="cap on each answer's tokens (default: the server's)")
    sp.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one answer")
    sp.add_argument("--retries", type=int, default=6, help="further attempts after a 429, 5xx or timeout")
    sp.add_argument(
        "--template",
        help="prompt template file: text with {prompt} (or {query}, {instruction}), or JSON {\"system\", \"user\"}",
    )
    sp.add_argument("--dry-run", action="store_true", help="print the expected cost; call nothing")
    sp.add_argument("--json", help="write the report (one entry per anchor) here")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(fn=cmd_profile)

    sp = sub.add_parser("route", help="decide which model should answer a query, and show why")
    store_args(sp)
    model_args(sp)
    estimator_args(sp)
    sp.add_argument("query")
    sp.add_argument("--prices", required=True, help="prices CSV: model,input_per_mtok,output_per_mtok")
    sp.add_argument("--value", type=float, default=None, help="USD a correct answer is worth (default: accuracy)")
    sp.add_argument("--max-cost", type=float, default=None, help="max expected USD per call")
    sp.add_argument("--json", action="store_true", help="print the decision as JSON")
    sp.set_defaults(fn=cmd_route)

    sp = sub.add_parser("evaluate", help="replay-evaluate on held-out recorded outcomes")
    model_args(sp)
    estimator_args(sp)
    sp.add_argument("--anchors", required=True)
    sp.add_argument("--test", required=True)
    sp.add_argument("--prices", required=True)
    sp.add_argument("--json", help="write the full report here")
    sp.add_argument("--plot", help="write the accuracy/cost plot here (PNG)")
    sp.add_argument(
        "--holdout-models", default="", help="comma-separated models treated as new: keep few of their anchors"
    )
    sp.add_argument("--holdout-anchors", type=int, default=50, help="anchors each held-out model keeps")
    sp.add_argument("--holdout-seed", type=int, default=0, help="seed of the anchors held-out models keep")
    sp.add_argument(
        "--cascade", action="store_true", help="also replay cascades from the recorded responses (docs/cascade.md)"
    )
    sp.add_argument("--responses", help="recorded responses for --cascade (default: responses.csv.gz beside --test)")
    sp.add_argument("--references", help="gold references for --cascade (default: references.csv.gz beside --test)")
    sp.add_argument("--cascade-max-calls", type=int, default=4, help="calls per query a cascade makes at most")
    sp.add_argument("--cascade-candidates", type=int, default=8, help="models a cascade considers per query")
    sp.add_argument("--cascade-factors", type=int, default=1, choices=[1, 2], help="latent difficulty factors")
    sp.add_argument(
        "--holdout-select",
        default="random",
        choices=["random", "informative"],
        help="how held-out models' anchors are chosen: random, or informative (docs/anchor_selection.md)",
    )
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("store", help="compare the running totals with a full scan (check), or recount them (repair)")
    actions = sp.add_subparsers(dest="action", required=True)
    for action, text in (
        ("check", "compare each model's outcomes in a full scan with the running totals; exit 1 if they differ"),
        ("repair", "recount the running totals from a full scan (run it while nothing writes to the store)"),
    ):
        ap = actions.add_parser(action, help=text)
        store_args(ap)
        ap.add_argument("--embedder", default="minilm", choices=EMBEDDERS, help="the embedder the store was built with")
        ap.set_defaults(fn=cmd_store)

    sp = sub.add_parser(
        "demo",
        help="bring your own model, replayed: a store from the suite, a recorded model profiled as new through a "
        "replay server, the dataset's held-out queries routed with it",
    )
    model_args(sp)
    sp.add_argument("--data", default=str(DEFAULT_DATA), help="a dataset folder of ../shared/data")
    sp.add_argument("--new-model", help="the recorded model played as new (default: one per dataset)")
    sp.add_argument("--n", type=int, default=50, help="anchors to profile it on (default 50)")
    sp.add_argument("--select", default="informative", choices=["random", "informative", "all"])
    sp.add_argument("--seed", type=int, default=0, help="seed of the anchor choice")
    sp.add_argument("--suite", default="default", help="'default' (packaged) or a suite folder")
    sp.add_argument("--out", default="out", help="folder for demo_report.json and demo_curve.png")
    sp.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scope-router``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args))
    except ScopeError as exc:
        sys.stderr.write(f"scope-router: error: {exc}\n")
        return 2
    except OSError as exc:  # files: missing, a directory, under a file, not writable
        sys.stderr.write(f"scope-router: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("scope-router: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
