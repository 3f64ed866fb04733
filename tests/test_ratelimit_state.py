"""The rate limiter: `WindowState` on a fake clock (numbers passed as `now`), then the asyncio
`RateLimiter` around it on a loop whose clock is virtual (`virtual_time`): every duration
below is exact, whatever the machine's speed."""

from __future__ import annotations

import asyncio
import inspect
import math
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from virtual_time import run_virtual

from evenergy_async._ratelimit import MAX_LIMIT, PAUSE_MAX_BACKOFF, RateLimiter, WindowState
from evenergy_async.errors import RateLimited, TransportError
from evenergy_async.models import RateLimit

W = 100.0  # window for the pure tests


def learned(limit: int, remaining: int | None = None, *, window: float = W, at: float = 0.0):
    """A state whose probe was answered at `at` with the given headers."""
    state = WindowState(window)
    ticket = state.try_acquire(at)
    assert ticket is not None
    state.on_response(
        ticket, at, RateLimit(limit, limit - 1 if remaining is None else remaining), 200
    )
    return state


def drain(state: WindowState, now: float) -> list[int]:
    tickets = []
    while (ticket := state.try_acquire(now)) is not None:
        tickets.append(ticket)
        assert len(tickets) < 10_000
    return tickets


# --- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [0, -1, math.nan, math.inf, "60", None])
def test_window_must_be_positive_finite(window):
    with pytest.raises(ValueError):
        WindowState(window)


def test_window_int_accepted():
    assert WindowState(60).window == 60.0


# --- the probe ----------------------------------------------------------------------------------


def test_first_request_is_a_probe():
    state = WindowState(W)
    first = state.try_acquire(0.0)
    assert first is not None
    assert state.try_acquire(0.0) is None
    assert state.try_acquire(50.0) is None  # time alone does not help
    assert state.next_change(0.0) is None  # only a response can
    state.on_response(first, 1.0, RateLimit(5, 4), 200)
    assert state.limit == 5
    assert len(drain(state, 1.0)) == 4


def test_probe_given_back_unsent_allows_next_probe():
    state = WindowState(W)
    first = state.try_acquire(0.0)
    state.on_no_response(first, 0.5, sent=False)
    second = state.try_acquire(0.5)
    assert second is not None
    assert second != first
    assert state.try_acquire(0.5) is None


def test_tickets_are_distinct_and_increasing():
    state = learned(10, 9)
    tickets = drain(state, 1.0)
    assert tickets == sorted(set(tickets))


# --- learning the limit -------------------------------------------------------------------------


def test_learns_limit_from_headers():
    state = learned(7, 6)
    assert state.limit == 7
    assert len(drain(state, 0.0)) == 6


def test_limit_changes_with_later_headers():
    state = learned(3, 2)
    t = state.try_acquire(1.0)
    state.on_response(t, 1.0, RateLimit(10, 8), 200)
    assert state.limit == 10
    assert len(drain(state, 1.0)) == 8


def test_no_rate_headers_means_no_limit():
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, None, 200)
    assert state.limit is None
    assert len([state.try_acquire(0.0) for _ in range(500)]) == 500
    assert state.next_change(0.0) is None


def test_grants_exactly_limit_per_window_own_traffic_only():
    limit = 5
    state = learned(limit, limit - 1, at=0.0)
    granted = drain(state, 0.0)
    assert len(granted) == limit - 1  # the probe used one
    for i, t in enumerate(granted):
        state.on_response(t, 0.0, RateLimit(limit, limit - 2 - i), 200)
    assert state.try_acquire(W - 0.001) is None
    # every token returns at response time + window
    again = drain(state, W)
    assert len(again) == limit


def test_tokens_return_at_response_time_plus_window_not_before():
    state = learned(2, 1, at=0.0)  # probe answered at t=0
    t = state.try_acquire(1.0)  # granted at 1, answered at 30
    assert state.try_acquire(1.0) is None
    state.on_response(t, 30.0, RateLimit(2, 0), 200)
    assert state.try_acquire(W - 0.001) is None
    first = state.try_acquire(W)  # the probe's token is back
    assert first is not None
    assert state.try_acquire(W) is None
    # the second token was granted at 1 but answered at 30: it is back at 130, not at 101
    assert state.try_acquire(1.0 + W) is None
    assert state.try_acquire(30.0 + W - 0.001) is None
    assert state.try_acquire(30.0 + W) is not None


def test_in_flight_tokens_never_return_by_time_alone():
    state = learned(2, 1)
    t = state.try_acquire(0.0)
    assert t is not None
    assert state.try_acquire(10 * W) is not None  # the probe's token came back
    assert state.try_acquire(100 * W) is None  # `t` is still in flight
    state.on_response(t, 100 * W, RateLimit(2, 1), 200)
    assert state.try_acquire(100 * W) is None  # just answered: counted until +W
    assert state.try_acquire(101 * W) is not None


def test_used_counts_own_requests():
    state = learned(10, 9)
    assert state.used(0.0) == 1
    a = state.try_acquire(0.0)
    state.try_acquire(0.0)
    assert state.used(0.0) == 3
    assert state.in_flight() == 2
    state.on_response(a, 5.0, RateLimit(10, 8), 200)  # probe and a counted, b not yet
    assert state.in_flight() == 1
    assert state.used(5.0) == 3
    assert state.used(W + 0.001) == 2  # probe (answered at 0) expired
    assert state.used(5.0 + W) == 1  # `a` expired too


# --- others' usage from X-RateLimit-Remaining ---------------------------------------------------


def test_estimates_others_usage_from_remaining():
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(10, 5), 200)  # we used 1, someone else 4
    assert state.used(0.0) == 5
    assert len(drain(state, 0.0)) == 5


def test_others_usage_expires_after_a_window():
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(10, 0), 200)  # others used 9
    assert state.used(W - 0.001) == 10
    assert state.used(W) == 0
    assert len(drain(state, W)) == 10


def test_stale_estimate_of_others_is_probed_not_waited_out():
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(10, 0), 200)  # full, by others' usage alone
    assert state.try_acquire(1.0) is None
    assert state.next_change(1.0) == pytest.approx(state.probe_every)
    probe = state.try_acquire(state.probe_every)  # one request asks the server again
    assert probe is not None
    assert state.try_acquire(state.probe_every) is None  # only one at a time
    # the others have gone quiet: the server says 8 left (our two requests counted)
    state.on_response(probe, state.probe_every, RateLimit(10, 8), 200)
    assert len(drain(state, state.probe_every)) == 8


def test_no_probe_when_own_requests_fill_the_window():
    state = learned(2, 1, at=0.0)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(2, 0), 200)
    assert state.try_acquire(W / 2) is None  # own requests alone fill it: nothing to ask
    assert state.next_change(W / 2) == W


def test_others_usage_re_estimated_from_each_response():
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(10, 9), 200)
    t = state.try_acquire(1.0)
    state.on_response(t, 1.0, RateLimit(10, 2), 200)  # others used 6 meanwhile
    assert state.used(1.0) == 8
    assert len(drain(state, 1.0)) == 2


def test_remaining_consistent_with_own_traffic_means_no_others():
    state = learned(10, 9)
    tickets = drain(state, 0.0)
    assert len(tickets) == 9
    for i, t in enumerate(tickets):
        state.on_response(t, 1.0, RateLimit(10, 8 - i), 200)
    assert state.used(1.0) == 10
    assert state.try_acquire(1.0) is None
    # 10 own requests, all expiring at 0 + W (probe) and 1 + W: no phantom others
    assert state.try_acquire(W) is not None
    assert len(drain(state, 1.0 + W)) == 9


def test_later_in_flight_requests_not_counted_as_others():
    state = learned(10, 9)
    a, b, c = (state.try_acquire(0.0) for _ in range(3))
    # the answer to `a` says 8 left: the probe and `a` counted; b and c not arrived yet
    state.on_response(a, 0.5, RateLimit(10, 8), 200)
    assert state.used(0.5) == 4  # probe, a, b, c: no others
    state.on_response(b, 0.6, RateLimit(10, 7), 200)
    state.on_response(c, 0.7, RateLimit(10, 6), 200)
    assert state.used(0.7) == 4
    assert len(drain(state, 0.7)) == 6


def test_older_response_does_not_override_fresher_observation():
    state = learned(10, 9)
    a = state.try_acquire(1.0)
    b = state.try_acquire(1.0)
    # `b` (sent later) answers first: 7 left, consistent with our own three requests
    state.on_response(b, 2.0, RateLimit(10, 7), 200)
    assert state.used(2.0) == 3
    # `a`'s answer is older: its "remaining 2" must not add 5 phantom requests
    state.on_response(a, 3.0, RateLimit(10, 2), 200)
    assert state.used(3.0) == 3
    assert len(drain(state, 3.0)) == 7


def test_fresher_response_overrides_older():
    state = learned(10, 9)
    a = state.try_acquire(1.0)
    b = state.try_acquire(1.0)
    state.on_response(a, 2.0, RateLimit(10, 8), 200)
    assert state.used(2.0) == 3
    state.on_response(b, 3.0, RateLimit(10, 3), 200)  # newer: others used 4
    assert state.used(3.0) == 7


# --- 429 ----------------------------------------------------------------------------------------


def test_429_blocks_until_retry_after():
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 10.0, RateLimit(None, None, 5.0), 429)
    assert state.blocked_until == 15.0
    assert state.try_acquire(14.999) is None
    assert state.next_change(12.0) == 15.0
    assert state.estimate_wait(12.0, 0) == pytest.approx(3.0)
    assert state.try_acquire(15.0) is not None


def test_429_without_retry_after_and_unknown_limit_waits_a_little():
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 10.0, None, 429)
    assert 10.0 < state.blocked_until <= 10.0 + W
    assert state.try_acquire(10.0) is None


def test_429_without_retry_after_waits_for_own_oldest_token():
    state = learned(3, 2, at=0.0)
    a = state.try_acquire(1.0)
    state.on_response(a, 2.0, RateLimit(3, 1), 200)
    b = state.try_acquire(3.0)
    state.on_response(b, 4.0, RateLimit(3, None), 429)
    # no Retry-After: the oldest own request (the probe, at 0) leaves the window at W
    assert state.blocked_until == pytest.approx(W)
    assert state.try_acquire(W - 1) is None


def test_429_never_shortens_an_existing_block():
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(None, None, 50.0), 429)
    t = state.try_acquire(50.0)
    state.on_response(t, 50.0, None, 200)
    u = state.try_acquire(50.0)
    v = state.try_acquire(50.0)
    state.on_response(u, 51.0, RateLimit(None, None, 30.0), 429)
    state.on_response(v, 52.0, RateLimit(None, None, 1.0), 429)
    assert state.blocked_until == 81.0


def test_after_429_one_request_at_a_time_until_a_success():
    state = learned(10, 9)
    t = state.try_acquire(1.0)
    state.on_response(t, 1.0, RateLimit(10, None, 2.0), 429)
    assert state.try_acquire(2.9) is None
    probe = state.try_acquire(3.0)
    assert probe is not None
    assert state.try_acquire(3.0) is None
    assert state.next_change(3.0) is None  # only the probe's response can help
    state.on_response(probe, 3.5, RateLimit(10, 5), 200)
    assert len(drain(state, 3.5)) == 5


def test_429_retry_after_is_honoured_when_limit_known():
    state = WindowState(3600.0)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(1000, 0, 5.0), 429)
    assert state.blocked_until == 5.0
    assert state.try_acquire(5.0) is not None


# --- requests without a response ----------------------------------------------------------------


def test_on_no_response_sent_counts_for_a_window():
    state = learned(2, 1, at=0.0)
    t = state.try_acquire(10.0)
    state.on_no_response(t, 20.0, sent=True)
    assert state.in_flight() == 0
    assert state.used(20.0) == 2
    assert state.try_acquire(20.0) is None
    assert state.try_acquire(W) is not None  # probe expired
    assert state.try_acquire(20.0 + W - 0.001) is None
    assert state.try_acquire(20.0 + W) is not None


def test_on_no_response_unsent_returns_the_token_now():
    state = learned(2, 1, at=0.0)
    t = state.try_acquire(10.0)
    assert state.try_acquire(10.0) is None
    state.on_no_response(t, 11.0, sent=False)
    assert state.in_flight() == 0
    assert state.used(11.0) == 1
    assert state.try_acquire(11.0) is not None


def test_on_no_response_twice_or_unknown_ticket_is_harmless():
    state = learned(3, 2)
    t = state.try_acquire(0.0)
    state.on_no_response(t, 1.0, sent=True)
    state.on_no_response(t, 1.0, sent=True)
    state.on_no_response(12345, 1.0, sent=True)
    assert state.used(1.0) == 2


def test_response_after_release_not_double_counted():
    state = learned(3, 2)
    t = state.try_acquire(0.0)
    state.on_no_response(t, 1.0, sent=True)
    state.on_response(t, 2.0, None, 200)
    assert state.used(2.0) == 2


# --- next_change / estimate_wait ----------------------------------------------------------------


def test_next_change_none_when_only_responses_help():
    state = learned(2, 1, at=0.0)
    state.try_acquire(0.0)  # in flight
    assert state.try_acquire(W) is not None  # the probe's token came back
    assert state.try_acquire(W) is None
    assert state.next_change(W) is None  # both tokens are in flight


def test_next_change_is_oldest_own_expiry():
    state = learned(3, 2, at=0.0)
    a = state.try_acquire(0.0)
    b = state.try_acquire(0.0)
    state.on_response(a, 5.0, RateLimit(3, 1), 200)
    state.on_response(b, 7.0, RateLimit(3, 0), 200)
    assert state.try_acquire(7.0) is None
    assert state.next_change(7.0) == W
    assert state.next_change(W + 1) == 5.0 + W


def test_next_change_includes_others_expiry():
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 10.0, RateLimit(5, 0), 200)
    # own probe and others' 4 leave the window at 10 + W; a re-probe is due before that
    assert state.next_change(10.0) == 10.0 + state.probe_every
    t = state.try_acquire(10.0 + state.probe_every)
    state.on_response(t, 11.0 + state.probe_every, RateLimit(5, 0), 200)  # still full
    # at 10 + W the first request has left the window: room for exactly one more
    assert state.try_acquire(10.0 + W) is not None
    assert state.try_acquire(10.0 + W) is None
    # it is in flight, so no probe is due: the next change is when the estimate expires
    assert state.next_change(10.0 + W) == 11.0 + state.probe_every + W


def test_estimate_wait_zero_with_room():
    state = learned(10, 9)
    assert state.estimate_wait(0.0, 0) == 0.0
    assert state.estimate_wait(0.0, 8) == 0.0


def test_estimate_wait_unlearned_is_zero():
    assert WindowState(W).estimate_wait(0.0, 5) == 0.0


def test_estimate_wait_counts_queue_ahead():
    state = learned(2, 1, at=0.0)
    t = state.try_acquire(0.0)
    state.on_response(t, 4.0, RateLimit(2, 0), 200)
    assert state.estimate_wait(10.0, 0) == pytest.approx(W - 10.0)
    assert state.estimate_wait(10.0, 1) == pytest.approx(W + 4.0 - 10.0)


def test_estimate_wait_in_flight_counted_as_answered_now():
    state = learned(2, 1, at=0.0)
    state.try_acquire(0.0)  # in flight
    assert state.estimate_wait(10.0, 0) == pytest.approx(W - 10.0)  # the probe's token
    assert state.estimate_wait(10.0, 1) == pytest.approx(W)  # the in-flight one, answered now


def test_estimate_wait_blocked():
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(None, None, 42.0), 429)
    assert state.estimate_wait(2.0, 0) == pytest.approx(40.0)


def test_estimate_wait_queue_longer_than_limit_is_finite():
    state = learned(2, 1, at=0.0)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(2, 0), 200)
    # two tokens come back at W; two more requests ahead take them; ours goes at 2W
    assert state.estimate_wait(0.0, 2) == pytest.approx(2 * W)


# --- the asyncio limiter, on virtual time -------------------------------------------------------


def virtual(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a `VirtualTimeLoop` (time starts at 0 and jumps to each timer)."""

    def test(*args: Any, **kwargs: Any) -> None:
        run_virtual(fn(*args, **kwargs))

    test.__name__, test.__doc__ = fn.__name__, fn.__doc__
    test.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return test


def now() -> float:
    return asyncio.get_running_loop().time()


async def primed(limit: int, remaining: int | None = None, window: float = 10.0) -> RateLimiter:
    limiter = RateLimiter(window)
    ticket = await limiter.acquire()
    await limiter.record(
        ticket, RateLimit(limit, limit - 1 if remaining is None else remaining), 200
    )
    return limiter


async def settle() -> None:
    """Let every task that can run without time passing run."""
    for _ in range(5):
        await asyncio.sleep(0)


@virtual
async def test_limiter_fifo_order_of_grants():
    limiter = await primed(2, 0, window=10.0)  # full: every grant waits for a token to return
    order: list[tuple[int, float]] = []

    async def worker(i: int) -> None:
        ticket = await limiter.acquire()
        order.append((i, now()))
        await limiter.record(ticket, None, 200)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.ensure_future(worker(i)))
        await asyncio.sleep(0)  # acquire called in order 0..5
    await asyncio.gather(*tasks)
    assert [i for i, _ in order] == list(range(6))
    times = [round(t, 2) for _, t in order]
    # a probe of others' (stale) spending at window / 20, then the tokens as they return
    assert times == [0.5, 10.0, 10.5, 20.0, 20.5, 30.0]


@virtual
async def test_limiter_newcomer_does_not_jump_the_queue():
    limiter = RateLimiter(10.0)
    probe = await limiter.acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await limiter.acquire()
        order.append(name)

    first = asyncio.ensure_future(waiter("first"))
    await asyncio.sleep(0)
    await limiter.record(probe, RateLimit(1, 0), 200)  # learned: full for the window
    late = asyncio.ensure_future(waiter("late"))
    await asyncio.sleep(0)
    await first
    assert order == ["first"]
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)


@virtual
async def test_limiter_grants_without_waiting_when_room():
    limiter = await primed(10)
    start = now()
    tickets = [await limiter.acquire() for _ in range(9)]
    assert len(set(tickets)) == 9
    assert now() == start
    assert limiter.stats.waits == 0


@virtual
async def test_limiter_waits_for_window():
    limiter = await primed(1, 0, window=10.0)
    await limiter.acquire()
    assert now() == pytest.approx(10.0, abs=0.01)  # the probe's token, answered at 0
    assert limiter.stats.waits == 1
    assert limiter.stats.wait_seconds == pytest.approx(10.0, abs=0.01)


@virtual
async def test_cancelled_waiter_leaks_no_token_and_does_not_stall():
    limiter = await primed(1, 0)
    a = asyncio.ensure_future(limiter.acquire())
    b = asyncio.ensure_future(limiter.acquire())
    await settle()
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    ticket = await b  # b is not stuck behind the cancelled a
    assert now() == pytest.approx(10.0, abs=0.01)
    assert limiter.state.in_flight() == 1
    await limiter.record(ticket, None, 200)
    assert limiter.state.in_flight() == 0


@virtual
async def test_cancelled_after_grant_gives_the_token_back():
    limiter = RateLimiter(10.0)
    probe = await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    # the response grants the waiter its token synchronously; it is cancelled before it runs
    await limiter.record(probe, RateLimit(2, 1), 200)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.state.in_flight() == 0
    assert limiter.state.used(now()) == 1  # the probe only
    start = now()
    await limiter.acquire()  # the token given back is there at once
    assert now() == start


@virtual
async def test_cancel_all_waiters_leaves_clean_state():
    limiter = await primed(1, 0)
    waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(5)]
    await settle()
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await asyncio.sleep(11.0)  # the timer fires with nobody left
    assert limiter.state.in_flight() == 0
    assert limiter._timer is None
    start = now()
    await limiter.acquire()
    assert now() == start


@virtual
async def test_max_wait_raises_rate_limited_with_retry_after():
    limiter = await primed(1, 0, window=10.0)
    with pytest.raises(RateLimited) as info:
        await limiter.acquire(max_wait=1.0)
    assert info.value.retry_after == pytest.approx(10.0)
    assert info.value.status == 429
    assert not limiter._waiters  # refused without queueing
    assert limiter.state.in_flight() == 0


@virtual
async def test_max_wait_long_enough_waits():
    limiter = await primed(1, 0, window=10.0)
    await limiter.acquire(max_wait=11.0)
    assert now() == pytest.approx(10.0, abs=0.01)


@virtual
async def test_max_wait_zero_with_room():
    limiter = await primed(5)
    assert await limiter.acquire(max_wait=0.0) is not None


@virtual
async def test_max_wait_zero_without_room_refuses_at_once():
    limiter = RateLimiter(10.0)
    await limiter.acquire()  # the probe, unanswered
    with pytest.raises(RateLimited):
        await limiter.acquire(max_wait=0.0)
    assert now() == 0.0 and not limiter._waiters


@virtual
async def test_release_wakes_waiter():
    limiter = RateLimiter(3600.0)
    probe = await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await settle()
    assert not waiter.done()
    limiter.release(probe, sent=False)
    await waiter
    assert now() == 0.0


@virtual
async def test_record_wakes_waiters():
    limiter = RateLimiter(3600.0)
    probe = await limiter.acquire()
    waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(5.0)
    assert not any(w.done() for w in waiters)
    await limiter.record(probe, RateLimit(100, 99), 200)
    await asyncio.gather(*waiters)
    assert now() == 5.0


@virtual
async def test_record_429_pauses_everyone():
    limiter = RateLimiter(3600.0)
    probe = await limiter.acquire()
    await limiter.record(probe, RateLimit(None, None, 7.5), 429)
    assert limiter.stats.throttled == 1
    await limiter.acquire()
    assert now() == pytest.approx(7.5, abs=0.01)


@virtual
async def test_no_timer_when_only_a_response_can_help():
    limiter = RateLimiter(3600.0)
    probe = await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await settle()
    assert limiter._timer is None  # nothing armed: a response will wake it
    limiter.release(probe, sent=False)
    await waiter


@virtual
async def test_no_busy_polling_while_waiting_for_window():
    limiter = await primed(1, 0, window=300.0)
    loop = asyncio.get_running_loop()
    scheduled = 0
    wakes = 0
    real_call_at = loop.call_at
    real_wake = limiter._wake

    def counting_wake():
        nonlocal wakes
        wakes += 1
        real_wake()

    limiter._wake = counting_wake  # type: ignore[method-assign]

    def counting_call_at(*args, **kwargs):
        nonlocal scheduled
        scheduled += 1
        return real_call_at(*args, **kwargs)

    loop.call_at = counting_call_at  # type: ignore[method-assign]
    try:
        await limiter.acquire()
    finally:
        del loop.call_at
    # one timer for the token's return: no polling
    assert scheduled <= 2
    assert wakes <= 2
    assert limiter._timer is None
    assert now() == pytest.approx(300.0, abs=0.01)


@virtual
async def test_no_timer_left_when_nothing_waits():
    limiter = await primed(3)
    for _ in range(2):
        await limiter.acquire()
    assert limiter._timer is None
    assert not limiter._waiters


@virtual
async def test_configure_window():
    limiter = RateLimiter(10.0)
    limiter.configure(window=20.0)
    assert limiter.window == 20.0
    assert limiter.state.window == 20.0
    await limiter.acquire()
    with pytest.raises(RuntimeError):
        limiter.configure(window=30.0)
    limiter.configure(window=20.0)  # unchanged: fine while in use


def test_release_without_loop_is_harmless():
    limiter = RateLimiter(10.0)
    limiter.release(0, sent=True)  # no running loop: must not raise
    assert limiter.state.in_flight() == 0


# --- absurd headers never lock the client (issue 11, row 3) --------------------------------------


@pytest.mark.parametrize("limit", [0, -5])
def test_a_limit_below_one_is_ignored(limit):
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(limit, 0), 200)
    assert state.limit is None
    assert state.try_acquire(0.0) is not None  # not locked: no limit known, no wait


def test_a_limit_of_zero_after_a_real_one_keeps_the_real_one():
    state = learned(10, 9)
    t = state.try_acquire(1.0)
    state.on_response(t, 1.0, RateLimit(0, None), 200)
    assert state.limit == 10
    assert state.try_acquire(1.0) is not None


def test_a_huge_limit_is_ignored():
    state = learned(10**30, 0)
    assert state.limit is None
    assert state.try_acquire(0.0) is not None


def test_the_largest_limit_keeps_estimates_cheap():
    state = learned(MAX_LIMIT, 0)  # "none left" of a huge budget: others spent it all
    assert state.others(0.0) == MAX_LIMIT - 1
    assert state.estimate_wait(0.0, 5) == pytest.approx(W)  # no list of a billion entries
    assert state.next_change(0.0) == pytest.approx(W / 20)  # a probe asks again


@pytest.mark.parametrize("retry_after", [1e12, math.inf, 86400.0 * 365])
def test_a_429_pause_is_at_most_a_window(retry_after):
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(None, None, retry_after), 429)
    assert state.blocked_until == W
    assert state.try_acquire(W) is not None  # a probe goes when the pause ends


@pytest.mark.parametrize("retry_after", [math.nan, -5.0])
def test_a_nonsense_retry_after_still_pauses_and_recovers(retry_after):
    state = WindowState(W)
    t = state.try_acquire(0.0)
    state.on_response(t, 0.0, RateLimit(None, None, retry_after), 429)
    assert 1.0 <= state.blocked_until <= W
    probe = state.try_acquire(state.blocked_until)
    assert probe is not None
    state.on_response(probe, W, RateLimit(10, 9), 200)  # healthy again
    assert len(drain(state, W)) == 9


def test_estimate_wait_is_finite_with_a_queue_and_an_empty_window():
    state = learned(2, 2)  # room for two more, then the queue turns once a window
    state._done.clear()
    assert state.estimate_wait(0.0, 1) == 0.0
    assert state.estimate_wait(0.0, 2) == pytest.approx(W)
    assert state.estimate_wait(0.0, 5) == pytest.approx(2 * W)


# --- a minimum pause, with backoff, after every 429 (issue 11, row 4) ----------------------------


def throttle(state: WindowState, now: float, retry_after: float | None) -> float:
    """Send the next allowed request at `now`, answer it 429; the pause it caused."""
    t = state.try_acquire(now)
    assert t is not None
    state.on_response(t, now, RateLimit(None, None, retry_after), 429)
    return state.blocked_until - now


@pytest.mark.parametrize("retry_after", [0.0, -3.0, None])
def test_consecutive_429s_double_the_pause_up_to_a_cap(retry_after):
    state = WindowState(3600.0)
    pauses = []
    now = 0.0
    for _ in range(9):
        pause = throttle(state, now, retry_after)
        pauses.append(pause)
        now += pause
    expected = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    if retry_after is None:  # no Retry-After: until the request answered 429 leaves the window
        expected = [3600.0] * 9
    assert pauses == expected
    assert PAUSE_MAX_BACKOFF == 60.0


def test_a_success_resets_the_backoff():
    state = WindowState(3600.0)
    assert throttle(state, 0.0, 0.0) == 1.0
    assert throttle(state, 1.0, 0.0) == 2.0
    t = state.try_acquire(3.0)
    state.on_response(t, 3.0, RateLimit(None, None), 200)
    assert state.throttled == 0
    assert throttle(state, 3.0, 0.0) == 1.0


def test_429s_of_requests_sent_together_count_once():
    state = learned(100, 99, window=3600.0)
    burst = drain(state, 1.0)[:20]
    for t in burst:  # all sent before the first 429 came back
        state.on_response(t, 2.0, RateLimit(100, 0, 0.0), 429)
    assert state.throttled == 1
    assert state.blocked_until == 3.0
    # and a late success of that burst does not lift the one-at-a-time rule after the 429
    more = learned(100, 99, window=3600.0)
    a, b = more.try_acquire(1.0), more.try_acquire(1.0)
    more.on_response(a, 2.0, RateLimit(100, 0, 0.0), 429)
    more.on_response(b, 2.5, RateLimit(100, 50), 200)
    assert more.try_acquire(3.0) is not None
    assert more.try_acquire(3.0) is None  # still a probe at a time


@virtual
async def test_fifty_tasks_against_a_server_that_always_answers_429_retry_after_0():
    limiter = RateLimiter(3600.0)
    sent = 0

    async def task() -> None:
        nonlocal sent
        while now() < 60.0:
            ticket = await limiter.acquire()
            sent += 1
            await asyncio.sleep(0.002)  # the round trip
            await limiter.record(ticket, RateLimit(None, None, 0.0), 429)

    tasks = [asyncio.ensure_future(task()) for _ in range(50)]
    await asyncio.sleep(60.0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # one probe at a time, pauses 1, 2, 4, 8, 16, 32 s: sent at 0, 1, 3, 7, 15 and 31 s
    assert sent == 6


# --- every waiter's max_wait holds at every moment (issue 11, row 1) -----------------------------


@virtual
async def test_a_429_ends_the_queued_waits_it_makes_too_long_at_once():
    limiter = RateLimiter(3600.0)
    probe = await limiter.acquire()
    short = [asyncio.ensure_future(limiter.acquire(max_wait=5.0)) for _ in range(3)]
    patient = asyncio.ensure_future(limiter.acquire(max_wait=100.0))
    unbounded = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(1.0)
    await limiter.record(probe, RateLimit(None, None, 60.0), 429)
    await settle()
    assert now() == 1.0
    for waiter in short:
        assert waiter.done()
        error = waiter.exception()
        assert isinstance(error, RateLimited)
        assert error.retry_after == pytest.approx(60.0)
    assert not patient.done() and not unbounded.done()
    await patient  # its own bound allows the pause: it is the probe when the pause ends
    assert now() == pytest.approx(61.0, abs=0.01)
    unbounded.cancel()
    await asyncio.gather(unbounded, return_exceptions=True)


@virtual
async def test_a_wait_ends_at_its_bound_even_when_nothing_happens():
    limiter = RateLimiter(3600.0)
    await limiter.acquire()  # the probe: its response never comes
    waiter = asyncio.ensure_future(limiter.acquire(max_wait=2.0))
    with pytest.raises(RateLimited):
        await waiter
    assert now() == pytest.approx(2.0, abs=0.01)
    assert not limiter._waiters


@virtual
async def test_each_waiter_has_its_own_bound_checked_at_each_change():
    limiter = await primed(3, 2, window=100.0)  # the probe answered at 0; two tokens left
    held = [await limiter.acquire() for _ in range(2)]
    a = asyncio.ensure_future(limiter.acquire(max_wait=120.0))
    b = asyncio.ensure_future(limiter.acquire(max_wait=200.0))
    await settle()
    assert not a.done() and not b.done()  # the probe's token returns at 100: both fit
    await asyncio.sleep(50.0)
    # others spent a token: the next one is now free at 150, too late for a, not for b
    await limiter.record(held[0], RateLimit(3, 0), 200)
    await settle()
    assert isinstance(a.exception(), RateLimited)
    assert a.exception().retry_after == pytest.approx(100.0)
    assert not b.done()
    await b
    assert now() == pytest.approx(150.0, abs=0.01)


# --- a failed probe fails the callers waiting behind it (issue 11, row 6) ------------------------


@virtual
async def test_an_outage_costs_every_caller_one_timeout_not_one_each():
    limiter = RateLimiter(3600.0)
    ended: list[tuple[float, str]] = []

    async def call() -> None:  # a request against a server that never answers, timeout 1 s
        try:
            ticket = await limiter.acquire()
        except TransportError:
            ended.append((now(), "failed behind the probe"))
            return
        await asyncio.sleep(1.0)
        limiter.release(ticket, sent=True)
        ended.append((now(), "timed out"))

    await asyncio.gather(*(call() for _ in range(10)))
    assert sorted(ended)[0] == (1.0, "failed behind the probe")
    assert [t for t, _ in ended] == [1.0] * 10
    assert [why for _, why in ended].count("timed out") == 1


@virtual
async def test_a_probe_given_back_unsent_passes_to_the_next_caller():
    limiter = RateLimiter(3600.0)
    probe = await limiter.acquire()
    waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(3)]
    await settle()
    limiter.release(probe, sent=False)  # never reached the server: says nothing of it
    await settle()
    assert [w.done() for w in waiters] == [True, False, False]
    assert waiters[0].exception() is None
    for w in waiters[1:]:
        w.cancel()
    await asyncio.gather(*waiters[1:], return_exceptions=True)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11+")
@virtual
async def test_a_probe_abandoned_by_its_caller_passes_to_the_next():
    limiter = RateLimiter(3600.0)

    async def call() -> None:
        ticket = await limiter.acquire()
        try:
            await asyncio.sleep(3600)  # the request in flight
        except asyncio.CancelledError:
            limiter.release(ticket, sent=True)  # as the session does when its caller gives up
            raise

    caller = asyncio.ensure_future(call())
    await settle()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(1.0)
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    await waiter  # the next probe: a caller giving up says nothing about the server
    assert now() == 1.0


@virtual
async def test_a_failed_request_that_was_not_the_probe_fails_nobody():
    limiter = await primed(1, 0, window=10.0)
    ticket = await limiter.acquire()  # waited for the window: a normal grant, not a probe
    waiter = asyncio.ensure_future(limiter.acquire())
    await settle()
    limiter.release(ticket, sent=True)
    await settle()
    assert not waiter.done()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


def test_on_no_response_tells_a_failed_probe():
    state = WindowState(W)
    probe = state.try_acquire(0.0)
    assert state.on_no_response(probe, 1.0, sent=True) is True
    again = state.try_acquire(1.0)
    assert state.on_no_response(again, 1.0, sent=False) is False
    assert state.on_no_response(again, 1.0, sent=True) is False  # already finished
