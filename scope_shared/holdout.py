"""Held-out models in a replay evaluation: models treated as newly added keep their outcomes on only a few
anchors (drawn at random or chosen by an anchor-selection strategy), and the report's ``holdout`` section."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from scope_shared.errors import ConfigError
from scope_shared.suites.selection import DEFAULT_STRATEGY, SELECTION_STRATEGIES, select_anchors
from scope_shared.types import Outcome

__all__ = ["hold_out", "holdout_report"]


def hold_out(
    rows: Sequence[Outcome],
    models: Sequence[str],
    n_keep: int,
    seed: int,
    known: set[str],
    *,
    select: str = "random",
    embed: Callable[[Sequence[str]], Any] | None = None,
) -> tuple[list[Outcome], dict[str, int]]:
    """Keep each held-out model's outcomes on only ``n_keep`` anchors (seeded); other rows unchanged.

    ``select="random"`` draws them uniformly; otherwise :func:`select_anchors` chooses them (``informative``:
    its default strategy) from ``embed``'s vectors of the candidates and the outcomes of the priced models
    that are not held out.
    """
    held = list(dict.fromkeys(models))
    if select not in ("random", "informative", *SELECTION_STRATEGIES):
        msg = f"unknown holdout selection {select!r}; known: random, informative, {', '.join(SELECTION_STRATEGIES)}"
        raise ConfigError(msg)
    if not held:
        return list(rows), {}
    unknown = [m for m in held if m not in known]
    if unknown:
        msg = f"holdout models without prices or anchor outcomes: {unknown}; known: {sorted(known)}"
        raise ConfigError(msg)
    if n_keep < 0:
        msg = f"holdout_anchors must be >= 0, got {n_keep}"
        raise ConfigError(msg)
    keep: dict[str, set[str]] = {}
    for i, model in enumerate(held):
        queries = sorted({o.query for o in rows if o.model == model})
        if select == "random":
            rng = np.random.default_rng([seed, i])
            picked = rng.choice(len(queries), size=min(n_keep, len(queries)), replace=False)
            keep[model] = {queries[j] for j in picked}
        else:
            keep[model] = set(_select(rows, queries, held, known, n_keep, [seed, i], select, embed))
    out = [o for o in rows if o.model not in keep or o.query in keep[o.model]]
    return out, {m: len(q) for m, q in keep.items()}


def _select(
    rows: Sequence[Outcome],
    queries: Sequence[str],
    held: Sequence[str],
    known: set[str],
    n_keep: int,
    seed: Sequence[int],
    select: str,
    embed: Callable[[Sequence[str]], Any] | None,
) -> list[str]:
    if embed is None:
        msg = f"holdout selection {select!r} needs the store's embedder (embed=...)"
        raise ConfigError(msg)
    refs = sorted(known - set(held))
    row_of, col_of = {q: r for r, q in enumerate(queries)}, {m: c for c, m in enumerate(refs)}
    outcomes = np.full((len(queries), len(refs)), np.nan)
    for o in rows:
        r, c = row_of.get(o.query), col_of.get(o.model)
        if r is not None and c is not None:
            outcomes[r, c] = o.correct
    strategy: Any = DEFAULT_STRATEGY if select == "informative" else select
    vectors = np.asarray(embed(list(queries)), dtype=np.float64)
    return select_anchors(queries, vectors, outcomes, n=min(n_keep, len(queries)), seed=seed, strategy=strategy)


def holdout_report(
    kept: Mapping[str, int], seed: int, estimation: Mapping[str, Any], routing: Mapping[str, Any]
) -> dict[str, Any]:
    per_model = {m: estimation["auroc_per_model"].get(m) for m in kept}
    scored = [a for a in per_model.values() if a is not None]
    curve = routing["curve"]
    share = {m: float(np.mean([pt["model_share"].get(m, 0.0) for pt in curve])) if curve else 0.0 for m in kept}
    top = max(curve, key=lambda pt: (pt["accuracy"], -pt["cost"])) if curve else None
    return {
        "models": list(kept),
        "anchors_kept": dict(kept),
        "seed": seed,
        "auroc_per_model": per_model,
        "auroc_within_model": float(np.mean(scored)) if scored else None,
        "mean_share_over_curve": share,
        "share_at_max_accuracy": {m: top["model_share"].get(m, 0.0) for m in kept} if top else {},
    }
