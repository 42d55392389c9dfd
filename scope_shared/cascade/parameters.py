"""The answer posterior's fitted parameters, per calibration group, and their persistence (JSON).

:class:`CascadeCalibration` is what :func:`~scope_shared.cascade.calibration.fit_calibration` returns and what a
:class:`~scope_shared.cascade.Cascade` reads at run time: per group (a grader kind, or a task of it) the collision
rate, the unparsed rates, the loadings and the confidence recalibration, and per anchor the statistics a query's
own collision probability and group are read from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scope_shared.cascade.checkers import LogprobCalibration
from scope_shared.cascade.posterior import P_CLIP
from scope_shared.errors import ConfigError, DataError

__all__ = ["COLLISION_CLIP", "CascadeCalibration", "GroupCalibration", "group_name"]

#: Collision probabilities are held inside [COLLISION_CLIP, 1 - COLLISION_CLIP].
COLLISION_CLIP = 0.01


@dataclass(frozen=True)
class GroupCalibration:
    """The fitted parameters of one grader kind, or of one task of it (see :meth:`CascadeCalibration.group_for`)."""

    collision: float
    collision_pairs: int
    unparsed: Mapping[str, float]
    default_unparsed: float
    loading: Mapping[str, tuple[float, ...]]
    default_loading: tuple[float, ...]
    anchors: int
    confidence: tuple[float, float] = (1.0, 0.0)  # slope, intercept on the log-odds of the best answer


def group_name(kind: str, task: str | None = None) -> str:
    """The name of a calibration group: the grader kind, or ``kind/task``."""
    return kind if task is None else f"{kind}/{task}"


@dataclass(frozen=True)
class CascadeCalibration:
    """Everything the answer posterior needs, fitted on the anchors (:func:`fit_calibration`).

    Parameters come per group: a grader kind (``"choice"``), and each task of it with enough anchors
    (``"choice/winogrande"``). A query's group is read off the anchors behind its pre-hoc estimate
    (:meth:`group_for`), so no task label is needed at run time.

    Attributes:
        groups: per group.
        anchors: anchor id -> (coinciding pairs, pairs of its wrong parsed answers, its task or None).
        collision_strength: pseudo-pairs of the group's rate in a query's collision probability.
        logprob: the log-probability calibration, when one was fitted.
        report: how the fit went (anchors, likelihoods, calibration of the posterior on the anchors).
    """

    groups: Mapping[str, GroupCalibration]
    anchors: Mapping[str, tuple[int, int, str | None]] = field(default_factory=dict)
    collision_strength: float = 30.0
    logprob: LogprobCalibration | None = None
    report: Mapping[str, Any] = field(default_factory=dict)

    def group(self, name: str) -> GroupCalibration:
        """The parameters of a group; :class:`ConfigError` naming the calibrated groups otherwise."""
        try:
            return self.groups[name]
        except KeyError:
            msg = f"no cascade calibration for grader kind {name!r}; calibrated: {sorted(self.groups)}"
            raise ConfigError(msg) from None

    @property
    def kinds(self) -> list[str]:
        """The calibrated grader kinds."""
        return sorted(g for g in self.groups if "/" not in g)

    @property
    def factors(self) -> int:
        """Latent difficulty factors of the posterior (1 or 2)."""
        return len(next(iter(self.groups.values())).default_loading) if self.groups else 1

    def group_for(self, kind: str, neighbours: Sequence[tuple[str, float]] = ()) -> str:
        """A query's group: the task most of the anchors behind its estimate (weighted by similarity squared)
        come from, when that task has parameters of its own and holds at least half the weight; else the kind."""
        self.group(kind)
        weight: dict[str, float] = {}
        total = 0.0
        for aid, sim in neighbours:
            found = self.anchors.get(aid)
            if found is None or found[2] is None:
                continue
            w = max(sim, 0.0) ** 2
            total += w
            name = group_name(kind, found[2])
            if name in self.groups:
                weight[name] = weight.get(name, 0.0) + w
        if weight:
            best = max(weight, key=lambda g: (weight[g], g))
            if weight[best] >= 0.5 * total:
                return best
        return kind

    def collision_for(self, group: str, neighbours: Sequence[tuple[str, float]] = ()) -> float:
        """P(two wrong answers to this query coincide): the neighbours' rate, shrunk toward the group's."""
        g = self.group(group)
        hits = pairs = 0.0
        for aid, sim in neighbours:
            found = self.anchors.get(aid)
            if found is not None:
                w = max(sim, 0.0) ** 2
                hits += w * found[0]
                pairs += w * found[1]
        rate = (hits + self.collision_strength * g.collision) / (pairs + self.collision_strength)
        return float(min(max(rate, COLLISION_CLIP), 1.0 - COLLISION_CLIP))

    def unparsed(self, group: str, model: str) -> float:
        """P(the model's answer cannot be read)."""
        g = self.group(group)
        return float(g.unparsed.get(model, g.default_unparsed))

    def loading(self, group: str, model: str) -> tuple[float, ...]:
        """A model's loadings on the latent difficulty factors."""
        g = self.group(group)
        return tuple(g.loading.get(model, g.default_loading))

    def confidence(self, group: str, p: float) -> float:
        """P(the best answer is correct), recalibrated from the posterior's ``p`` (a fitted temperature)."""
        slope, intercept = self.group(group).confidence
        if slope == 1.0 and intercept == 0.0:
            return p
        pc = min(max(p, 1e-12), 1.0 - 1e-12)
        return 1.0 / (1.0 + math.exp(-(slope * math.log(pc / (1.0 - pc)) + intercept)))

    def parsed_p(self, group: str, model: str, p: float) -> float:
        """P(correct | the answer parses) from the pre-hoc P(correct): an unparsed answer is never correct."""
        return min(max(p / max(1.0 - self.unparsed(group, model), 1e-6), P_CLIP), 1.0 - P_CLIP)

    # -- persistence ---------------------------------------------------------------------------------

    def to_json(self) -> str:
        data = {
            "format": 2,
            "groups": {
                name: {
                    "collision": g.collision,
                    "collision_pairs": g.collision_pairs,
                    "unparsed": dict(g.unparsed),
                    "default_unparsed": g.default_unparsed,
                    "loading": {m: list(v) for m, v in g.loading.items()},
                    "default_loading": list(g.default_loading),
                    "anchors": g.anchors,
                    "confidence": list(g.confidence),
                }
                for name, g in self.groups.items()
            },
            "anchors": {a: list(v) for a, v in self.anchors.items()},
            "collision_strength": self.collision_strength,
            "logprob": self.logprob.to_json() if self.logprob is not None else None,
            "report": self.report,
        }
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> CascadeCalibration:
        try:
            data = json.loads(text)
            if data.get("format") != 2:
                msg = f"unknown cascade calibration format {data.get('format')!r}"
                raise DataError(msg)
            groups = {
                name: GroupCalibration(
                    collision=float(g["collision"]),
                    collision_pairs=int(g["collision_pairs"]),
                    unparsed={str(m): float(v) for m, v in g["unparsed"].items()},
                    default_unparsed=float(g["default_unparsed"]),
                    loading={str(m): tuple(float(x) for x in v) for m, v in g["loading"].items()},
                    default_loading=tuple(float(x) for x in g["default_loading"]),
                    anchors=int(g["anchors"]),
                    confidence=(float(g["confidence"][0]), float(g["confidence"][1])),
                )
                for name, g in data["groups"].items()
            }
            return cls(
                groups=groups,
                anchors={
                    str(a): (int(v[0]), int(v[1]), None if v[2] is None else str(v[2]))
                    for a, v in data["anchors"].items()
                },
                collision_strength=float(data["collision_strength"]),
                logprob=LogprobCalibration.from_json(data["logprob"]) if data.get("logprob") else None,
                report=dict(data.get("report") or {}),
            )
        except DataError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            msg = f"not a cascade calibration ({type(exc).__name__}: {exc})"
            raise DataError(msg) from None
