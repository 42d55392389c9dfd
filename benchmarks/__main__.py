"""``python -m benchmarks``: the scale benchmark (see :mod:`benchmarks.scale`)."""

from benchmarks.scale import main

raise SystemExit(main())
