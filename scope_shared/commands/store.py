"""``scope-router ingest`` (outcome files or a suite into a store) and ``store check|repair``."""

from __future__ import annotations

import argparse
import time

from scope_shared.commands._common import echo, open_store, suite_embedder
from scope_shared.errors import ConfigError

__all__ = ["cmd_ingest", "cmd_store"]


def cmd_ingest(args: argparse.Namespace) -> int:
    from scope_shared.data import load_outcomes

    if not args.files and not args.suite:
        msg = "nothing to ingest: give outcome files, or --suite default (or a suite folder or CSV)"
        raise ConfigError(msg)
    suite = None
    if args.suite:
        from scope_shared.suites import load_suite

        suite = load_suite(args.suite)
    store = open_store(args, embedder=suite_embedder(suite, args.embedder) if suite is not None else None)
    if suite is not None:
        from scope_shared.suites import seed_store

        t0 = time.perf_counter()
        report = seed_store(store, suite, progress=not args.quiet)
        echo(
            f"suite {suite.name!r}: {report.outcomes} outcomes of {len(suite.models)} reference models on "
            f"{len(suite)} questions, {report.anchors_new} new anchors, {report.anchors_updated} updated, "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    for f in args.files:
        rows = load_outcomes(f)
        report = store.add(rows, progress=not args.quiet)
        echo(f"{f}: {report.outcomes} outcomes, {report.anchors_new} new anchors, {report.anchors_updated} updated")
    echo(f"store {store!r}: {store.count()} anchors, {len(store.model_stats())} models")
    if args.estimator == "learned":  # fit once now and save it with the store: every router loads it
        from scope_shared.estimators.learned import LearnedEstimator

        fit = LearnedEstimator(k=args.k).fit(store)
        echo(f"learned estimator fitted on {fit.fit_anchors} of {fit.anchors} anchors in {fit.seconds:.1f}s, saved")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    store = open_store(args, must_exist=True)
    if args.action == "repair":
        stats = store.rebuild_stats()
        echo(f"store {store!r}: recounted {store.count()} anchors from a full scan; running totals reset")
        for name, st in stats.items():
            echo(f"  {name}: {st.n} outcomes, p_correct {st.p_correct:.4f}")
        return 0
    check = store.check_stats()
    counted = check.anchors_in_totals
    echo(
        f"store {store!r}: {check.anchors} anchors; in the running totals: "
        + ("not counted (totals begun by an older version)" if counted is None else str(counted))
    )
    echo(f"{'model':40} {'outcomes':>9} {'totals':>9} {'drift':>7} {'p_correct':>10} {'totals':>10}")
    drifted = check.drifted()
    off = 0
    for name in sorted({*check.scanned, *check.totals}):
        a, b = check.scanned.get(name), check.totals.get(name)
        n_a, n_b = (a.n if a else 0), (b.n if b else 0)
        off += abs(n_b - n_a)
        p_a, p_b = (f"{a.p_correct:.4f}" if a else "-"), (f"{b.p_correct:.4f}" if b else "-")
        mark = "  <- differs" if name in drifted else ""
        echo(f"{name[:40]:40} {n_a:9d} {n_b:9d} {n_b - n_a:+7d} {p_a:>10} {p_b:>10}{mark}")
    for line in check.journals:
        echo(f"unsettled batch journal: {line}")
    if not check.drift:
        echo("no drift: the running totals match a full scan")
        return 0
    anchors = "" if counted in (None, check.anchors) else f"; the totals count {counted} anchors, not {check.anchors}"
    echo(
        f"drift: {len(drifted)} model(s) differ, by {off} outcomes{anchors}. Recount with: scope-router store "
        "repair (the same store options; while nothing writes)"
    )
    return 1
