"""The ``scope-router`` command: ingest, profile, route, evaluate, demo, store check/repair.

Errors print one line to stderr and exit with status 2; secrets are read from environment variables
named on the command line, never from the arguments themselves.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from scope_shared.commands.demo import cmd_demo
from scope_shared.commands.evaluate import cmd_evaluate
from scope_shared.commands.profile import cmd_profile
from scope_shared.commands.route import cmd_route
from scope_shared.commands.store import cmd_ingest, cmd_store
from scope_shared.embeddings import EMBEDDERS
from scope_shared.errors import ScopeError

__all__ = ["main"]

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path("../shared/data/routerbench-zs")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scope-router", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    def store_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", default=".scope/anchors", help="embedded store directory")
        sp.add_argument("--chroma-host", help="use a Chroma server instead of --store")
        sp.add_argument("--chroma-port", type=int, default=8000)
        sp.add_argument("--chroma-ssl", action="store_true")
        sp.add_argument("--chroma-token-env", help="name of the env var holding the Chroma auth token")
        sp.add_argument("--chroma-ca", help="CA bundle (PEM) that signed the Chroma server's TLS certificate")
        sp.add_argument(
            "--chroma-timeout", type=float, default=10.0, help="seconds a Chroma server has to answer (default 10)"
        )
        sp.add_argument("--collection", default="scope-anchors")
        sp.add_argument(
            "--ef-search", type=int, help="HNSW candidates per search (Chroma's default 100); stored with the index"
        )

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--embedder", default="minilm", choices=EMBEDDERS)
        sp.add_argument("--k", type=int, default=10, help="anchors per estimate")

    def estimator_args(sp: argparse.ArgumentParser) -> None:
        from scope_shared.routing import DEFAULT_ESTIMATOR, ESTIMATORS

        sp.add_argument("--estimator", default=DEFAULT_ESTIMATOR, choices=list(ESTIMATORS))
        sp.add_argument("--vllm-url", help="OpenAI-compatible vLLM base URL serving the SCOPE model")
        sp.add_argument("--vllm-model", help="served model name (default: the server's only model)")
        sp.add_argument("--vllm-key-env", help="name of the env var holding the vLLM API key")

    sp = sub.add_parser("ingest", help="load outcome files (CSV/JSONL, .gz) into an anchor store")
    store_args(sp)
    model_args(sp)
    sp.add_argument(
        "--estimator",
        default="learned",
        choices=["learned", "anchors"],
        help="learned: fit it after loading and save the fit with the store (anchors: nothing to fit)",
    )
    sp.add_argument("files", nargs="*", help="outcome files (CSV/JSONL, .gz)")
    sp.add_argument(
        "--suite",
        help="seed the store with an anchor suite: 'default' (packaged), a suite folder, or a CSV of your questions",
    )
    sp.add_argument("-q", "--quiet", action="store_true")
    sp.set_defaults(fn=cmd_ingest)

    sp = sub.add_parser(
        "profile",
        help="run a new model over a suite's anchors through an OpenAI-compatible endpoint; grade and record it",
        description="Exit status: 0 when every chosen anchor has an outcome of the model (or --dry-run), 1 when "
        "the run stopped short (the cost cap, refused anchors), 2 on an error, 130 when interrupted.",
    )
    store_args(sp)
    sp.add_argument("--embedder", default="minilm", choices=EMBEDDERS, help="the embedder the store was built with")
    sp.add_argument("--model", required=True, help="the model's name: outcomes are recorded under it")
    sp.add_argument("--base-url", help="the OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    sp.add_argument("--served-model", help="the model name the endpoint serves, when it differs from --model")
    sp.add_argument("--api-key-env", help="name of the env var holding the endpoint's API key")
    sp.add_argument("--prices", required=True, help="prices CSV: model,input_per_mtok,output_per_mtok")
    sp.add_argument("--suite", default="default", help="'default', a suite folder, or a CSV of your questions")
    sp.add_argument("--n", type=int, default=100, help="anchors to profile on (default 100)")
    sp.add_argument("--select", default="random", choices=["random", "informative", "all"])
    sp.add_argument("--seed", type=int, default=0, help="seed of the anchor choice")
    sp.add_argument("--max-cost", type=float, help="USD cap on the run's spend; stops cleanly at it")
    sp.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    sp.add_argument("--max-tokens", type=int, help="cap on each answer's tokens (default: the server's)")
    sp.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one answer")
    sp.add_argument("--retries", type=int, default=6, help="further attempts after a 429, 5xx or timeout")
    sp.add_argument(
        "--template",
        help="prompt template file: text with {prompt} (or {query}, {instruction}), or JSON {\"system\", \"user\"}",
    )
    sp.add_argument("--dry-run", action="store_true", help="print the expected cost; call nothing")
    sp.add_argument("--json", help="write the report (one entry per anchor) here")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(fn=cmd_profile)

    sp = sub.add_parser("route", help="decide which model should answer a query, and show why")
    store_args(sp)
    model_args(sp)
    estimator_args(sp)
    sp.add_argument("query")
    sp.add_argument("--prices", required=True, help="prices CSV: model,input_per_mtok,output_per_mtok")
    sp.add_argument("--value", type=float, default=None, help="USD a correct answer is worth (default: accuracy)")
    sp.add_argument("--max-cost", type=float, default=None, help="max expected USD per call")
    sp.add_argument("--json", action="store_true", help="print the decision as JSON")
    sp.set_defaults(fn=cmd_route)

    sp = sub.add_parser("evaluate", help="replay-evaluate on held-out recorded outcomes")
    model_args(sp)
    estimator_args(sp)
    sp.add_argument("--anchors", required=True)
    sp.add_argument("--test", required=True)
    sp.add_argument("--prices", required=True)
    sp.add_argument("--json", help="write the full report here")
    sp.add_argument("--plot", help="write the accuracy/cost plot here (PNG)")
    sp.add_argument(
        "--holdout-models", default="", help="comma-separated models treated as new: keep few of their anchors"
    )
    sp.add_argument("--holdout-anchors", type=int, default=50, help="anchors each held-out model keeps")
    sp.add_argument("--holdout-seed", type=int, default=0, help="seed of the anchors held-out models keep")
    sp.add_argument(
        "--cascade", action="store_true", help="also replay cascades from the recorded responses (docs/cascade.md)"
    )
    sp.add_argument("--responses", help="recorded responses for --cascade (default: responses.csv.gz beside --test)")
    sp.add_argument("--references", help="gold references for --cascade (default: references.csv.gz beside --test)")
    sp.add_argument("--cascade-max-calls", type=int, default=4, help="calls per query a cascade makes at most")
    sp.add_argument("--cascade-candidates", type=int, default=8, help="models a cascade considers per query")
    sp.add_argument("--cascade-factors", type=int, default=1, choices=[1, 2], help="latent difficulty factors")
    sp.add_argument(
        "--holdout-select",
        default="random",
        choices=["random", "informative"],
        help="how held-out models' anchors are chosen: random, or informative (docs/anchor_selection.md)",
    )
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("store", help="compare the running totals with a full scan (check), or recount them (repair)")
    actions = sp.add_subparsers(dest="action", required=True)
    for action, text in (
        ("check", "compare each model's outcomes in a full scan with the running totals; exit 1 if they differ"),
        ("repair", "recount the running totals from a full scan (run it while nothing writes to the store)"),
    ):
        ap = actions.add_parser(action, help=text)
        store_args(ap)
        ap.add_argument("--embedder", default="minilm", choices=EMBEDDERS, help="the embedder the store was built with")
        ap.set_defaults(fn=cmd_store)

    sp = sub.add_parser(
        "demo",
        help="bring your own model, replayed: a store from the suite, a recorded model profiled as new through a "
        "replay server, the dataset's held-out queries routed with it",
    )
    model_args(sp)
    sp.add_argument("--data", default=str(DEFAULT_DATA), help="a dataset folder of ../shared/data")
    sp.add_argument("--new-model", help="the recorded model played as new (default: one per dataset)")
    sp.add_argument("--n", type=int, default=50, help="anchors to profile it on (default 50)")
    sp.add_argument("--select", default="informative", choices=["random", "informative", "all"])
    sp.add_argument("--seed", type=int, default=0, help="seed of the anchor choice")
    sp.add_argument("--suite", default="default", help="'default' (packaged) or a suite folder")
    sp.add_argument("--out", default="out", help="folder for demo_report.json and demo_curve.png")
    sp.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scope-router``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args))
    except ScopeError as exc:
        sys.stderr.write(f"scope-router: error: {exc}\n")
        return 2
    except OSError as exc:  # files: missing, a directory, under a file, not writable
        sys.stderr.write(f"scope-router: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("scope-router: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
