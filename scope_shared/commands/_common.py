"""What the sub-commands share: output, the embedder and store from the options, the routing options."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from scope_shared.errors import ConfigError

__all__ = ["echo", "fmt_value", "make_embedder", "open_store", "routing_kwargs", "secret_from_env", "suite_embedder"]

logger = logging.getLogger(__name__)


def echo(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def make_embedder(name: str) -> Any:
    from scope_shared.embeddings import embedder_named

    return embedder_named(name)


def open_store(args: argparse.Namespace, *, must_exist: bool = False, embedder: Any = None) -> Any:
    from scope_shared.store import AnchorStore

    if not args.chroma_host:
        path = Path(args.store)
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            msg = f"--store {path}: {blocker} is a file; the store is a directory"
            raise ConfigError(msg)
        if must_exist and not path.exists():
            msg = (
                f"no anchor store at {path}; build one with: scope-router ingest --store {path} --suite default "
                "(or OUTCOMES_FILE)"
            )
            raise ConfigError(msg)
    token = secret_from_env(args.chroma_token_env, "--chroma-token-env")
    return AnchorStore(
        path=args.store if not args.chroma_host else None,
        host=args.chroma_host,
        port=args.chroma_port,
        ssl=args.chroma_ssl,
        token=token,
        verify=args.chroma_ca or True,
        timeout=args.chroma_timeout,
        collection=args.collection,
        embedder=embedder if embedder is not None else make_embedder(args.embedder),
        hnsw={"ef_search": args.ef_search} if args.ef_search is not None else None,
    )


def secret_from_env(var: str | None, flag: str) -> str | None:
    """The value of environment variable ``var`` (named by option ``flag``); None when no variable is named."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        msg = f"environment variable {var} ({flag}) is not set"
        raise ConfigError(msg)
    return value


def suite_embedder(suite: Any, name: str) -> Any:
    """The suite's precomputed vectors over embedder ``name`` when it holds that embedder's; else the embedder."""
    return suite.embedder_or(make_embedder(name))


def routing_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's ``estimator`` and ``escalation`` for ``--estimator``, as keyword arguments."""
    from scope_shared.routing import build_routing

    options: dict[str, Any] = {}
    if args.vllm_url:
        options["base_url"] = args.vllm_url
        options["model"] = args.vllm_model  # None: the server's only model
        if args.vllm_key_env:
            options["api_key"] = os.environ.get(args.vllm_key_env)
    return build_routing(args.estimator, k=args.k, **options)._asdict()


def fmt_value(v: float | None) -> str:
    return "accuracy" if v is None or math.isinf(v) else f"${v:g}"
