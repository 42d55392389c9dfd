"""Build the packaged default anchor suite from ../shared/data, from ``anchors.csv.gz`` only.

    python scripts/build_suite.py --data ../shared/data --out scope_shared/suites/data/default
    python scripts/build_suite.py study --data ../shared/data      # the sizing study behind PER_TASK

The test splits (``test.csv.gz``) are never read: they are for evaluation, and a suite question that is also a
held-out test query would leak into every evaluation of a store seeded from the suite. The build is
deterministic: the same data, ``--seed`` and ``--per-task`` give byte-identical files. MiniLM vectors are
computed on CPU in a fixed order of fixed batches; another CPU or onnxruntime version, or vectors reused from
``--vectors-cache`` (keyed by a hash of the embedded text, computed in other batches), can differ in the last
bit of a few float16 values (cosine above 0.9999999). The committed files are built without a cache.

What goes in, and why
---------------------
Questions are kept only where a new model can be graded on them from the query text alone:

- routerbench-zs ``arc-challenge`` and ``winogrande`` (``choice``; the prompts list the options and ask for a
  letter); ``mbpp`` has no gold tests here;
- zeroeval ``gsm`` (``number``) and ``crux`` (``exact``); their query text is the bare question, so each task
  carries an instruction asking for ZeroEval's JSON ``{"reasoning", "answer"}`` format that its graders read;
- llmrouter ``gsm8k``, ``math`` and ``agentverse-mgsm`` (``number``). Its ``choice`` tasks (mmlu, gpqa, arc,
  commonsense_qa, openbook_qa, logic grids) are left out: their option texts are not in the query text, so a
  new model cannot answer them with a letter.

``PER_TASK = 400`` questions per task, drawn uniformly at random (seeded) from each task's anchors, all of a
task when it has fewer: 2,414 questions. Uniform draws keep each task's difficulty distribution, so reference
models' neighbour estimates are unbiased; a biased draw (say, only questions the reference models disagree on)
would skew every estimate read from the store. The size weighs three things:

1. Neighbour retrieval for reference models. ``study`` holds out 20% of each task's anchors as probe
   questions and estimates each reference model's P(correct) on them from its k=20 nearest suite questions
   (MiniLM, cosine, shrunk towards the model's task mean), for 50..all questions per task. On these benchmarks
   neighbours add little beyond each model's per-task accuracy at any size (AUC within a model 0.49-0.65 with
   no trend in size; Brier skill against the task mean -0.10..+0.06); what size buys is that per-task
   accuracy: its standard error is about 0.025 at 400 questions against 0.07 at 50. The figures are in
   scope_shared/suites/README.md.
2. A profiling pool. A new model is profiled on 25-100 informative questions (ones the reference models
   disagree on, spread over tasks); 400 per task leaves hundreds of such questions per task to choose from.
3. Size. Vectors are 768 bytes a question (384 float16); 2,414 questions make about 1.9 MB of vectors and
   about 1 MB of compressed text and outcomes. The SCOPE authors ship 250 anchors; this is ten times that,
   and every task keeps enough questions for both jobs.

Licences and attribution of each source (read from its README.md in the data folder) go into the suite's
metadata and into a NOTICE file beside the data.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import re
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scope_shared.embeddings import MiniLMEmbedder  # noqa: E402
from scope_shared.suites.suite import AnchorSuite, ReferenceOutcome, SuiteQuestion  # noqa: E402

PER_TASK = 400
SEED = 20260201
EMBED_TAIL_CHARS = 1000

JSON_FORMAT = (
    "Think it through step by step, then give your reasoning and your final answer in this JSON format:\n"
    '```json\n{{"reasoning": "...", "answer": "..."}}\n```\n{what}'
)
BOXED = "Think it through step by step, and put your final answer in \\boxed{}."


@dataclass(frozen=True)
class TaskSpec:
    source: str
    task: str  # the task as the references name it
    grader: str
    instruction: str
    origin: str  # the benchmark the questions come from


TASKS = (
    TaskSpec(
        "routerbench-zs", "arc-challenge", "choice", "", "ARC-Challenge (AI2 Reasoning Challenge, Clark et al. 2018)"
    ),
    TaskSpec("routerbench-zs", "winogrande", "choice", "", "WinoGrande (Sakaguchi et al. 2019)"),
    TaskSpec(
        "zeroeval",
        "gsm",
        "number",
        JSON_FORMAT.format(what='Put only the final number in "answer".'),
        "GSM8K test set (Cobbe et al. 2021)",
    ),
    TaskSpec(
        "zeroeval",
        "crux",
        "exact",
        JSON_FORMAT.format(
            what='Put only the output that completes the assertion in "answer", as a Python literal '
            "(for example [1, 2] or 'abc')."
        ),
        "CRUXEval-O (Gu et al. 2024)",
    ),
    TaskSpec("llmrouter", "gsm8k", "number", BOXED, "GSM8K (Cobbe et al. 2021), as in LLMRouter's query file"),
    TaskSpec("llmrouter", "math", "number", BOXED, "MATH (Hendrycks et al. 2021), numeric answers only"),
    TaskSpec("llmrouter", "agentverse-mgsm", "number", "", "AgentVerse's MGSM problems, as in LLMRouter's query file"),
)


def _rows(path: Path) -> Iterator[dict[str, str]]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        yield from csv.DictReader(fh)


def _int(value: str) -> int | None:
    return int(float(value)) if value.strip() else None


@dataclass
class Candidate:
    spec: TaskSpec
    query_id: str
    query: str
    reference: str
    input_tokens: int | None
    outcomes: dict[str, ReferenceOutcome]


def read_candidates(data: Path) -> dict[tuple[str, str], list[Candidate]]:
    """Every anchor question of the kept tasks that has a reference, by (source, task); sorted by id."""
    out: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for source in sorted({s.source for s in TASKS}):
        specs = {s.task: s for s in TASKS if s.source == source}
        refs = {r["query_id"]: r for r in _rows(data / source / "references.csv.gz")}
        by_id: dict[str, Candidate] = {}
        for row in _rows(data / source / "anchors.csv.gz"):
            ref = refs.get(row["query_id"])
            if ref is None or ref["task"] not in specs:
                continue
            spec = specs[ref["task"]]
            if ref["grader"] != spec.grader:
                msg = f"{source}/{row['query_id']}: grader {ref['grader']!r}, expected {spec.grader!r}"
                raise SystemExit(msg)
            cand = by_id.get(row["query_id"])
            if cand is None:
                cand = Candidate(spec, row["query_id"], row["query"], ref["reference"], _int(row["input_tokens"]), {})
                by_id[row["query_id"]] = cand
            elif cand.query != row["query"] or cand.input_tokens != _int(row["input_tokens"]):
                msg = f"{source}/{row['query_id']}: rows disagree on the query text or its input tokens"
                raise SystemExit(msg)
            cand.outcomes[row["model"]] = ReferenceOutcome(float(row["correct"]), _int(row["output_tokens"]))
        for cand in sorted(by_id.values(), key=lambda c: c.query_id):
            out[(source, cand.spec.task)].append(cand)
    return dict(out)


def _task_rng(seed: int, spec: TaskSpec) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{spec.source}/{spec.task}".encode())])


def select(candidates: dict[tuple[str, str], list[Candidate]], *, per_task: int, seed: int) -> list[Candidate]:
    """Up to ``per_task`` questions of each task, uniformly at random, in (source, task, id) order."""
    chosen: list[Candidate] = []
    for spec in TASKS:
        pool = candidates.get((spec.source, spec.task), [])
        if not pool:
            msg = f"no anchors with references for {spec.source}/{spec.task}"
            raise SystemExit(msg)
        picks = _task_rng(seed, spec).permutation(len(pool))[:per_task]
        chosen.extend(sorted((pool[i] for i in picks), key=lambda c: c.query_id))
    return chosen


# -- licences -----------------------------------------------------------------------------------------------

_ORIGIN = re.compile(r"\(([\w.-]+/[\w.-]+), ([\w.-]+)\)")


def read_sources(data: Path) -> dict[str, dict[str, str]]:
    """Each source's repository, licence and attribution paragraph, from its README.md."""
    sources = {}
    for source in sorted({s.source for s in TASKS}):
        text = (data / source / "README.md").read_text(encoding="utf-8")
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        paragraphs = [p.strip() for p in body.split("\n\n") if p.strip()]
        found = _ORIGIN.search(paragraphs[0])
        if found is None:
            msg = f"{data / source / 'README.md'}: no '(owner/repo, licence)' in its first paragraph"
            raise SystemExit(msg)
        sources[source] = {
            "repository": f"https://github.com/{found.group(1)}",
            "licence": found.group(2),
            "attribution": " ".join(paragraphs[0].split()),
        }
    return sources


