"""`fdp-router`: one command line for the router.

Each concern registers its own subcommands (``register(subparsers)``), so this file only
wires them together: the privacy core adds ``privacy`` and ``ledger``; the service adds
``serve``, ``token``, ``demo-node``, ``config-schema`` and ``standalone-demo``.
A subcommand sets ``func(args) -> int`` as its parser default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fdp_router import service_cli
from fdp_router.privacy import cli as privacy_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fdp-router", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    service_cli.register(sub)
    privacy_cli.register(sub)
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
