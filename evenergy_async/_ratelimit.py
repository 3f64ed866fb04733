"""Rate limiting ahead of the server, from the server's own headers.

The header contract (API-NOTES "Rate limiting"; spec components.headers):

- the server counts each request at its arrival, for `window` seconds after it (a rolling
  window, 3600 s for ev.energy; not reset on the hour);
- ``X-RateLimit-Limit`` is the budget per window (1000 by default, more by arrangement: never
  assumed), ``X-RateLimit-Remaining`` what is left after the request it answers;
- over the budget: 429 with ``Retry-After`` seconds.

So a token spent at time t returns at t + window, all at once, not bit by bit.  `WindowState`
keeps when each of its own requests could have been counted (a request is counted no later
than its response arrives, so its token is back no later than response time + window) and
learns from every response how much of the budget others spend.  `RateLimiter` wraps it for
asyncio: fair FIFO waiters, woken by one timer, never by polling.

Every method of `WindowState` takes `now`, so tests move a clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import math
from typing import Protocol

import attrs

from ._seconds import check_seconds
from .errors import RateLimited
from .models import RateLimit

__all__ = ["LimiterStats", "RateLimiter", "RateLimiterProtocol", "WindowState"]

log = logging.getLogger("evenergy_async")

Ticket = int


class WindowState:
    """What the server's rolling window holds, as far as this client can tell.

    Own requests are exact: each holds a token from its grant until its response time +
    window.  Others' spending is estimated from the freshest response's ``remaining`` and
    assumed to hold for a whole window; when only that estimate stands in the way, a single
    probe request every `window` / 20 asks the server again instead of waiting it out.  Until
    the first response, and again after a 429, requests go one at a time: the next response
    says how much room there really is.
    """

    def __init__(self, window: float) -> None:
        self.window = check_seconds(window, "rate_limit_window")
        self.probe_every = self.window / 20
        self.limit: int | None = None  # None: not known yet, or the server sends none
        self.blocked_until = 0.0
        self._need_probe = True  # no fresh view of the server's window
        self._next_ticket = 0
        self._in_flight: list[Ticket] = []  # ascending: tickets are handed out in order
        self._done: collections.deque[float] = collections.deque()  # response times, ascending
        # Requests of other consumers of the budget, from the freshest response's headers.
        self._others = 0
        self._others_until = 0.0
        self._observed_at = -math.inf
        self._observed_ticket = -1

    # --- counting ---

    def _expire(self, now: float) -> None:
        cutoff = now - self.window
        done = self._done
        while done and done[0] <= cutoff:
            done.popleft()

    def own(self, now: float) -> int:
        """Own requests the server may hold in its window at `now`."""
        self._expire(now)
        return len(self._in_flight) + len(self._done)

    def others(self, now: float) -> int:
        return self._others if now < self._others_until else 0

    def used(self, now: float) -> int:
        """Requests the server may hold in its window at `now`, own and others'."""
        return self.own(now) + self.others(now)

    def in_flight(self) -> int:
        return len(self._in_flight)

    # --- granting ---

    def try_acquire(self, now: float) -> Ticket | None:
        """A ticket if a request sent at `now` will be accepted, else None."""
        if now < self.blocked_until:
            return None
        if self._need_probe or (self.limit is not None and self.used(now) >= self.limit):
            if self._in_flight or not self._may_probe(now):
                return None
        ticket = self._next_ticket
        self._next_ticket += 1
        self._in_flight.append(ticket)
        return ticket

    def _may_probe(self, now: float) -> bool:
        if self._need_probe:
            return True
        # Full by the estimate of others' spending alone, which may be stale: ask again.
        assert self.limit is not None
        return self.own(now) < self.limit and now >= self._observed_at + self.probe_every

    def next_change(self, now: float) -> float | None:
        """When `try_acquire` may next succeed without a response arriving; None: only then."""
        if now < self.blocked_until:
            return self.blocked_until
        if self._need_probe or self.limit is None:
            return None
        self._expire(now)
        candidates = []
        if self._done:
            candidates.append(self._done[0] + self.window)
        if self.others(now):
            candidates.append(self._others_until)
            if not self._in_flight and self.own(now) < self.limit:
                candidates.append(self._observed_at + self.probe_every)
        return min(candidates) if candidates else None

    def estimate_wait(self, now: float, ahead: int) -> float:
        """Seconds until a request behind `ahead` waiting ones may go, assuming every request in
        flight is answered now.  Used to refuse waits longer than a caller allows."""
        blocked = max(0.0, self.blocked_until - now)
        if self.limit is None:
            return blocked
        excess = self.used(now) + ahead + 1 - self.limit
        if excess <= 0:
            return blocked
        expiries = [t + self.window for t in self._done]
        expiries.extend([now + self.window] * len(self._in_flight))
        expiries.extend([self._others_until] * self.others(now))
        expiries.sort()
        if not expiries:
            return math.inf  # nothing of ours to come back and others' spending unknown
        # Every token handed out comes back a window later, so the queue moves a full turn of
        # `len(expiries)` requests per window.
        turns, index = divmod(excess - 1, len(expiries))
        return max(blocked, expiries[index] + turns * self.window - now)

    # --- learning ---

    def on_response(self, ticket: Ticket, now: float, rate: RateLimit | None, status: int) -> None:
        """A response to `ticket` arrived at `now` carrying the headers in `rate`."""
        if self._finish(ticket):
            self._done.append(now)
        if rate is not None and rate.limit is not None:
            self.limit = rate.limit
        if status == 429:
            wait = rate.retry_after if rate is not None else None
            if wait is None:  # no Retry-After: until one of our own tokens returns
                wait = self._done[0] + self.window - now if self._done else self.probe_every
            self.blocked_until = max(self.blocked_until, now + wait)
            self._need_probe = True
            return
        self._need_probe = False
        remaining = rate.remaining if rate is not None else None
        if self.limit is None or remaining is None or ticket < self._observed_ticket:
            return  # nothing to learn, or an older answer than one already learned from
        self._observed_ticket = ticket
        self._observed_at = now
        # The server counted our requests sent before this one; later ones may not have arrived.
        later = len(self._in_flight) - bisect.bisect_right(self._in_flight, ticket)
        ours = self.own(now) - later
        self._others = max(0, self.limit - remaining - ours)
        self._others_until = now + self.window

    def on_no_response(self, ticket: Ticket, now: float, *, sent: bool) -> None:
        """The request ended without a response: failed, timed out or cancelled.

        If it may have reached the server it counts until `now` + window; if it was never
        sent its token is simply returned.
        """
        if self._finish(ticket) and sent:
            self._done.append(now)

    def _finish(self, ticket: Ticket) -> bool:
        """Take `ticket` out of the in-flight list; False if it was not there."""
        in_flight = self._in_flight
        index = bisect.bisect_left(in_flight, ticket)
        if index < len(in_flight) and in_flight[index] == ticket:
            del in_flight[index]
            return True
        return False


