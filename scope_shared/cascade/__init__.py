"""Cascade routing: look at the answer before paying for a stronger model.

A pre-hoc router picks one model from estimates made before any answer exists. A cascade calls a model, reads its
answer, and decides by expected utility whether to stop or to call another: a cheap model's answer that a second
cheap model agrees with is often right, and paying for a strong model is then wasted (Dekoninck et al. 2024, "A
Unified Approach to Routing and Cascading for LLMs"; FrugalGPT, Chen et al. 2023).

- :mod:`.posterior`: which answer is correct, given the pre-hoc estimates and the answers so far (a
  Dawid-Skene posterior with a latent difficulty per query);
- :mod:`.checkers`: post-hoc evidence about one answer (unreadable answers, token log-probabilities);
- :mod:`.parameters`: the posterior's fitted parameters and their JSON; :mod:`.calibration`: fitting them on the
  anchors' recorded answers; :mod:`.crossfit`: the anchors' out-of-sample estimates and the one-call fits
  (:func:`fit_calibration_from_store`);
- :mod:`.state`: one query's pure state; :mod:`.planner`: the next step by expected utility, a few calls ahead;
- :mod:`.steps`: what a plan asks for and what it did; :mod:`.plan`: :class:`Cascade` and the
  :class:`CascadePlan` a caller drives, within the engine's budget; :mod:`.driver`: the loop that drives it;
- :mod:`.replay`: exact replay from recorded responses (:mod:`.recorded`, :mod:`.exact`) and the side-by-side
  report (:mod:`.report`).
"""

from scope_shared.cascade.calibration import CalibrationRow, CascadeCalibration, GroupCalibration, fit_calibration
from scope_shared.cascade.checkers import (
    Checker,
    LogprobCalibration,
    LogprobChecker,
    ModelAnswer,
    ParseChecker,
    Signal,
)
from scope_shared.cascade.crossfit import fit_calibration_from_store
from scope_shared.cascade.driver import CascadeDriver, Reply
from scope_shared.cascade.plan import Cascade, CascadePlan, CascadeResult, CascadeStep, StepRecord
from scope_shared.cascade.planner import Planner
from scope_shared.cascade.posterior import AnswerPosterior, Quadrature, correct_curves

__all__ = [
    "AnswerPosterior",
    "CalibrationRow",
    "Cascade",
    "CascadeCalibration",
    "CascadeDriver",
    "CascadePlan",
    "CascadeResult",
    "CascadeStep",
    "Checker",
    "GroupCalibration",
    "LogprobCalibration",
    "LogprobChecker",
    "ModelAnswer",
    "ParseChecker",
    "Planner",
    "Quadrature",
    "Reply",
    "Signal",
    "StepRecord",
    "correct_curves",
    "fit_calibration",
    "fit_calibration_from_store",
]
