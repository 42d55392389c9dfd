"""Throughput of ``BudgetLedger``: reserve + settle pairs per second, in memory and over a shared SQLite file.

Each thread loops ``try_reserve`` -> ``settle`` with no simulated call in between, against a limit it never
reaches, so the figure is the ledger's own cost (the lock, and for a file one write transaction per call);
the latency of a pair (p50, p99, max) includes waiting for the other threads and processes.
Processes are started with the spawn context and share one file in a temporary folder.

    python benchmarks/bench_ledger.py                     # the default grid, 3 s per row
    python benchmarks/bench_ledger.py --seconds 5 --window 86400
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from scope_shared import Budget, BudgetLedger

ROWS = [("memory", 1, 1), ("memory", 1, 8), ("file", 1, 1), ("file", 1, 8), ("file", 4, 8)]


def _loop(ledger: BudgetLedger, stop_at: float, times: list[list[float]], i: int) -> None:
    took = times[i]
    t0 = time.perf_counter()
    while t0 < stop_at:
        res = ledger.try_reserve(0.001, model="m")
        assert res is not None
        ledger.settle(res.id, 0.0009)
        t1 = time.perf_counter()
        took.append(t1 - t0)
        t0 = t1


def _process(path: str | None, window: float | None, threads: int, seconds: float, start: Any, out: Any) -> None:
    ledger = BudgetLedger(Budget(limit=1e12, window_seconds=window), path=path)
    times: list[list[float]] = [[] for _ in range(threads)]
    start.wait()
    stop_at = time.perf_counter() + seconds
    workers = [threading.Thread(target=_loop, args=(ledger, stop_at, times, i)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ledger.close()
    out.put([t for per_thread in times for t in per_thread])


def measure(kind: str, processes: int, threads: int, seconds: float, window: float | None) -> dict[str, float]:
    """Reserve + settle pairs per second, all threads of all processes together, and each pair's latency."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "ledger.sqlite") if kind == "file" else None
        if path is not None:
            BudgetLedger(Budget(limit=1e12), path=path).close()
        start, out = ctx.Barrier(processes), ctx.Queue()
        procs = [
            ctx.Process(target=_process, args=(path, window, threads, seconds, start, out)) for _ in range(processes)
        ]
        for p in procs:
            p.start()
        took = sorted(t for _ in procs for t in out.get(timeout=seconds + 120))
        for p in procs:
            p.join()
    pct = {f"p{q}_ms": round(took[min(len(took) - 1, len(took) * q // 100)] * 1e3, 3) for q in (50, 99)}
    return {"pairs_per_s": round(len(took) / seconds), **pct, "max_ms": round(took[-1] * 1e3, 1)}


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row")
    parser.add_argument("--window", type=float, default=None, help="rolling window in seconds (default: none)")
    args = parser.parse_args(argv)
    rows = []
    for kind, processes, threads in ROWS:
        figures = measure(kind, processes, threads, args.seconds, args.window)
        row = {"ledger": kind, "window": args.window, "processes": processes, "threads": threads, **figures}
        print(json.dumps(row))  # noqa: T201
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
