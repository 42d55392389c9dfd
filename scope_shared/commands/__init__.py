"""The ``scope-router`` sub-commands, one module per group; ``scope_shared.cli`` holds the parser and ``main``.

Not public API: each ``cmd_*`` takes the parsed ``argparse.Namespace`` and returns the exit status.
"""
