"""An asyncio loop on virtual time, for limiter tests (not a test module).

    run_virtual(main())        # like asyncio.run, but loop.time() is a clock the loop moves

Whenever the loop has nothing ready to run and would sleep until its next timer, the clock
jumps to that timer instead (like trio's autojump clock and aiolimiter's MockLoopTime), so
`asyncio.sleep(3600)` returns at once with ``loop.time()`` an hour later, and the order of
events is exactly what the timers say, whatever the machine's speed.  Only for code that waits
on timers and futures: real I/O would see the clock jump while a socket is still silent.
"""

from __future__ import annotations

import asyncio
import inspect
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualTimeLoop", "run_virtual", "virtual"]

T = TypeVar("T")


class _JumpingSelector:
    """A selector that, instead of blocking for `timeout`, moves the clock by it."""

    def __init__(self) -> None:
        self._inner = selectors.DefaultSelector()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        events = self._inner.select(0)
        if not events and timeout is not None and timeout > 0:
            self.now += timeout
        elif not events and timeout is None:
            events = self._inner.select(None)  # nothing scheduled: only another thread can help
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)  # type: ignore[arg-type]

    def time(self) -> float:
        return self._jumping.now


def run_virtual(main: Coroutine[Any, Any, T], timeout: float = 1e7) -> T:
    """Run `main` to completion on a fresh `VirtualTimeLoop` starting at time 0; TimeoutError
    if it is still running at `timeout` virtual seconds (a wait that never ends)."""
    loop = VirtualTimeLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(asyncio.wait_for(main, timeout))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def virtual(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a `VirtualTimeLoop` instead of pytest-asyncio's loop: for tests of
    code that waits on timers only (an in-memory transport, no sockets)."""

    def test(*args: Any, **kwargs: Any) -> None:
        run_virtual(fn(*args, **kwargs))

    test.__name__, test.__doc__ = fn.__name__, fn.__doc__
    test.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return test
