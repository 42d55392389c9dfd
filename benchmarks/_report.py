"""Shared output of the benchmark scripts: print a markdown report and optionally save it."""

from __future__ import annotations

import sys
from pathlib import Path


def emit(lines: list[str], out: str | None) -> int:
    """Write ``lines`` to stdout and, when ``out`` is given, to that file; the script's exit status (0)."""
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return 0
