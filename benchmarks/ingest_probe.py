"""``store.add`` throughput without embedding: a store of N anchors (hashing embedder, 10 models), then five
calls of 640 outcomes (64 new questions x 10 models), timed.

    python -m benchmarks.ingest_probe 20000
    PYTHONPATH=<an older checkout> python -m benchmarks.ingest_probe 20000   # the same probe on older code

Measured (docs/benchmarks.md): 0.73 s a call at 20,000 anchors on main against 0.22 s before the renovation.
"""

from __future__ import annotations

import sys
import tempfile
import time

from scope_shared import AnchorStore, HashingEmbedder, Outcome

MODELS = [f"m{i}" for i in range(10)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 20_000
    store = AnchorStore(path=tempfile.mkdtemp(), embedder=HashingEmbedder())
    t0 = time.perf_counter()
    for start in range(0, n, 2000):
        rows = range(start, min(n, start + 2000))
        store.add(
            [Outcome(query=f"base question {a} about topic {a % 97}", model=m, correct=float((a + i) % 2))
             for a in rows for i, m in enumerate(MODELS)],
            progress=False,
        )  # fmt: skip
    print(f"built {n} anchors in {time.perf_counter() - t0:.1f} s")
    times = []
    for rep in range(5):
        outs = [Outcome(query=f"new question {rep} {j}", model=m, correct=1.0) for j in range(64) for m in MODELS]
        t = time.perf_counter()
        store.add(outs, progress=False)
        times.append(time.perf_counter() - t)
    print("store.add of 640 outcomes, s:", " ".join(f"{x:.3f}" for x in times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