@attrs.define
class LimiterStats:
    granted: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    throttled: int = 0  # 429 responses seen


class RateLimiterProtocol(Protocol):
    """What a client needs of a limiter; `RateLimiter` and `RedisRateLimiter` provide it."""

    window: float
    stats: LimiterStats

    def configure(self, *, window: float) -> None:
        """Set the server's rolling window (the client passes its `rate_limit_window`)."""
        ...

    async def acquire(self, max_wait: float | None = None) -> Ticket:
        """Wait for a token; RateLimited if the wait would exceed `max_wait` seconds."""
        ...

    async def record(self, ticket: Ticket, rate: RateLimit | None, status: int) -> None:
        """The response to `ticket` arrived; learn from its headers."""
        ...

    def release(self, ticket: Ticket, *, sent: bool) -> None:
        """`ticket` ended without a response (must not block: called on cancellation)."""
        ...


class RateLimiter:
    """The in-process limiter: one per client, shared by its tasks and `as_user` views."""

    def __init__(self, window: float = 3600.0) -> None:
        self._state = WindowState(window)
        self.window = self._state.window
        self.stats = LimiterStats()
        self._waiters: collections.deque[asyncio.Future[Ticket]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def configure(self, *, window: float) -> None:
        if window != self.window:
            if self._state.in_flight() or self._waiters:
                raise RuntimeError("cannot change the window of a limiter in use")
            self._state = WindowState(window)
            self.window = self._state.window

    @property
    def state(self) -> WindowState:
        return self._state

    async def acquire(self, max_wait: float | None = None) -> Ticket:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._waiters:
            ticket = self._state.try_acquire(now)
            if ticket is not None:
                self.stats.granted += 1
                return ticket
        estimate = self._state.estimate_wait(now, len(self._waiters))
        if max_wait is not None and estimate > max_wait:
            raise RateLimited(
                429,
                retry_after=estimate,
                title="Rate limit wait too long",
                detail=f"the next token is about {estimate:.1f} s away, "
                f"over max_rate_limit_wait={max_wait:g} s",
            )
        log.debug(
            "rate limit: waiting behind %d, about %.2f s (limit %s, window %g s)",
            len(self._waiters),
            estimate,
            self._state.limit,
            self.window,
        )
        future: asyncio.Future[Ticket] = loop.create_future()
        self._waiters.append(future)
        self.stats.waits += 1
        self._wake()
        try:
            ticket = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted as we were cancelled
                self._state.on_no_response(future.result(), loop.time(), sent=False)
            else:
                future.cancel()
            self._wake()
            raise
        finally:
            self.stats.wait_seconds += loop.time() - now
        self.stats.granted += 1
        return ticket

    async def record(self, ticket: Ticket, rate: RateLimit | None, status: int) -> None:
        self._state.on_response(ticket, asyncio.get_running_loop().time(), rate, status)
        if status == 429:
            self.stats.throttled += 1
            log.debug("rate limit: 429, pausing until +%.2f s", self._state.blocked_until)
        if self._waiters:
            self._wake()

    def release(self, ticket: Ticket, *, sent: bool) -> None:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # closed loop: nothing is waiting any more
            return
        self._state.on_no_response(ticket, now, sent=sent)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        """Grant tokens to waiters in order; arm one timer for the next possible grant."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters = self._waiters
        loop = asyncio.get_running_loop()
        now = loop.time()
        while waiters:
            if waiters[0].done():  # cancelled while waiting
                waiters.popleft()
                continue
            ticket = self._state.try_acquire(now)
            if ticket is None:
                break
            waiters.popleft().set_result(ticket)
        if waiters:
            when = self._state.next_change(now)
            if when is not None:
                # A millisecond late, so the loop's clock resolution never fires it early.
                self._timer = loop.call_at(when + 0.001, self._wake)
