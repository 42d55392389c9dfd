"""A fit of the learned estimator: its parameters, its report, its JSON form and the key it is saved under."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from scope_shared.estimators.learned.features import FloatArray

__all__ = ["STATE_VERSION", "FitReport", "FitSettings", "Params", "params_from_json", "params_to_json"]

#: Version of the saved JSON form; a fit saved under another version is refitted.
STATE_VERSION = 2
_ARRAYS = ("coef", "coef_no_text", "length_coef", "ridge_w", "ridge_mu")


@dataclass(frozen=True)
class FitReport:
    """What a fit saw and how well its leave-one-out predictions did on the anchors themselves."""

    anchors: int
    fit_anchors: int
    pairs: int
    models: int
    coef: dict[str, float]
    length_coef: dict[str, float]
    loo_auroc_within_model: float | None
    loo_ece: float | None
    loo_length_log_mae: float | None
    seconds: float
    note: str = ""


@dataclass(frozen=True)
class Params:
    """Everything a prediction needs from a fit."""

    coef: FloatArray  # P_FEATURES + intercept
    coef_no_text: FloatArray  # P_FEATURES without "text" + intercept
    length_coef: FloatArray | None  # LENGTH_FEATURES + intercept; None: no token counts to fit on
    ridge_w: FloatArray | None
    ridge_mu: FloatArray | None
    ridge_b: float
    max_log_tokens: float
    anchors: int
    report: FitReport


@dataclass(frozen=True)
class FitSettings:
    """The options a fit depends on (see :class:`LearnedEstimator` for each); they name the saved fit."""

    k: int
    power: float
    prior_strength: float
    ridge_alpha: float
    max_fit_anchors: int
    min_fit_pairs: int
    tail_chars: int
    seed: int
    max_store_anchors: int

    @property
    def state_key(self) -> str:
        """The key of a fit with these settings in the store's saved state."""
        config = [
            self.k,
            self.power,
            self.prior_strength,
            self.ridge_alpha,
            self.max_fit_anchors,
            self.min_fit_pairs,
            self.tail_chars,
            self.seed,
            self.max_store_anchors,
            STATE_VERSION,
        ]
        return "learned-" + hashlib.sha256(json.dumps(config).encode()).hexdigest()[:16]


def params_to_json(params: Params) -> dict[str, Any]:
    """The JSON-ready form of a fit (arrays as lists)."""
    out: dict[str, Any] = {
        name: (None if getattr(params, name) is None else getattr(params, name).tolist()) for name in _ARRAYS
    }
    out |= {
        "ridge_b": params.ridge_b,
        "max_log_tokens": params.max_log_tokens,
        "anchors": params.anchors,
        "report": dataclasses.asdict(params.report),
        "version": STATE_VERSION,
    }
    return out


def params_from_json(data: dict[str, Any]) -> Params:
    """Read :func:`params_to_json`'s form back; raises ValueError, KeyError or TypeError when it is not one."""
    if data.get("version") != STATE_VERSION:
        msg = f"saved fit version {data.get('version')!r}, expected {STATE_VERSION}"
        raise ValueError(msg)
    arrays = {name: None if data[name] is None else np.asarray(data[name], dtype=np.float64) for name in _ARRAYS}
    if arrays["coef"] is None or arrays["coef_no_text"] is None:
        msg = "saved fit has no coefficients"
        raise ValueError(msg)
    return Params(
        coef=arrays["coef"],
        coef_no_text=arrays["coef_no_text"],
        length_coef=arrays["length_coef"],
        ridge_w=arrays["ridge_w"],
        ridge_mu=arrays["ridge_mu"],
        ridge_b=float(data["ridge_b"]),
        max_log_tokens=float(data["max_log_tokens"]),
        anchors=int(data["anchors"]),
        report=FitReport(**data["report"]),
    )
