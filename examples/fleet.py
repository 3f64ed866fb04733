"""A fleet of worker processes sharing one ev.energy rate-limit budget through Redis.

The API allows so many requests per rolling window per OAuth app + user, and every worker of
the app spends the same budget.  Each worker process here has its own ``ev.Client`` with a
``RedisRateLimiter`` on the same Redis key, so N processes × M tasks stay inside one budget as
if they were one client: no worker runs ahead, one 429 pauses them all, and a worker that dies
gives its tokens back after ``reservation_ttl``.

The parent lists the users (through the same budget), splits them between the workers, and
prints a progress line every second read from the shared budget in Redis: requests in the
window / limit, requests in flight, others' estimated use, any 429 pause, tasks waiting.

Try it against the local fake (starts FakeEvEnergy in this process, and a throwaway
redis-server unless ``--redis`` is given; the fake allows 100 requests per 5 s here)::

    python examples/fleet.py --fake
    python examples/fleet.py --fake --workers 4 --tasks 8 --users 600 --action update

Against the real API (token from the environment; the key defaults to a fingerprint of it)::

    EVENERGY_TOKEN=... python examples/fleet.py --redis redis://localhost:6379/0 \\
        --rate-limit-window 3600 --action resolve

``--action resolve`` fetches each user and resolves its default location's tariff (cached per
process); ``--action update`` sets each user's email to ``fleet-<id>@example.com``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import evenergy_async as ev
from evenergy_async._redis import RedisRateLimiter, fingerprint

FAKE_LIMIT = 100
FAKE_WINDOW = 5.0


# --- a worker process ---------------------------------------------------------------------


def worker(index: int, job: dict[str, Any], user_ids: list[str], done: Any, failed: Any) -> None:
    """One process: `job["tasks"]` tasks working through `user_ids` with one shared budget."""
    asyncio.run(_worker(index, job, user_ids, done, failed))


async def _worker(
    index: int, job: dict[str, Any], user_ids: list[str], done: Any, failed: Any
) -> None:
    limiter = RedisRateLimiter(job["redis"], key=job["key"], reservation_ttl=job["timeout"] + 5)
    todo = iter(user_ids)
    async with (
        limiter,
        ev.Client(
            token=job["token"],
            base_url=job["base_url"],
            limiter=limiter,
            rate_limit_window=job["window"],
            timeout=job["timeout"],
        ) as client,
    ):

        async def task() -> None:
            for user_id in todo:  # the tasks share one iterator: each id is taken once
                try:
                    if job["action"] == "update":
                        await client.users.update(
                            user_id, email=f"fleet-{user_id.lower()}@example.com"
                        )
                    else:
                        user = await client.users.get(user_id)
                        location = user.default_location
                        if isinstance(location, ev.Location) and isinstance(
                            location.tariff, ev.Ref
                        ):
                            await location.tariff.resolve()
                except ev.EvEnergyError as exc:
                    with failed.get_lock():
                        failed.value += 1
                    print(f"worker {index}: {user_id}: {exc}", file=sys.stderr)
                else:
                    with done.get_lock():
                        done.value += 1

        await asyncio.gather(*(task() for _ in range(job["tasks"])))


# --- the parent -----------------------------------------------------------------------------


async def list_users(job: dict[str, Any], limit: int | None) -> list[str]:
    """The ids to work on, listed through the shared budget like any other request."""
    ids: list[str] = []
    async with (
        RedisRateLimiter(job["redis"], key=job["key"]) as limiter,
        ev.Client(
            token=job["token"],
            base_url=job["base_url"],
            limiter=limiter,
            rate_limit_window=job["window"],
        ) as client,
    ):
        async for user in client.users.list(page_size=100):
            ids.append(user.id)
            if limit is not None and len(ids) >= limit:
                break
    return ids


async def show_progress(job: dict[str, Any], total: int, done: Any, failed: Any) -> None:
    """Every second: work done and the shared budget as Redis holds it."""
    start = time.monotonic()
    async with RedisRateLimiter(job["redis"], key=job["key"], window=job["window"]) as monitor:
        while True:
            snap = await monitor.snapshot()
            pause = f"  PAUSED {snap.blocked_for:4.1f}s (429)" if snap.blocked_for else ""
            print(
                f"{time.monotonic() - start:6.1f}s  users {done.value:>6}/{total}"
                f"{f' ({failed.value} failed)' if failed.value else ''}  |  budget "
                f"{snap.used:>5}/{snap.limit if snap.limit is not None else '?'} in the window, "
                f"{snap.in_flight:>3} in flight, others ~{snap.others}, "
                f"{snap.waiting_tasks:>3} waiting{pause}",
                flush=True,
            )
            await asyncio.sleep(1.0)


async def run(args: argparse.Namespace, job: dict[str, Any]) -> int:
    ids = await list_users(job, args.users)
    print(f"{len(ids)} users, {args.workers} processes × {args.tasks} tasks, key {job['key']!r}")
    ctx = mp.get_context("spawn")
    done, failed = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [
        ctx.Process(target=worker, args=(i, job, ids[i :: args.workers], done, failed))
        for i in range(args.workers)
    ]
    start = time.monotonic()
    for p in procs:
        p.start()
    progress = asyncio.create_task(show_progress(job, len(ids), done, failed))
    try:
        for p in procs:
            await asyncio.to_thread(p.join)
    finally:
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
    elapsed = time.monotonic() - start
    print(
        f"done: {done.value} users in {elapsed:.1f} s ({done.value / elapsed:.1f}/s), "
        f"{failed.value} failed"
    )
    return 1 if failed.value or any(p.exitcode for p in procs) else 0


async def run_with_fake(args: argparse.Namespace, redis_url: str) -> int:
    from evenergy_async.testing import FakeEvEnergy

    fake = FakeEvEnergy(users=args.users, rate_limit=FAKE_LIMIT, rate_window=FAKE_WINDOW)
    async with fake:
        job = make_job(args, redis_url, fake.base_url, fake.token, FAKE_WINDOW)
        print(f"fake API at {fake.base_url}: {FAKE_LIMIT} requests per {FAKE_WINDOW:g} s")
        code = await run(args, job)
        print(f"the fake answered {fake.stats.statuses.get(200, 0)} × 200, "
              f"{fake.stats.rate_limited} × 429")  # fmt: skip
        return code


def make_job(
    args: argparse.Namespace, redis_url: str, base_url: str, token: str, window: float
) -> dict[str, Any]:
    return {
        "redis": redis_url,
        "key": args.key or fingerprint(token),  # never the token itself
        "base_url": base_url,
        "token": token,
        "window": window,
        "timeout": args.timeout,
        "tasks": args.tasks,
        "action": args.action,
    }


@contextlib.contextmanager
def redis_for(url: str | None) -> Iterator[str]:
    """The given Redis, or a throwaway redis-server (the tests' helper) for the demo."""
    if url:
        yield url
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from redis_server import redis_server

    with redis_server() as started:
        print(f"started redis-server at {started}")
        yield started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fake", action="store_true", help="run against a local FakeEvEnergy")
    parser.add_argument("--redis", help="redis:// URL (with --fake: default a throwaway server)")
    parser.add_argument("--key", help="the budget's Redis key (default: fingerprint of the token)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=8, help="tasks per worker process")
    parser.add_argument("--users", type=int, default=400, help="how many users (fake: seeded)")
    parser.add_argument("--action", choices=("resolve", "update"), default="resolve")
    parser.add_argument("--timeout", type=float, default=30.0, help="request timeout, seconds")
    parser.add_argument("--base-url", default=ev.DEFAULT_BASE_URL)
    parser.add_argument("--rate-limit-window", type=float, default=3600.0)
    args = parser.parse_args()
    if args.fake:
        with redis_for(args.redis) as url:
            return asyncio.run(run_with_fake(args, url))
    token = os.environ.get("EVENERGY_TOKEN")
    if not token or not args.redis:
        parser.error("without --fake, set EVENERGY_TOKEN and give --redis")
    job = make_job(args, args.redis, args.base_url, token, args.rate_limit_window)
    return asyncio.run(run(args, job))


if __name__ == "__main__":
    sys.exit(main())