def notice(sources: dict[str, dict[str, str]], counts: dict[tuple[str, str], int]) -> str:
    lines = [
        "scope-router default anchor suite: third-party data",
        "",
        "The questions, gold answers and recorded model outcomes in this folder come from the public datasets",
        "below, selected and reformatted by scripts/build_suite.py. They remain under their sources' licences",
        "(not the licence of scope-router's code); the questions originate from the benchmarks named, whose own",
        "terms also apply: see each benchmark's repository (ARC is published under CC BY-SA 4.0, GSM8K under MIT).",
        "",
    ]
    for source, info in sources.items():
        lines += [f"== {source}: {info['licence']} ({info['repository']})", "", info["attribution"], ""]
        for spec in TASKS:
            if spec.source == source:
                lines.append(f"  {spec.task}: {counts[(source, spec.task)]} questions from {spec.origin}")
        lines.append("")
    return "\n".join(lines)


# -- vectors ------------------------------------------------------------------------------------------------


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def embed(texts: Sequence[str], cache: Path | None) -> np.ndarray:
    """MiniLM vectors of texts; with ``cache``, read from and added to an npz keyed by text hash."""
    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            known = dict(zip((str(k) for k in z["keys"]), z["vectors"], strict=True))
    todo = sorted({t for t in texts if _key(t) not in known}, key=lambda t: (len(t), t))  # fixed batches
    if todo:
        embedder = MiniLMEmbedder(batch_size=32)
        started = time.perf_counter()
        for start in range(0, len(todo), 256):
            batch = todo[start : start + 256]
            for text, vec in zip(batch, embedder.embed(batch), strict=True):
                known[_key(text)] = vec
            done = start + len(batch)
            print(f"  embedded {done}/{len(todo)} texts ({done / (time.perf_counter() - started):.1f}/s)")
        if cache is not None:
            keys = sorted(known)
            np.savez(cache, keys=np.array(keys), vectors=np.stack([known[k] for k in keys]).astype(np.float32))
    return np.stack([known[_key(t)] for t in texts]).astype(np.float32)


