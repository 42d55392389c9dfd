"""The ``scope-router`` command: ingest, route, evaluate, demo.

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


def _store(args: argparse.Namespace) -> Any:
    from scope_shared.store import AnchorStore

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
        collection=args.collection,
        embedder=_embedder(args.embedder),
        hnsw={"ef_search": args.ef_search} if args.ef_search else None,
    )


def _estimator(args: argparse.Namespace) -> Any:
    from scope_shared.estimators.registry import build_estimator

    options: dict[str, Any] = {}
    if args.vllm_url:
        options["base_url"] = args.vllm_url
        options["model"] = args.vllm_model  # None: the server's only model
        if args.vllm_key_env:
            options["api_key"] = os.environ.get(args.vllm_key_env)
    return build_estimator(args.estimator, k=args.k, **options)


def _fmt_value(v: float | None) -> str:
    return "accuracy" if v is None or math.isinf(v) else f"${v:g}"


def cmd_ingest(args: argparse.Namespace) -> int:
    from scope_shared.data import load_outcomes

    store = _store(args)
    total = 0
    for f in args.files:
        rows = load_outcomes(f)
        report = store.add(rows, progress=not args.quiet)
        total += report.outcomes
        _out(f"{f}: {report.outcomes} outcomes, {report.anchors_new} new anchors, {report.anchors_updated} updated")
    _out(f"store {store!r}: {store.count()} anchors, {len(store.model_stats())} models")
    if args.estimator == "learned":  # fit once now and save it with the store: every router loads it
        from scope_shared.estimators.learned import LearnedEstimator

        fit = LearnedEstimator(k=args.k).fit(store)
        _out(f"learned estimator fitted on {fit.fit_anchors} of {fit.anchors} anchors in {fit.seconds:.1f}s, saved")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from scope_shared.data import load_prices
    from scope_shared.engine import ScopeEngine

    store = _store(args)
    engine = ScopeEngine(
        store=store,
        models=load_prices(args.prices),
        estimator=_estimator(args),
        k=args.k,
        value_per_correct=args.value,
        max_cost_per_call=args.max_cost,
    )
    decision = engine.route(args.query, reserve=False)
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scope_shared.evaluation import evaluate, plot_report

    report = evaluate(
        args.anchors,
        args.test,
        args.prices,
        embedder=_embedder(args.embedder),
        estimator=_estimator(args),
        k=args.k,
        holdout_models=[m.strip() for m in args.holdout_models.split(",") if m.strip()],
        holdout_anchors=args.holdout_anchors,
        holdout_seed=args.holdout_seed,
        holdout_select=args.holdout_select,
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_report(report, args.plot)
    for line in _summary_lines(report):
        _out(line)
    if args.json:
        _out(f"report: {args.json}")
    if args.plot:
        _out(f"plot:   {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from scope_shared.evaluation import evaluate, plot_report

    data = Path(args.data)
    files = [data / "anchors.csv.gz", data / "test.csv.gz", data / "prices.csv"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        msg = f"demo data not found: {missing}; pass --data DIR (a folder of ../shared/data)"
        raise ConfigError(msg)
    t0 = time.perf_counter()
    _out(f"building an anchor store from {files[0]} and routing the held-out queries of {files[1]} ...")
    values = [v for _, v in DEMO_SETTINGS]
    from scope_shared.evaluation import DEFAULT_VALUES

    report = evaluate(*files, embedder=_embedder(args.embedder), k=args.k, values=[*DEFAULT_VALUES, *values])
    rt = report["routing"]
    points = {pt["value_per_correct"]: pt for pt in rt["curve"]}
    _out("")
    _out(f"{len(rt['pool'])} models, {rt['queries']} held-out queries; mean cost per query in USD")
    _out("")
    _out(f"{'':44} {'accuracy':>9} {'cost/query':>12} {'vs best single':>15}")
    best_cost = rt["best_single"]["cost"]
    for label, v in DEMO_SETTINGS:
        pt = points[v]
        _out(
            f"{'scope-router ' + label + ' (value ' + _fmt_value(v) + ')':44} {pt['accuracy']:9.3f} "
            f"{pt['cost']:12.6f} {pt['cost'] / best_cost:14.2f}x"
        )
    _out(
        f"{'oracle (cheapest correct model)':44} {rt['oracle']['accuracy']:9.3f} {rt['oracle']['cost']:12.6f} "
        f"{rt['oracle']['cost'] / best_cost:14.2f}x"
    )
    for name, s in sorted(rt["singles"].items(), key=lambda kv: -kv[1]["accuracy"]):
        _out(f"{name[:44]:44} {s['accuracy']:9.3f} {s['cost']:12.6f} {s['cost'] / best_cost:14.2f}x")
    _out("")
    for line in _summary_lines(report):
        _out(line)
    out = Path(args.out)
    plot = plot_report(report, out / "demo_curve.png", title=f"scope-router on {data.name}")
    (out / "demo_report.json").write_text(json.dumps(report, indent=2))
    _out(f"plot:   {plot}")
    _out(f"report: {out / 'demo_report.json'}")
    _out(f"wall time: {time.perf_counter() - t0:.1f} s")
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
        sp.add_argument("--collection", default="scope-anchors")
        sp.add_argument(
            "--ef-search", type=int, help="HNSW candidates per search (Chroma's default 100); stored with the index"
        )

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--embedder", default="minilm", choices=EMBEDDERS)
        sp.add_argument("--k", type=int, default=10, help="anchors per estimate")

    def estimator_args(sp: argparse.ArgumentParser) -> None:
        from scope_shared.estimators.registry import DEFAULT_ESTIMATOR, ESTIMATORS

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
    sp.add_argument("files", nargs="+")
    sp.add_argument("-q", "--quiet", action="store_true")
    sp.set_defaults(fn=cmd_ingest)

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
        "--holdout-select",
        default="random",
        choices=["random", "informative"],
        help="how held-out models' anchors are chosen: random, or informative (docs/anchor_selection.md)",
    )
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("demo", help="build a store from shared data, route held-out queries, compare")
    model_args(sp)
    sp.add_argument("--data", default=str(DEFAULT_DATA))
    sp.add_argument("--out", default="out")
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
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        sys.stderr.write(f"scope-router: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("scope-router: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
