"""The rollout engine is pure: importing it pulls in no I/O library (DESIGN.md section 3)."""

from __future__ import annotations

import subprocess
import sys

IO_MODULES = ("kubernetes", "kopf", "aiohttp", "psycopg", "sqlite3", "requests", "urllib3")


def test_the_rollout_package_imports_no_io_module() -> None:
    code = (
        "import sys, pkgutil, importlib, fdp_operator.rollout as r\n"
        "for m in pkgutil.iter_modules(r.__path__):\n"
        "    importlib.import_module(f'fdp_operator.rollout.{m.name}')\n"
        f"print(','.join(m for m in {IO_MODULES!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"fdp_operator.rollout imports I/O modules: {out}"
