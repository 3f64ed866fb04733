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

Bounds, whatever the server sends:

- a waiter's `max_wait` holds at every moment, not only when it joins the queue: whenever the
  state changes (a 429, a response that shows others spending, a release) each waiter's
  estimated wait is checked against what is left of its own bound, and one timer ends a wait
  at its bound, so a wait ends in `RateLimited` (with `retry_after` the estimate) promptly;
- a 429 pauses everyone for Retry-After, but at least `PAUSE_MIN` seconds, doubled by each
  consecutive 429 up to `PAUSE_MAX_BACKOFF` (a response other than 429 resets it; 429s of
  requests sent before the previous 429 came back count once), and at most one window (by
  then the server's window holds nothing it held; a longer pause would be a locked client);
- a limit below 1 or above `MAX_LIMIT` is ignored (0 would stop every request with no timer
  to end it; a huge one with "0 remaining" would mean the same); a NaN Retry-After is taken
  as absent;
- the outage rule: until the first response and after a 429 one request at a time goes (the
  probe).  If the probe ends without a response after it may have been sent (a timeout, a
  cut connection), the server is not answering: every caller waiting behind it fails at once
  with `TransportError` (not sent), instead of each becoming the next probe and waiting out
  its own timeout in turn.  An outage so costs every caller about one timeout, and the server
  still sees only one request at a time.  A probe given back unsent, or abandoned by its
  caller (its task cancelled: Python 3.11+), says nothing about the server and passes to the
  next caller.

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
from .errors import RateLimited, TransportError
from .models import RateLimit

__all__ = ["LimiterStats", "RateLimiter", "RateLimiterProtocol", "WindowState"]

log = logging.getLogger("evenergy_async")

Ticket = int

# A 429 pauses every request for at least PAUSE_MIN seconds, doubled by each consecutive 429
# up to PAUSE_MAX_BACKOFF, whatever Retry-After says (0, negative, a date in the past).
PAUSE_MIN = 1.0
PAUSE_MAX_BACKOFF = 60.0
# A larger X-RateLimit-Limit is ignored, like one below 1: no real budget is that large (and
# the arithmetic stays exact in the Redis scripts' doubles).
MAX_LIMIT = 1_000_000_000


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
        self.throttled = 0  # consecutive 429s (the backoff's exponent); 0 after a success
        self._need_probe = True  # no fresh view of the server's window
        self._probe: Ticket | None = None  # the request let through alone, while in flight
        self._fresh_from = 0  # tickets below this were sent before the latest 429 was seen
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
        probe = self._need_probe or (self.limit is not None and self.used(now) >= self.limit)
        if probe and (self._in_flight or not self._may_probe(now)):
            return None
        ticket = self._next_ticket
        self._next_ticket += 1
        self._in_flight.append(ticket)
        if probe:
            self._probe = ticket
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
        flight is answered now.  Used to refuse waits longer than a caller allows.

        The budget is `limit` slots; a slot in use frees when its request leaves the window
        (own answered: response + window; in flight: now + window; others': the end of their
        estimate), a free slot is free now, and a slot handed to a waiter frees a window after
        that.  So waiter j (from 0) gets the (j mod limit)-th slot, j // limit turns later.
        """
        blocked = max(0.0, self.blocked_until - now)
        if self.limit is None:
            return blocked
        used = self.used(now)
        turns, index = divmod(ahead, self.limit)
        rank = index + 1 + used - self.limit  # among the slots in use, by when they free
        at = now if rank <= 0 else self._kth_expiry(now, rank)
        return max(blocked, at + turns * self.window - now)

    def _kth_expiry(self, now: float, k: int) -> float:
        """The `k`-th (from 1) earliest time a token in use returns; `k` <= used(now)."""
        done, window = self._done, self.window
        others = self.others(now)
        if others:
            before = bisect.bisect_left(done, self._others_until - window)
            if k <= before:
                return done[k - 1] + window
            if k <= before + others:
                return self._others_until
            k -= others
        if k <= len(done):
            return done[k - 1] + window
        return now + window  # in flight: answered now at the earliest

    # --- learning ---

    def on_response(self, ticket: Ticket, now: float, rate: RateLimit | None, status: int) -> None:
        """A response to `ticket` arrived at `now` carrying the headers in `rate`."""
        if self._finish(ticket):
            self._done.append(now)
        limit = rate.limit if rate is not None else None
        if limit is not None and 1 <= limit <= MAX_LIMIT:  # else absurd: ignored (0 would
            self.limit = limit  # stop every request with no timer to end it)
        # Answers to requests sent before the latest 429 was seen are old news about it.
        fresh = ticket >= self._fresh_from
        if status == 429:
            if fresh:
                self.throttled += 1
                self._fresh_from = self._next_ticket
            self._need_probe = True
            self.blocked_until = max(self.blocked_until, now + self._pause(now, rate))
            return
        if fresh:
            self._need_probe = False
            self.throttled = 0
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

    def _pause(self, now: float, rate: RateLimit | None) -> float:
        """How long a 429 pauses everyone: Retry-After, but never less than the backoff of
        consecutive 429s and never more than a window (by then the server's window holds
        nothing it held, so a longer wait would be a locked client, not a rate limit)."""
        wait = clean_wait(rate.retry_after if rate is not None else None)
        if wait is None:  # no Retry-After: until one of our own tokens returns
            self._expire(now)
            wait = self._done[0] + self.window - now if self._done else self.probe_every
        backoff = PAUSE_MIN * 2.0 ** min(max(self.throttled - 1, 0), 30)
        return min(max(wait, min(backoff, PAUSE_MAX_BACKOFF)), self.window)

    def on_no_response(self, ticket: Ticket, now: float, *, sent: bool) -> bool:
        """The request ended without a response: failed, timed out or cancelled.

        If it may have reached the server it counts until `now` + window; if it was never
        sent its token is simply returned.  True if it was the probe and may have been sent:
        the server did not answer the one request let through, so the requests waiting
        behind it should fail now rather than each wait out its own timeout.
        """
        was_probe = ticket == self._probe
        if not self._finish(ticket):
            return False
        if sent:
            self._done.append(now)
        return sent and was_probe

    def _finish(self, ticket: Ticket) -> bool:
        """Take `ticket` out of the in-flight list; False if it was not there."""
        if ticket == self._probe:
            self._probe = None
        in_flight = self._in_flight
        index = bisect.bisect_left(in_flight, ticket)
        if index < len(in_flight) and in_flight[index] == ticket:
            del in_flight[index]
            return True
        return False


def clean_wait(seconds: float | None) -> float | None:
    """A Retry-After in seconds fit to compute with: None if absent or NaN, else >= 0
    (infinity stays: the caller caps it)."""
    if seconds is None or math.isnan(seconds):
        return None
    return max(0.0, float(seconds))


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


class _Waiter:
    __slots__ = ("deadline", "future", "max_wait")

    def __init__(self, future: asyncio.Future[Ticket], deadline: float, max_wait: float) -> None:
        self.future = future
        self.deadline = deadline  # loop time; inf: no bound
        self.max_wait = max_wait


def too_long(wait: float, max_wait: float | None, what: str = "the next token") -> RateLimited:
    """The error for a wait over the caller's bound; `retry_after` is the estimated wait."""
    bound = "" if max_wait is None else f", over max_rate_limit_wait={max_wait:g} s"
    return RateLimited(
        429,
        retry_after=wait,
        title="Rate limit wait too long",
        detail=f"{what} is about {wait:.1f} s away{bound}",
    )


def abandoned() -> bool:
    """Whether the running task is being cancelled: a request released now was abandoned by its
    caller, which says nothing about the server (Python 3.11+; on 3.10 it counts as failed)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return False
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling is not None and cancelling())


def probe_failed() -> TransportError:
    """The error for the callers queued behind a probe that got no response (not sent)."""
    return TransportError(
        "not sent: the request let through ahead of this one to test the server got no "
        "response, so this one would most likely have failed the same way"
    )


class RateLimiter:
    """The in-process limiter: one per client, shared by its tasks and `as_user` views.

    Every waiter has its own bound (`acquire`'s `max_wait`, measured from its call): it is
    checked whenever the state changes (a response, a 429, a release) against the estimated
    wait, and a timer ends the wait at the bound itself, so no waiter waits longer than it
    allows, however the estimate changes after it joined the queue.
    """

    def __init__(self, window: float = 3600.0) -> None:
        self._state = WindowState(window)
        self.window = self._state.window
        self.stats = LimiterStats()
        self._waiters: collections.deque[_Waiter] = collections.deque()
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
        if max_wait is not None and (estimate > max_wait or max_wait <= 0):
            raise too_long(estimate, max_wait)
        log.debug(
            "rate limit: waiting behind %d, about %.2f s (limit %s, window %g s)",
            len(self._waiters),
            estimate,
            self._state.limit,
            self.window,
        )
        future: asyncio.Future[Ticket] = loop.create_future()
        bound = math.inf if max_wait is None else max_wait
        self._waiters.append(_Waiter(future, now + bound, bound))
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
        failed = self._state.on_no_response(ticket, now, sent=sent) and not abandoned()
        if failed and self._waiters:
            log.debug(
                "rate limit: the probe got no response; failing %d waiting", len(self._waiters)
            )
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(probe_failed())
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        """Grant tokens to waiters in order, end the waits over their bound, and arm one
        timer for the next possible grant or bound."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters = self._waiters
        loop = asyncio.get_running_loop()
        now = loop.time()
        state = self._state
        while waiters:
            if waiters[0].future.done():  # cancelled while waiting
                waiters.popleft()
                continue
            ticket = state.try_acquire(now)
            if ticket is None:
                break
            waiters.popleft().future.set_result(ticket)
        ahead = 0
        first_deadline = math.inf
        for waiter in waiters:
            if waiter.future.done():
                continue
            if waiter.deadline < math.inf:
                estimate = state.estimate_wait(now, ahead)
                if now >= waiter.deadline or now + estimate > waiter.deadline:
                    waiter.future.set_exception(too_long(estimate, waiter.max_wait))
                    continue
                first_deadline = min(first_deadline, waiter.deadline)
            ahead += 1
        while waiters and waiters[0].future.done():
            waiters.popleft()
        if waiters:
            when = state.next_change(now)
            if first_deadline < math.inf:
                when = first_deadline if when is None else min(when, first_deadline)
            if when is not None:
                # A millisecond late, so the loop's clock resolution never fires it early.
                self._timer = loop.call_at(when + 0.001, self._wake)
