"""Embedders side by side: per-text latency, batched throughput, and routing quality on the shared datasets.

For each embedder (``--embedders``, names as ``scope-router --embedder``), prints

* latency: p50 / p90 ms of one ``embed([text])`` call on a ~1000-character prompt (the store embeds each
  text's last 1000 characters), the p50 of one decision floor (that embedding plus one Chroma vector search
  over the dataset's anchors), and texts/s when embedding ``--batch`` such prompts in one call;
* quality: ``auroc_within_model``, ``ece`` and ``aiq`` of :func:`scope_shared.evaluation.evaluate` for each
  estimator (``--estimators``) on each dataset (``--datasets``), and each figure's difference from the first
  embedder (the reference, MiniLM by default).

Quality runs read and write an on-disk embedding cache (``--cache``, default ``out/embed-cache``; one
``.npz`` per embedder, keyed by a hash of the embedded text), so a rerun re-embeds nothing, and keep each
evaluation's figures in ``quality.json`` there, so a rerun only evaluates what is new (``--fresh``: all);
the latency runs time the embedder itself.

    python -m benchmarks.embedders_table                                    # minilm vs minilm-static
    python -m benchmarks.embedders_table --embedders minilm minilm-static hashing --out out/embedders.md
    python -m benchmarks.embedders_table --skip-quality --embedders minilm minilm:batch=16 \\
        minilm-static:dim=384,sif=none
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import emit
from scope_shared import AnchorStore, load_outcomes
from scope_shared.embeddings import Embedder, Matrix
from scope_shared.evaluation import evaluate
from scope_shared.routing import build_routing

TAIL = 1000


def build(name: str) -> Embedder:
    """An embedder by its CLI name (``scope-router --embedder``), or a static variant like
    ``minilm-static:dim=384,sif=none`` (StaticEmbedder keyword arguments)."""
    from scope_shared.cli import _embedder
    from scope_shared.embeddings import MiniLMEmbedder, StaticEmbedder

    if name.startswith("minilm-static:"):
        opts = dict(kv.split("=", 1) for kv in name.split(":", 1)[1].split(","))
        sif = opts.get("sif", "1e-4")
        return StaticEmbedder(dim=int(opts.get("dim", 256)), sif_coefficient=None if sif == "none" else float(sif))
    if name.startswith("minilm:"):  # batch=N, maxlen=N (tokens), int8=1 (dynamic int8 Linear layers)
        opts = dict(kv.split("=", 1) for kv in name.split(":", 1)[1].split(","))
        mini = MiniLMEmbedder(batch_size=int(opts.get("batch", 64)))
        model = mini._load()  # noqa: SLF001 - a benchmark variant, not an API
        if "maxlen" in opts:
            model.max_seq_length = int(opts["maxlen"])
        if opts.get("int8") == "1":
            import torch

            mini._model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)  # noqa: SLF001
        return mini
    emb: Embedder = _embedder(name)
    return emb


class DiskCache:
    """An exact-text cache in front of an embedder, persisted as one ``.npz`` per embedder under ``folder``."""

    def __init__(self, inner: Embedder, folder: Path) -> None:
        self.inner = inner
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in inner.name)
        self.path = folder / f"{safe}.npz"
        self._cache: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path) as z:
                self._cache = dict(zip(z["keys"].tolist(), z["vectors"], strict=True))
        self._dirty = False

    @property
    def name(self) -> str:
        return self.inner.name

    @staticmethod
    def key(text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()

    def embed(self, texts: Sequence[str]) -> Matrix:
        keys = [self.key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._cache}
        if missing:
            t0 = time.perf_counter()
            vectors = self.inner.embed(list(missing.values()))
            self._cache.update(zip(missing, vectors, strict=True))
            self._dirty = True
            print(f"  embedded {len(missing)} texts in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
            self.save()
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys]).astype(np.float32)

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._cache), dtype="U32")
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vectors=np.stack(list(self._cache.values())).astype(np.float32))
        tmp.replace(self.path)
        self._dirty = False


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def prompts(data: Path, n: int) -> list[str]:
    """Up to ``n`` distinct held-out prompts, each cut to its last 1000 characters, longest first."""
    texts = list(dict.fromkeys(o.query[-TAIL:] for o in load_outcomes(data / "test.csv.gz")))
    texts.sort(key=len, reverse=True)
    return texts[:n]


def latency(emb: Embedder, texts: Sequence[str], batch: Sequence[str], store: AnchorStore, k: int) -> dict[str, float]:
    """Per-text p50/p90 ms, the decision floor (embed + vector search) p50 ms, and batched texts/s."""
    emb.embed(texts[:2])  # load the model outside the timing
    single: list[float] = []
    floor: list[float] = []
    for t in texts:
        t0 = time.perf_counter()
        v = emb.embed([t])
        t1 = time.perf_counter()
        store.query(v, k=k)
        t2 = time.perf_counter()
        single.append(t1 - t0)
        floor.append(t2 - t0)
    t0 = time.perf_counter()
    emb.embed(list(batch))
    batched = len(batch) / (time.perf_counter() - t0)
    return {
        "p50": 1000 * statistics.median(single),
        "p90": 1000 * float(np.percentile(single, 90)),
        "floor": 1000 * statistics.median(floor),
        "tps": batched,
        "chars": statistics.median(len(t) for t in texts),
    }


def quality(
    emb: DiskCache, data: Path, estimators: Sequence[str], k: int, saved: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each estimator's figures on ``data``; ``saved`` holds earlier runs' figures by key and gets the new ones."""
    files = [data / "anchors.csv.gz", data / "test.csv.gz", data / "prices.csv"]
    out = {}
    for est in estimators:
        key = f"{data.name}|{emb.name}|{est}|k={k}"
        if key in saved:
            out[est] = saved[key]
            continue
        rows = [*load_outcomes(files[0]), *load_outcomes(files[1])]
        emb.embed(list(dict.fromkeys(o.query[-TAIL:] for o in rows)))  # one batched call, before timing
        t0 = time.perf_counter()
        rep = evaluate(*files, embedder=emb, store=AnchorStore(embedder=emb), **build_routing(est, k=k)._asdict(), k=k)
        e, r = rep["estimation"], rep["routing"]
        out[est] = saved[key] = {"auroc": e["auroc_within_model"], "ece": e["ece"], "aiq": r["aiq"]}
        print(f"  {key}: {out[est]} [{time.perf_counter() - t0:.0f}s]", file=sys.stderr, flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--data", default="../shared/data", help="folder holding the dataset folders")
    p.add_argument("--datasets", default="routerbench-zs,zeroeval")
    p.add_argument("--embedders", nargs="+", default=["minilm", "minilm-static"], help="the first is the reference")
    p.add_argument("--estimators", default="anchors,learned")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--latency-queries", type=int, default=100, help="single-text calls timed per embedder")
    p.add_argument("--batch", type=int, default=256, help="texts in the batched-throughput call")
    p.add_argument("--cache", default="out/embed-cache", help="on-disk embedding cache for the quality runs")
    p.add_argument("--fresh", action="store_true", help="rerun every evaluation (default: reuse saved figures)")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--out", help="also write the markdown here")
    args = p.parse_args(argv)
    names = list(args.embedders)
    datasets = [Path(args.data) / d for d in args.datasets.split(",") if d]
    estimators = [e for e in args.estimators.split(",") if e]
    lines: list[str] = []

    if not args.skip_latency:
        texts = prompts(datasets[0], args.latency_queries)
        batch = prompts(datasets[0], args.batch)
        anchors = load_outcomes(datasets[0] / "anchors.csv.gz")
        lines += [
            f"Latency on CPU: one `embed([text])` call on held-out {datasets[0].name} prompts (last {TAIL} chars, "
            f"median {statistics.median(len(t) for t in texts):.0f} chars, {len(texts)} calls); floor = that "
            f"embedding plus one `AnchorStore.query` (k={args.k}) over the dataset's anchors; batched = "
            f"{len(batch)} prompts in one call.",
            "",
            "| embedder | dim | embed p50 ms | embed p90 ms | floor p50 ms | batched texts/s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name in names:
            emb = build(name)
            store = AnchorStore(embedder=DiskCache(emb, Path(args.cache)))
            store.add(anchors, progress=False)
            lat = latency(emb, texts, batch, store, args.k)
            dim = emb.embed(texts[:1]).shape[1]
            lines.append(
                f"| {name} | {dim} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['floor']:.2f} | {lat['tps']:.0f} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
        lines.append("")

    if not args.skip_quality:
        results: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        saved_path = Path(args.cache) / "quality.json"
        saved = {} if args.fresh or not saved_path.exists() else json.loads(saved_path.read_text())
        for data in datasets:
            for name in names:
                emb = DiskCache(build(name), Path(args.cache))
                results[(data.name, name)] = quality(emb, data, estimators, args.k, saved)
                if not args.fresh:
                    latest = json.loads(saved_path.read_text()) if saved_path.exists() else {}
                    saved_path.write_text(json.dumps({**latest, **saved}, indent=1))
        ref = names[0]
        lines += [
            f"Routing quality (`evaluate`, k={args.k}); delta = this embedder minus {ref}.",
            "",
            "| dataset | estimator | embedder | AUROC within model | delta | AIQ | delta | ECE |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for data in datasets:
            for est in estimators:
                base = results[(data.name, ref)][est]
                for name in names:
                    r = results[(data.name, name)][est]
                    da = None if r["auroc"] is None or base["auroc"] is None else r["auroc"] - base["auroc"]
                    dq = None if r["aiq"] is None or base["aiq"] is None else r["aiq"] - base["aiq"]
                    lines.append(
                        f"| {data.name} | {est} | {name} | {fmt(r['auroc'])} | {fmt(da, 3) if name != ref else '-'} | "
                        f"{fmt(r['aiq'])} | {fmt(dq, 3) if name != ref else '-'} | {fmt(r['ece'])} |"
                    )
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
