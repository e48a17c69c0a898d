"""`make test` runs this suite twice: on asyncio's loop and, with ``--event-loop uvloop``, on
the loop `fdp-router serve` uses by default. This checks the second run is what it says."""

from __future__ import annotations

import asyncio

import pytest


async def test_the_suite_runs_on_the_event_loop_it_was_asked_for(request: pytest.FixtureRequest) -> None:
    asked = request.config.getoption("--event-loop")
    running = type(asyncio.get_running_loop()).__module__.split(".")[0]
    assert running == ("uvloop" if asked == "uvloop" else "asyncio"), (asked, running)
