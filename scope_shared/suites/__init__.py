"""Anchor suites: benchmark questions with gold references and graders, and reference models' recorded outcomes.

``load_suite("default")`` reads the suite shipped with the package (see ``scope_shared/suites/README.md`` for
its mix and licences); :func:`suite_from_csv` reads your own labelled questions; :func:`store_from_suite`
builds an anchor store from a suite's precomputed vectors and reference outcomes. Graders compare a model's
raw response with a reference: ``choice``, ``number`` and ``exact`` follow the rules the bundled benchmarks
were graded with; :class:`CallableGrader` and :class:`JudgeGrader` bring your own function or an LLM judge.
"""

from scope_shared.suites.embedder import SuiteEmbedder
from scope_shared.suites.files import DEFAULT_SUITE, load_suite, suite_from_csv
from scope_shared.suites.graders import GRADERS, ChoiceGrader, ExactGrader, Grader, NumberGrader, grader_named
from scope_shared.suites.judges import CallableGrader, JudgeGrader
from scope_shared.suites.seed import seed_store, store_from_suite
from scope_shared.suites.suite import AnchorSuite, ReferenceOutcome, SuiteQuestion

__all__ = [
    "DEFAULT_SUITE",
    "GRADERS",
    "AnchorSuite",
    "CallableGrader",
    "ChoiceGrader",
    "ExactGrader",
    "Grader",
    "JudgeGrader",
    "NumberGrader",
    "ReferenceOutcome",
    "SuiteEmbedder",
    "SuiteQuestion",
    "grader_named",
    "load_suite",
    "seed_store",
    "store_from_suite",
    "suite_from_csv",
]