# -- build --------------------------------------------------------------------------------------------------


def build(data: Path, out: Path, *, per_task: int, seed: int, cache: Path | None) -> None:
    started = time.perf_counter()
    candidates = read_candidates(data)
    chosen = select(candidates, per_task=per_task, seed=seed)
    counts = {(s.source, s.task): sum(1 for c in chosen if c.spec is s) for s in TASKS}
    sources = read_sources(data)
    questions = [
        SuiteQuestion(
            query_id=f"{c.spec.source}/{c.query_id}",
            query=c.query,
            task=c.spec.task,
            reference=c.reference,
            grader=c.spec.grader,
            source=c.spec.source,
            instruction=c.spec.instruction,
            input_tokens=c.input_tokens,
            outcomes=dict(sorted(c.outcomes.items())),
        )
        for c in chosen
    ]
    metadata: dict[str, Any] = {
        "description": "Benchmark questions with gold answers and the recorded outcomes of public reference models",
        "built_by": "scripts/build_suite.py",
        "built_from": "anchors.csv.gz",
        "selection": f"up to {per_task} questions per task, uniformly at random (seed {seed})",
        "seed": seed,
        "per_task": per_task,
        "sources": sources,
        "tasks": {
            s.task: {"source": s.source, "origin": s.origin, "questions": counts[(s.source, s.task)]} for s in TASKS
        },
    }
    suite = AnchorSuite(questions=questions, name="default", metadata=metadata)
    print(f"selected {len(suite)} questions: {counts}")
    vectors = embed([q.query[-EMBED_TAIL_CHARS:] for q in suite], cache)
    suite = AnchorSuite(
        questions=questions,
        name="default",
        metadata=metadata,
        vectors=vectors,
        embedder=MiniLMEmbedder().name,
        embed_tail_chars=EMBED_TAIL_CHARS,
    )
    suite.save(out, notice=notice(sources, counts))
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s: {sizes}, {sum(sizes.values()) / 1e6:.2f} MB")


