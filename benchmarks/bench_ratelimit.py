"""Rate budget and resilience, measured on FakeEvEnergy over loopback.

Three scenarios, each the acceptance figure of the rate-limiting work:

1. budget: 16 tasks call ``users.get`` for 9.5 s against a rolling window of 30 requests per
   3 s. A sliding window admits 30 in each of [0, 3), [3, 6), [6, 9) and [9, 9.5): 120 in all.
2. shared budget: the same window while an outside consumer spends half of it (a burst of 15
   requests every 3 s, straight into the fake's budget); every call of the client must succeed.
3. faults: 10 % of requests answered 503 and 5 % of writes cut after commit; 120 concurrent
   creates then 120 concurrent updates must leave exactly 120 users, each updated once.

The fake runs in this process: these figures are about requests and time, not CPU.

    python benchmarks/bench_ratelimit.py
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import evenergy_async as ev
from evenergy_async.testing import FakeEvEnergy

WINDOW = 3.0
LIMIT = 30
DURATION = 9.5
TASKS = 16


async def hammer(client: ev.Client, user_id: str, duration: float) -> tuple[int, int]:
    """Calls made and calls failed by TASKS tasks calling users.get for `duration` seconds."""
    done = failed = 0
    deadline = time.monotonic() + duration

    async def worker() -> None:
        nonlocal done, failed
        while (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(client.users.get(user_id), left)
                done += 1
            except asyncio.TimeoutError:
                return
            except ev.EvEnergyError:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(TASKS)))
    return done, failed


async def budget() -> dict[str, object]:
    async with FakeEvEnergy(users=10, rate_limit=LIMIT, rate_window=WINDOW) as fake:
        async with ev.Client(
            token=fake.token, base_url=fake.base_url, rate_limit_window=WINDOW
        ) as c:
            start = time.monotonic()
            me = (await c.users.get("me")).id  # the probe: the first of the window's requests
            done, failed = await hammer(c, me, DURATION - (time.monotonic() - start))
        allowed = LIMIT * 4  # windows starting at 0, 3, 6 and 9 s
        return {
            "scenario": f"budget: {TASKS} tasks, {LIMIT}/{WINDOW:g} s, {DURATION} s",
            "requests": done + 1,
            "of allowed": f"{(done + 1) / allowed:.1%} of {allowed}",
            "server 429s": fake.stats.rate_limited,
            "failed calls": failed,
        }


async def shared() -> dict[str, object]:
    async with FakeEvEnergy(users=10, rate_limit=LIMIT, rate_window=WINDOW) as fake:
        async with ev.Client(
            token=fake.token, base_url=fake.base_url, rate_limit_window=WINDOW
        ) as c:
            stop = asyncio.Event()

            async def outsider() -> int:
                """Half the budget in a burst at the start of every window."""
                spent = 0
                while not stop.is_set():
                    spent += fake.consume(LIMIT // 2)  # beyond the budget: refused, not counted
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), WINDOW)
                return spent

            spender = asyncio.create_task(outsider())
            me = (await c.users.get("me")).id
            done, failed = await hammer(c, me, DURATION)
            stop.set()
            spent = await spender
        return {
            "scenario": f"shared: outsider bursts {LIMIT // 2} every {WINDOW:g} s",
            "requests": done + 1,
            "of allowed": f"{done + 1 + spent} with the outsider's {spent}, of 120",
            "server 429s": f"{fake.stats.rate_limited} (waited out)",
            "failed calls": failed,
        }


async def faults() -> dict[str, object]:
    async with FakeEvEnergy(users=0, seed=11) as fake:
        fake.faults.error_rate = 0.10
        fake.faults.cut_after_commit_rate = 0.05
        failed = 0
        async with ev.Client(token=fake.token, base_url=fake.base_url, max_retries=8) as c:
            c._session.tune(backoff_base=0.01)
            emails = [f"bench{i:03d}@example.com" for i in range(120)]
            created = await asyncio.gather(
                *(c.users.create(email=e) for e in emails), return_exceptions=True
            )
            users = [u for u in created if isinstance(u, ev.User)]
            failed += len(created) - len(users)
            updated = await asyncio.gather(
                *(c.users.update(u.id, default_location=ev.Location(city=None)) for u in users),
                return_exceptions=True,
            )
            failed += sum(1 for u in updated if not isinstance(u, ev.User))
        injected = dict(fake.stats.faults)
        fake.faults.clear()
        async with ev.Client(token=fake.token, base_url=fake.base_url) as c:
            stored = [u async for u in c.users.list()]
        duplicates = len(stored) - len({str(u.email) for u in stored})
        return {
            "scenario": "faults: 10 % 503, 5 % writes cut after commit",
            "requests": f"{len(stored)} users stored, {duplicates} duplicates",
            "of allowed": f"injected {injected.get('error_rate', 0)} 503s, "
            f"{injected.get('cut', 0)} cuts",
            "server 429s": fake.stats.rate_limited,
            "failed calls": failed,
        }


async def main() -> None:
    rows = [await budget(), await shared(), await faults()]
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in headers) + " |")


if __name__ == "__main__":
    asyncio.run(main())
