"""Anchor suites: benchmark questions with gold references, graders, and reference models' recorded outcomes."""

from scope_shared.suites.graders import (
    GRADERS,
    CallableGrader,
    ChoiceGrader,
    ExactGrader,
    Grader,
    JudgeGrader,
    NumberGrader,
    grader_named,
)

__all__ = [
    "GRADERS",
    "CallableGrader",
    "ChoiceGrader",
    "ExactGrader",
    "Grader",
    "JudgeGrader",
    "NumberGrader",
    "grader_named",
]
