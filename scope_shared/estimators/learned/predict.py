"""Prediction of the learned estimator from a fit: contexts -> neighbour arrays -> features -> predictions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from scope_shared.errors import NoAnchorDataError
from scope_shared.estimators.anchors import Prior
from scope_shared.estimators.base import Prediction, QueryContext
from scope_shared.estimators.learned.features import (
    LENGTH_FEATURES,
    P_FEATURES,
    Neighbourhood,
    features,
    sigmoid,
    text_stats,
)
from scope_shared.estimators.learned.params import FitSettings, Params
from scope_shared.types import DEFAULT_OUTPUT_TOKENS, AnchorEvidence, AnchorRecord, ModelStats

__all__ = ["predict"]


def predict(
    queries: Sequence[QueryContext],
    models: Sequence[str],
    params: Params,
    settings: FitSettings,
    *,
    prior: Prior | None,
    exact_weight: float,
    evidence: int,
    min_own_coverage: float = 0.0,
) -> list[dict[str, Prediction]]:
    """Predict every query for every model with ``params``; one dict per query, keyed by model name.

    A candidate whose outcomes cover less than ``min_own_coverage`` of the fitted anchors is estimated without
    its own neighbour outcomes (see :class:`~scope_shared.estimators.learned.LearnedEstimator`).
    """
    # One vectorised pass per group of queries with the same model statistics (a batch from the engine is
    # one group: it reads them once per call).
    groups: list[tuple[Mapping[str, ModelStats], list[int]]] = []
    for i, ctx in enumerate(queries):
        group = next((g for g in reversed(groups) if g[0] is ctx.stats or g[0] == ctx.stats), None)
        if group is None:
            groups.append((ctx.stats, [i]))
        else:
            group[1].append(i)
    out: dict[int, dict[str, Prediction]] = {}
    for _, rows in groups:
        ctxs = [queries[i] for i in rows]
        predicted = _group(
            ctxs,
            models,
            params,
            settings,
            prior=prior,
            exact_weight=exact_weight,
            evidence=evidence,
            min_own_coverage=min_own_coverage,
        )
        out.update(zip(rows, predicted, strict=True))
    return [out[i] for i in range(len(queries))]


def _group(
    ctxs: Sequence[QueryContext],
    models: Sequence[str],
    params: Params,
    settings: FitSettings,
    *,
    prior: Prior | None,
    exact_weight: float,
    evidence: int,
    min_own_coverage: float,
) -> list[dict[str, Prediction]]:
    """Predict for queries that share one statistics mapping: one (queries x anchors x models) pass."""
    all_stats_in = ctxs[0].stats
    stats: dict[str, ModelStats] = {}
    degraded: dict[str, str] = {}
    for m in models:
        st = all_stats_in.get(m)
        if st is None or st.n == 0:
            if prior is None:
                msg = (
                    f"model {m!r} has no recorded outcome on any anchor; add some "
                    "(AnchorStore.add / engine.record) or pass LearnedEstimator(prior=Prior(...))"
                )
                raise NoAnchorDataError(msg)
            st = prior
            degraded[m] = f"no anchor outcomes for {m!r}; used the prior"
        stats[m] = st
    # Columns: the candidates first, then every other model with a record (for the difficulty features).
    others = sorted(n for n, st in all_stats_in.items() if st.n > 0 and n not in stats)
    cols = [*models, *others]
    col = {m: j for j, m in enumerate(cols)}
    all_stats = {**{n: all_stats_in[n] for n in others}, **stats}
    default_lt = math.log1p(DEFAULT_OUTPUT_TOKENS)
    p_all = np.array([all_stats[m].p_correct for m in cols])
    lt_all = np.array(
        [all_stats[m].mean_log_tokens if all_stats[m].mean_log_tokens is not None else np.nan for m in cols]
    )
    b_n = len(ctxs)
    n_r = max(1, *(len(c.anchors) for c in ctxs))
    sims = np.full((b_n, n_r), np.nan)
    correct = np.full((b_n, n_r, len(cols)), np.nan)
    log_tokens = np.full((b_n, n_r, len(cols)), np.nan)
    for b, ctx in enumerate(ctxs):
        for i, a in enumerate(ctx.anchors):
            sims[b, i] = a.similarity
            for m, o in a.outcomes.items():
                j = col.get(m)
                if j is None:
                    continue
                correct[b, i, j] = o.correct
                if o.output_tokens is not None:
                    log_tokens[b, i, j] = math.log1p(max(0.0, o.output_tokens))
    sparse = [col[m] for m in models if m not in degraded and stats[m].n < min_own_coverage * params.anchors]
    if sparse:  # too few own outcomes to be neighbours: the model's overall record stands in for them
        correct[:, :, sparse] = np.nan
        log_tokens[:, :, sparse] = np.nan
    nb = Neighbourhood(
        sims=sims,
        correct=correct,
        log_tokens=log_tokens,
        p_target=np.broadcast_to(p_all, (b_n, len(cols))),
        lt_target=np.broadcast_to(np.where(np.isnan(lt_all), default_lt, lt_all), (b_n, len(cols))),
        p_all=p_all,
        lt_all=lt_all,
        log_input=np.log1p(np.maximum(0.0, np.array([c.input_tokens for c in ctxs], dtype=np.float64))),
    )
    f = features(nb, k=settings.k, power=settings.power, strength=settings.prior_strength)
    # The text feature needs the query's embedding; a query without one uses the weights fitted without it.
    with_text = np.array([params.ridge_w is not None and c.embedding is not None for c in ctxs])
    z = np.empty((b_n, len(cols)))
    x_base = np.stack([np.asarray(f[name]) for name in P_FEATURES[:-1]], axis=2)  # B x M x features
    if with_text.any():
        assert params.ridge_w is not None and params.ridge_mu is not None
        idx = np.flatnonzero(with_text)
        x = np.hstack(
            [
                np.asarray([ctxs[i].embedding for i in idx.tolist()], dtype=np.float64),
                np.array([text_stats(ctxs[i].query, tail_chars=settings.tail_chars) for i in idx.tolist()]),
            ]
        )
        text = (x - params.ridge_mu) @ params.ridge_w + params.ridge_b
        z[idx] = x_base[idx] @ params.coef[:-2] + text[:, None] * params.coef[-2] + params.coef[-1]
    if not with_text.all():
        idx = np.flatnonzero(~with_text)
        z[idx] = x_base[idx] @ params.coef_no_text[:-1] + params.coef_no_text[-1]
    p = sigmoid(z)
    if params.length_coef is not None:
        x_l = np.stack([np.asarray(f[name]) for name in LENGTH_FEATURES], axis=2)
        lt = np.clip(x_l @ params.length_coef[:-1] + params.length_coef[-1], 0.0, params.max_log_tokens + 1.0)
    else:
        lt = np.asarray(f["knn_length"])
    n_eff = np.asarray(f["n_eff"])
    no_text_reason = ""
    if params.ridge_w is not None:
        no_text_reason = "no query embedding in the context; estimated without the text-difficulty feature"
    elif params.report.note:
        no_text_reason = params.report.note
    w = exact_weight
    results: list[dict[str, Prediction]] = []
    for b, ctx in enumerate(ctxs):
        anchors = ctx.anchors
        reason = "" if with_text[b] else no_text_reason
        exact = next((a for a in anchors if a.question == ctx.query), None)
        p_b, lt_b, n_b = p[b].tolist(), lt[b].tolist(), n_eff[b].tolist()
        result: dict[str, Prediction] = {}
        for m in models:
            j = col[m]
            pj, ltj = p_b[j], lt_b[j]
            seen = exact.outcomes.get(m) if exact is not None else None
            if seen is not None and w > 0:
                pj = (1.0 - w) * pj + w * seen.correct
                if seen.output_tokens is not None:
                    ltj = (1.0 - w) * ltj + w * math.log1p(max(0.0, seen.output_tokens))
            notes = (degraded.get(m, ""), reason, "the query itself is an anchor" if seen is not None else "")
            result[m] = Prediction(
                p_correct=pj,
                output_tokens=math.expm1(ltj),
                evidence=_evidence(anchors, m, min(evidence, settings.k)),
                p_std=math.sqrt(max(pj * (1.0 - pj), 1e-9) / max(n_b[j] + settings.prior_strength, 1e-9)),
                degraded=m in degraded or (params.ridge_w is not None and not with_text[b]),
                reason="; ".join(r for r in notes if r),
            )
        results.append(result)
    return results


def _evidence(anchors: Sequence[AnchorRecord], model: str, limit: int) -> tuple[AnchorEvidence, ...]:
    used: list[AnchorEvidence] = []
    for a in anchors:
        if len(used) >= limit:
            break
        o = a.outcomes.get(model)
        if o is None:
            continue
        # Validated construction: pydantic-core builds these ~3x faster than model_construct.
        used.append(
            AnchorEvidence(
                anchor_id=a.anchor_id, similarity=a.similarity, correct=o.correct, output_tokens=o.output_tokens
            )
        )
    return tuple(used)
