"""``scope-router profile``: run a new model over a suite's anchors, grade and record it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scope_shared.commands._common import echo, open_store, secret_from_env, suite_embedder
from scope_shared.errors import ConfigError

__all__ = ["cmd_profile"]


def _template(path: str | None) -> tuple[str | None, str | None]:
    """``--template FILE``: (system message, user template). A ``.json`` file holds ``{"system": ..., "user": ...}``;
    any other file is the user template."""
    if not path:
        return None, None
    from scope_shared.profile import check_template

    text = Path(path).read_text(encoding="utf-8")
    if not path.endswith(".json"):
        return None, check_template(text, where=path)
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"--template {path}: not valid JSON ({exc.msg} at line {exc.lineno})"
        raise ConfigError(msg) from None
    if not isinstance(spec, dict) or not set(spec) <= {"system", "user"} or not spec:
        msg = f'--template {path}: expected {{"system": "...", "user": "...{{prompt}}..."}} (either key optional)'
        raise ConfigError(msg)
    system, user = spec.get("system"), spec.get("user")
    if not all(v is None or isinstance(v, str) for v in (system, user)):
        msg = f"--template {path}: system and user must be text"
        raise ConfigError(msg)
    return system or None, None if user is None else check_template(user, where=path)


def cmd_profile(args: argparse.Namespace) -> int:
    from scope_shared.data import load_prices
    from scope_shared.profile import OpenAIChatCall, profile
    from scope_shared.suites import load_suite

    cards = {c.name: c for c in load_prices(args.prices)}
    if args.model not in cards:
        msg = (
            f"model {args.model!r} is not in {args.prices}; add a row: {args.model},INPUT_USD_PER_MTOK,"
            f"OUTPUT_USD_PER_MTOK (it has {len(cards)} models)"
        )
        raise ConfigError(msg)
    if not args.dry_run and not args.base_url:
        msg = "--base-url is required (the OpenAI-compatible endpoint serving the model), except with --dry-run"
        raise ConfigError(msg)
    system, template = _template(args.template)
    if system and template is None:  # a system message changes the setup: the report says templated
        template = "{prompt}"
    api_key = secret_from_env(args.api_key_env, "--api-key-env")
    suite = load_suite(args.suite)
    store = open_store(args, must_exist=True, embedder=suite_embedder(suite, args.embedder))
    call = OpenAIChatCall(
        base_url=args.base_url or "http://unused.invalid/v1",
        model=args.served_model or args.model,
        api_key=api_key,
        system=system,
        max_tokens=args.max_tokens,
        timeout=args.timeout,
    )
    if not args.dry_run:
        call.check()
    report = profile(
        store,
        model=cards[args.model],
        call=call,
        suite=suite,
        n=args.n,
        select=args.select,
        max_cost=args.max_cost,
        concurrency=args.concurrency,
        template=template,
        seed=args.seed,
        progress=False if args.quiet else None,
        dry_run=args.dry_run,
        retries=args.retries,
    )
    for line in report.lines():
        echo(line)
    if args.json:
        echo(f"report: {report.save(args.json)}")
    return 0 if args.dry_run or report.complete else 1
