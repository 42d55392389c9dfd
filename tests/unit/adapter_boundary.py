"""The adapters' boundary, for their tests (no tests here): an adapter asks the engine; it never reaches the
engine's store or ledger, and never imports Chroma, an estimator, the policy's ledger or an HTTP client.

- :func:`reaches` scans a package's sources (AST) for attribute access ``.store`` / ``.ledger`` (or their
  private forms, or ``getattr`` with those names) on anything, and for imports past the engine;
- :func:`seal` turns an engine into one whose ``store`` and ``ledger`` note every access and refuse it, to
  drive an adapter's main paths with.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from scope_shared import ScopeEngine

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_ATTRIBUTES = frozenset({"store", "ledger", "_store", "_ledger"})
FORBIDDEN_MODULES = (
    "chromadb",
    "httpx",
    "openai",
    "scope_shared.store",
    "scope_shared.estimators",
    "scope_shared.policy",
    "scope_shared.recorder",
)


def _forbidden_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES)


def reaches(package: str, *, allow_modules: frozenset[str] = frozenset()) -> list[str]:
    """Every place in ``package``'s sources that reaches past the engine, as ``file:line what``."""
    found: list[str] = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
                found.append(f"{where} .{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in FORBIDDEN_ATTRIBUTES
            ):
                found.append(f"{where} {node.func.id}(..., {node.args[1].value!r})")
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if _forbidden_module(a.name) and a.name not in allow_modules]
                found += [f"{where} import {n}" for n in names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if _forbidden_module(node.module) and node.module not in allow_modules:
                    found.append(f"{where} from {node.module} import ...")
    return found


class SealedEngine(ScopeEngine):
    """A ScopeEngine whose ``store`` and ``ledger`` note each access in ``reached`` and refuse it (the
    engine itself keeps working: it uses its private attributes)."""

    reached: list[str]

    @property
    def store(self) -> Any:
        self.reached.append("store")
        msg = "an adapter reached engine.store"
        raise AssertionError(msg)

    @property
    def ledger(self) -> Any:
        self.reached.append("ledger")
        msg = "an adapter reached engine.ledger"
        raise AssertionError(msg)


def seal(engine: ScopeEngine) -> SealedEngine:
    """``engine`` as a :class:`SealedEngine` (the same object; adapters' ``isinstance`` checks still pass)."""
    engine.__class__ = SealedEngine
    sealed: SealedEngine = engine  # type: ignore[assignment]
    sealed.reached = []
    return sealed
