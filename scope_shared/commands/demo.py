"""``scope-router demo``: bring your own model, replayed end to end on a recorded dataset."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scope_shared.commands._common import echo, make_embedder
from scope_shared.commands.evaluate import evaluation_lines
from scope_shared.errors import ConfigError

__all__ = ["DEMO_SETTINGS", "cmd_demo"]


#: The demo's three trade-off settings: USD a correct answer is worth (None = accuracy only).
DEMO_SETTINGS: tuple[tuple[str, float | None], ...] = (
    ("thrifty", 0.001),
    ("balanced", 0.01),
    ("quality", None),
)


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
    echo(
        f"bring your own model, replayed on {data.source}: {model} is left out of a store from suite "
        f"{suite.name!r}, served as new by a replay server, profiled on {args.n} {args.select} anchors, then routed"
    )
    values = [v for _, v in DEMO_SETTINGS]
    trip = run_journey(
        data=data,
        suite=suite,
        model=model,
        inner=make_embedder(args.embedder),
        n=args.n,
        select=args.select,
        seed=args.seed,
        k=args.k,
        values=[*DEFAULT_VALUES, *values],
    )
    report, rt, new = trip.report, trip.report["routing"], trip.name
    stats = trip.store.model_stats()
    echo("")
    echo(
        f"1. store: {trip.store.count()} anchors of suite {suite.name!r} with {len(stats) - 1} reference models' "
        f"outcomes ({model}'s left out), from its precomputed vectors, in {trip.seconds['store']:.1f} s"
    )
    echo(f"2. profile: {new} through the replay server over HTTP ({trip.answered} answers served)")
    for line in trip.profile.lines():
        echo(f"   {line}" if line else "")
    left = ", ".join(f"{task} ({n} queries)" for task, n in sorted(trip.left_out.items()))
    echo("")
    echo(
        f"3. route: {rt['queries']} held-out test queries of {', '.join(trip.tasks)} (the tasks the suite covers"
        f"{'; left out: ' + left if left else ''}), {len(rt['pool'])} models, in {trip.seconds['route']:.1f} s; "
        "mean cost per query in USD"
    )
    echo("")
    points = {pt["value_per_correct"]: pt for pt in rt["curve"]}
    best_cost = rt["best_single"]["cost"]
    echo(f"{'':44} {'accuracy':>9} {'cost/query':>12} {'vs best single':>15} {'new model share':>16}")
    for label, v in DEMO_SETTINGS:
        pt = points[v]
        echo(
            f"{'scope-router ' + label + (' (accuracy only)' if v is None else f' (value ${v:g})'):44} "
            f"{pt['accuracy']:9.3f} {pt['cost']:12.6f} {pt['cost'] / best_cost:14.2f}x "
            f"{pt['model_share'].get(new, 0.0):16.3f}"
        )
    echo(
        f"{'oracle (cheapest correct model)':44} {rt['oracle']['accuracy']:9.3f} {rt['oracle']['cost']:12.6f} "
        f"{rt['oracle']['cost'] / best_cost:14.2f}x"
    )
    shown, more = _demo_singles(rt["singles"], new)
    for name in shown:
        s = rt["singles"][name]
        note = " (best single)" if name == rt["best_single"]["model"] else " (new)" if name == new else ""
        label = name[: 44 - len(note)] + note
        echo(f"{label:44} {s['accuracy']:9.3f} {s['cost']:12.6f} {s['cost'] / best_cost:14.2f}x")
    if more:
        echo(f"({more} more models, each less accurate and dearer than one above)")
    echo("")
    auroc = report["estimation"]["auroc_per_model"].get(new)
    share = sum(pt["model_share"].get(new, 0.0) for pt in rt["curve"]) / len(rt["curve"])
    echo(
        f"new model {new}: auroc_within_model={'n/a' if auroc is None else f'{auroc:.3f}'} from its "
        f"{len(trip.profile.recorded)} profiled anchors; share of the router's picks {share:.3f} "
        "(mean over the value sweep)"
    )
    for line in evaluation_lines(report):
        echo(line)
    out = Path(args.out)
    plot = plot_report(report, out / "demo_curve.png", title=f"scope-router on {data.source}, {new} profiled")
    (out / "demo_report.json").write_text(json.dumps(trip.to_dict(), indent=2))
    echo(f"plot:   {plot}")
    echo(f"report: {out / 'demo_report.json'}")
    echo(
        f"wall time: {time.perf_counter() - t0:.1f} s (store {trip.seconds['store']:.1f} s, profile "
        f"{trip.seconds['profile']:.1f} s, route {trip.seconds['route']:.1f} s)"
    )
    return 0