# -- the sizing study -----------------------------------------------------------------------------------------


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is absent."""
    pos = labels >= 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def study(data: Path, *, cache: Path | None, k: int = 20, prior: float = 10.0, repeats: int = 3) -> None:
    """How well reference models' P(correct) is read from suite neighbours, against questions per task.

    Anchors only: 20% of each task's anchors (by a hash of the id) are probe questions, the rest the pool the
    suite is drawn from. For each size, each probe and each reference model, the estimate is the mean of the
    model's outcomes on its ``k`` nearest pool questions (MiniLM cosine over the last 1000 characters) that
    it has an outcome on, shrunk towards its mean on the drawn questions of the probe's task with ``prior``
    pseudo-outcomes. Printed per task: Brier score and its skill against that task mean, and the AUC within
    each model (does the estimate rank the probes a model gets right above those it gets wrong), averaged.
    """
    candidates = read_candidates(data)
    probes: dict[tuple[str, str], list[Candidate]] = {}
    pools: dict[tuple[str, str], list[Candidate]] = {}
    for key, cands in candidates.items():
        held = [zlib.crc32(c.query_id.encode()) % 5 == 0 for c in cands]
        probes[key] = [c for c, h in zip(cands, held, strict=True) if h]
        pools[key] = [c for c, h in zip(cands, held, strict=True) if not h]
    everything = [c for cs in candidates.values() for c in cs]
    vectors = embed([c.query[-EMBED_TAIL_CHARS:] for c in everything], cache)
    row_of = {id(c): i for i, c in enumerate(everything)}
    sizes = (50, 100, 200, 400, 10**9)
    print(
        f"k={k} prior={prior} repeats={repeats}; probes/pool per task: "
        + ", ".join(f"{t}: {len(probes[(s, t)])}/{len(pools[(s, t)])}" for s, t in probes)
    )
    print(f"{'source':<15} {'task':<16} {'n':>5} {'brier':>7} {'task-mean':>9} {'skill':>7} {'AUC within':>10}")
    for spec in TASKS:
        key = (spec.source, spec.task)
        for size in sorted({min(size, len(pools[key])) for size in sizes}):
            scores = []
            for rep in range(repeats):
                rng = np.random.default_rng([rep, zlib.crc32(str(size).encode())])
                drawn = {kk: [pool[i] for i in rng.permutation(len(pool))[:size]] for kk, pool in pools.items()}
                flat = [c for cs in drawn.values() for c in cs]
                matrix = vectors[[row_of[id(c)] for c in flat]]
                task_mean: dict[str, float] = {}
                per_model: dict[str, list[float]] = defaultdict(list)
                for c in drawn[key]:
                    for model, rec in c.outcomes.items():
                        per_model[model].append(rec.correct)
                task_mean = {m: float(np.mean(v)) for m, v in per_model.items()}
                est, base, truth, models = [], [], [], []
                probe_vecs = vectors[[row_of[id(c)] for c in probes[key]]]
                order = np.argsort(-(probe_vecs @ matrix.T), axis=1)
                for p, c in enumerate(probes[key]):
                    for model, rec in c.outcomes.items():
                        if model not in task_mean:
                            continue
                        near = list(
                            islice((flat[j].outcomes[model].correct for j in order[p] if model in flat[j].outcomes), k)
                        )
                        est.append((sum(near) + prior * task_mean[model]) / (len(near) + prior))
                        base.append(task_mean[model])
                        truth.append(rec.correct)
                        models.append(model)
                e, b, y, m = np.array(est), np.array(base), np.array(truth), np.array(models)
                within = [_auc(e[m == name], y[m == name]) for name in sorted(set(models))]
                scores.append((np.mean((e - y) ** 2), np.mean((b - y) ** 2), np.nanmean(within)))
            brier, brier_base, within_auc = np.mean(scores, axis=0)
            print(
                f"{spec.source:<15} {spec.task:<16} {size:>5} {brier:>7.4f} {brier_base:>9.4f} "
                f"{1 - brier / brier_base:>+7.3f} {within_auc:>10.3f}"
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=("build", "study"), default="build")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "scope_shared" / "suites" / "data" / "default")
    parser.add_argument("--per-task", type=int, default=PER_TASK)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--vectors-cache", type=Path, default=None, help="npz of MiniLM vectors keyed by text hash")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"no data folder at {args.data}")
    if args.command == "study":
        study(args.data, cache=args.vectors_cache)
    else:
        build(args.data, args.out, per_task=args.per_task, seed=args.seed, cache=args.vectors_cache)


if __name__ == "__main__":
    main()
