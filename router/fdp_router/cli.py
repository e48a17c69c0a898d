"""`fdp-router`: one command line for the router.

Each concern registers its own subcommands (``register(subparsers)``), so this file only
wires them together: the privacy core adds ``privacy`` and ``ledger``; the service adds
``serve``, ``token``, ``demo-node``, ``config-schema`` and ``standalone-demo``.
A subcommand sets ``func(args) -> int`` as its parser default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands, in help order. Missing ones are skipped so that
# partial installs (and parallel development) still give a working CLI.
_COMMAND_MODULES = ("fdp_router.service_cli", "fdp_router.privacy.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fdp-router", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
