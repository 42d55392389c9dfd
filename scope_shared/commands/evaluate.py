"""``scope-router evaluate``: replay evaluation on held-out recorded outcomes, and its summary lines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scope_shared.commands._common import echo, make_embedder, routing_kwargs

__all__ = ["cmd_evaluate", "evaluation_lines"]


def _times(x: float | None) -> str:
    """A cost ratio (``0.996x``), or ``never`` when the router never reaches the best single model's accuracy."""
    return "never" if x is None else f"{x:.3f}x"


def evaluation_lines(report: dict[str, Any]) -> list[str]:
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
        f"cost to match it={_times(rt['router_cost_to_match_best_single'])}; max acc={fmt(rt['router_max_accuracy'])}; "
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
        estimator_factory=lambda: routing_kwargs(args)["estimator"],
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scope_shared.embeddings import CachedEmbedder
    from scope_shared.evaluation import evaluate, plot_report

    cascade = _cascade_replay(args) if args.cascade else None
    embedder = make_embedder(args.embedder)
    if cascade is not None:  # the cascade's cross-fitted stores embed the anchors again: once is enough
        embedder = CachedEmbedder(embedder, maxsize=100_000)
    report = evaluate(
        args.anchors,
        args.test,
        args.prices,
        embedder=embedder,
        **routing_kwargs(args),
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
    for line in evaluation_lines(report):
        echo(line)
    if cascade is not None:
        from scope_shared.cascade.replay import summary_lines

        for line in summary_lines(report["cascade"]):
            echo(line)
    if args.json:
        echo(f"report: {args.json}")
    if args.plot:
        echo(f"plot:   {args.plot}")
    return 0
