"""What every cluster-facing test tier shares: a kubeconfig with its kubectl, and a bounded poll.

Used by tests/conftest.py (the kwok-backed ``cluster``), tests/e2e/conftest.py and the
realpods tier (tests/e2e/realpods/conftest.py), so a fix to either lands everywhere.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def eventually(check: Callable[[], Any], timeout: float = 60, interval: float = 0.3, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or check}: last={last!r}")


@dataclass
class Cluster:
    """A kubeconfig plus the tools that go with it."""

    kubeconfig: str
    bin_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    name: str = ""

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc
