"""Rate limiting and retries against FakeEvEnergy with compressed windows and injected faults."""

from __future__ import annotations

import asyncio

import pytest
from polling import until

import evenergy_async as ev
from evenergy_async.testing import FakeEvEnergy


def fast_retries(client: ev.Client) -> ev.Client:
    client._session.tune(backoff_base=0.002, backoff_cap=0.02)
    return client


async def test_spends_the_whole_budget_without_a_429(spec_check):
    """31 calls against 10 per rolling 0.5 s: the client spends each window's budget to the last
    request (the fake's X-RateLimit-Remaining reaches 0 in every window the calls fill), then
    waits for the window instead of drawing a 429."""
    async with (
        FakeEvEnergy(users=20, rate_limit=10, rate_window=0.5, on_exchange=spec_check) as fake,
        ev.Client(token=fake.token, base_url=fake.base_url, rate_limit_window=0.5) as client,
    ):
        me = await client.users.get("me")
        results = await asyncio.gather(*(client.users.get(me.id) for _ in range(30)))
    assert [u.id for u in results] == [me.id] * 30
    assert fake.stats.rate_limited == 0
    assert fake.stats.statuses == {200: 31}
    remaining = [int(e.response_headers["X-RateLimit-Remaining"]) for e in spec_check.exchanges]
    # 31 requests at 10 per window fill at least 3 windows to the brim, and each full window
    # shows a 0 (at 4x slowdown a window of 0.5 s still holds 10 loopback calls).
    assert remaining.count(0) >= 3
    assert client.limiter.stats.waits > 0


@pytest.mark.slow
async def test_throughput_tracks_the_rate_limit_in_real_time(spec_check):
    """Real time is the point: 16 tasks calling for 3 s against 20 per rolling second get
    through at least half of the 60 calls the limit allows, and never draw a 429.

    The bound is generous (loopback calls at 20 per second leave the loop idle most of the
    time, even at 4x slowdown); it catches a limiter that waits far longer than it must.
    """
    async with (
        FakeEvEnergy(users=5, rate_limit=20, rate_window=1.0, on_exchange=spec_check) as fake,
        ev.Client(token=fake.token, base_url=fake.base_url, rate_limit_window=1.0) as client,
    ):
        me = await client.users.get("me")
        loop = asyncio.get_running_loop()
        stop = loop.time() + 3.0
        done = 0

        async def worker() -> None:
            nonlocal done
            while loop.time() < stop:
                await client.users.get(me.id)
                done += 1

        await asyncio.gather(*(worker() for _ in range(16)))
    assert fake.stats.rate_limited == 0
    assert done + 1 >= 30


async def test_outside_consumer_sharing_the_budget_never_fails_a_call(spec_check):
    async with (
        FakeEvEnergy(users=10, rate_limit=20, rate_window=0.5, on_exchange=spec_check) as fake,
        ev.Client(token=fake.token, base_url=fake.base_url, rate_limit_window=0.5) as client,
    ):
        me = await client.users.get("me")
        stop = asyncio.Event()
        spent = 0

        async def outsider() -> None:  # spends about half of the budget
            nonlocal spent
            while not stop.is_set():
                spent += fake.consume(1)
                await asyncio.sleep(0.05)  # 10 of every window's 20

        spender = asyncio.create_task(outsider())
        results = await asyncio.gather(*(client.users.get(me.id) for _ in range(40)))
        stop.set()
        await spender
        assert [u.id for u in results] == [me.id] * 40
        assert spent > 0  # the budget was shared while the calls ran
        assert client.rate_limit is not None and client.rate_limit.limit == 20


async def test_a_429_pauses_every_task_and_is_not_a_retry(spec_check):
    async with FakeEvEnergy(users=10, on_exchange=spec_check) as fake:
        async with ev.Client(token=fake.token, base_url=fake.base_url, max_retries=0) as client:
            me = await client.users.get("me")
            fake.faults.fail_next(1, status=429, retry_after=1)
            first = asyncio.create_task(client.users.get(me.id))
            await until(lambda: client.limiter.stats.throttled == 1)
            sent = fake.stats.total
            others = [asyncio.create_task(client.users.get(me.id)) for _ in range(5)]
            # the first call's second attempt and the 5 others all queue behind the pause...
            await until(lambda: client.limiter.stats.waits == 6)
            assert fake.stats.total == sent  # ...and nothing reaches the server meanwhile
            results = await asyncio.gather(first, *others)
            assert [u.id for u in results] == [me.id] * 6  # max_retries=0: a 429 is no retry
            assert fake.stats.statuses == {200: 7, 429: 1}
            assert client.limiter.stats.throttled == 1


async def test_max_rate_limit_wait_raises_rate_limited(spec_check):
    async with (
        FakeEvEnergy(users=10, on_exchange=spec_check) as fake,
        ev.Client(token=fake.token, base_url=fake.base_url, max_rate_limit_wait=0.5) as client,
    ):
        fake.faults.fail_next(1, status=429, retry_after=30)
        with pytest.raises(ev.RateLimited) as caught:
            await client.users.get("me")
        assert caught.value.retry_after == pytest.approx(30, abs=1)
        with pytest.raises(ev.RateLimited):  # the pause holds for every later call too
            await client.users.get("me")


async def test_server_errors_are_retried_with_backoff_then_raised(spec_check):
    async with FakeEvEnergy(users=10, on_exchange=spec_check) as fake:
        async with ev.Client(token=fake.token, base_url=fake.base_url, max_retries=2) as client:
            fast_retries(client)
            fake.faults.fail_next(2, status=503)
            assert (await client.users.get("me")).id
            fake.faults.fail_next(3, status=502)
            with pytest.raises(ev.ServerError) as caught:
                await client.users.get("me")
            assert caught.value.status == 502


async def test_faults_lose_and_duplicate_nothing(spec_check):
    """10 % 503s and 5 % of writes cut after commit: 80 creates + 80 updates end exact."""
    async with FakeEvEnergy(users=0, seed=7, on_exchange=spec_check) as fake:
        fake.faults.error_rate = 0.10
        fake.faults.cut_after_commit_rate = 0.05
        async with ev.Client(token=fake.token, base_url=fake.base_url, max_retries=8) as client:
            fast_retries(client)
            emails = [f"bulk{i:03d}@example.com" for i in range(80)]
            created = await asyncio.gather(*(client.users.create(email=e) for e in emails))
            updated = await asyncio.gather(
                *(
                    client.users.update(u.id, default_location=ev.Location(city=None))
                    for u in created
                )
            )
        assert fake.stats.faults["cut"] > 0 and fake.stats.faults["error_rate"] > 0
        fake.faults.clear()
        async with ev.Client(token=fake.token, base_url=fake.base_url) as check:
            everyone = [u async for u in check.users.list()]
    assert sorted(str(u.email) for u in everyone) == emails
    assert len({u.id for u in created}) == 80
    assert {u.id for u in updated} == {u.id for u in everyone}


async def test_failed_stream_resumes_from_its_cursor(spec_check):
    async with FakeEvEnergy(users=95, on_exchange=spec_check) as fake:
        async with ev.Client(token=fake.token, base_url=fake.base_url, max_retries=0) as client:
            seen: list[str] = []
            with pytest.raises(ev.ServerError) as caught:
                async for user in client.users.list(page_size=10):
                    seen.append(user.id)
                    if len(seen) == 35:
                        fake.faults.fail_next(1, status=503)
            cursor = caught.value.resume_cursor
            assert cursor == seen[-1]
            seen += [u.id async for u in client.users.list(page_size=10, page_after=cursor)]
            everything = [u.id async for u in client.users.list(page_size=100)]
            assert seen == everything


async def test_a_5xx_asking_for_a_long_wait_is_raised_not_slept_through(spec_check):
    async with FakeEvEnergy(users=5, on_exchange=spec_check) as fake:
        async with ev.Client(token=fake.token, base_url=fake.base_url, max_retries=3) as client:
            fake.faults.fail_next(1, status=503, retry_after=3600)
            with pytest.raises(ev.ServerError) as caught:
                # a bound on a hang only, not a measurement: sleeping through is 3600 s
                await asyncio.wait_for(client.users.get("me"), 60)
            assert caught.value.headers["retry-after"] == "3600"
            assert fake.stats.statuses == {503: 1}  # raised at once, not retried


async def test_cancellation_anywhere_leaves_the_client_whole(spec_check):
    """Cancel 200 calls at random moments (waiting for a token, mid-request, mid-stream): no
    token leaks, no connection stays acquired, and the client goes on working."""
    import random

    rng = random.Random(5)
    async with FakeEvEnergy(
        users=50, rate_limit=40, rate_window=0.25, on_exchange=spec_check
    ) as fake:
        fake.faults.latency = 0.005
        async with ev.Client(token=fake.token, base_url=fake.base_url, rate_limit_window=0.25) as c:
            me = await c.users.get("me")

            async def stream() -> None:
                async for _ in c.users.list(page_size=5, resolve=("default_location.tariff",)):
                    pass

            calls = [c.users.get(me.id) if i % 3 else stream() for i in range(200)]
            tasks = [asyncio.ensure_future(call) for call in calls]
            for task in tasks:
                await asyncio.sleep(rng.uniform(0, 0.004))
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert any(isinstance(r, asyncio.CancelledError) for r in results)
            assert not [r for r in results if isinstance(r, Exception)]
            state = c.limiter.state  # type: ignore[attr-defined]
            limiter = c.limiter

            def settled() -> bool:
                # what was sent before its task was cancelled is answered and given back, and
                # a shared fetch a cancelled stream started ends (or is cancelled)
                return not state.in_flight() and not limiter._waiters and not c._shared.resolving  # type: ignore[attr-defined]

            await until(settled)
            assert state.in_flight() == 0
            connector = c._session.http.connector
            assert connector is not None
            assert sum(len(v) for v in connector._acquired_per_host.values()) == 0  # type: ignore[attr-defined]
            assert not c._shared.resolving
            # and it still spends the budget correctly: once the server's window holds none of
            # the cancelled requests (the client counts one sent then cancelled from the cancel,
            # the server from its arrival, which a busy loop can make the later), a burst of
            # one and a half windows' worth completes without a 429
            await until(lambda: fake.rate_limit_remaining() == fake.rate_limit)
            throttled = fake.stats.rate_limited
            await asyncio.gather(*(c.users.get(me.id) for _ in range(60)))
            assert fake.stats.rate_limited == throttled
