"""Waiting in tests for something to happen, without measuring how long it takes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], *, bound: float = 30.0) -> None:
    """Poll `condition` on the running loop until it holds.

    `bound` only ends a hang (a condition that never comes true fails the test); it is never a
    measurement, so it is far above what a slow machine needs.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + bound
    while not condition():
        assert loop.time() < give_up, "the condition never came true"
        await asyncio.sleep(0.002)
