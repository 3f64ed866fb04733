"""A fleet of worker processes spending one rate-limit budget through `RedisRateLimiter`.

4 worker processes × 8 tasks call ``client.users.get`` in a loop for 12 s against
FakeEvEnergy (in its own process) limited to 60 requests per rolling 3 s.  A sliding window
admits 60 in each of [0, 3), [3, 6), [6, 9) and [9, 12): 240 in all, the utilisation's
denominator.  Variants:

- ``fleet``: the fleet alone.  Target: >= 90 % utilisation, 0 server 429s.
- ``outside``: another consumer of the same budget spends 20 requests just before the run
  and then tries 2 more every 0.5 s (``fake.consume``, no HTTP).  The fleet learns it from
  ``X-RateLimit-Remaining``; any 429 pauses the whole fleet.  Target: no call fails;
  utilisation counts the fleet's and the outsider's requests.
- ``kill -9``: worker 0 is killed with SIGKILL 4.5 s in.  Target: the others go on, and the
  windows after the kill are as full as before it.

Per-window columns count the requests the fake accepted in each 3 s window of the run.

    python benchmarks/bench_redis_fleet.py [--redis redis://host:6379/0] [--only fleet]

Without ``--redis`` a throwaway ``redis-server`` is started (it must be installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

WINDOW = 3.0
LIMIT = 60
DURATION = 12.0
WORKERS = 4
TASKS = 8
USERS = 200
ALLOWED = LIMIT * math.ceil(DURATION / WINDOW)  # 240
TIMEOUT = 2.0  # the client's request timeout
RESERVATION_TTL = 3.0  # above the timeout: a dead worker's tokens are back within ~2 windows
KILL_AT = 4.5
STARTUP = 4.0  # seconds for the spawned workers to import and connect


# --- the fake, in its own process -----------------------------------------------------------


def fake_process(conn: Connection) -> None:
    asyncio.run(_fake_main(conn))


async def _fake_main(conn: Connection) -> None:
    from evenergy_async.testing import FakeEvEnergy

    answers: list[tuple[float, int | None]] = []
    fake = FakeEvEnergy(
        users=USERS,
        rate_limit=LIMIT,
        rate_window=WINDOW,
        on_exchange=lambda x: answers.append((time.time(), x.status)),
    )
    async with fake:
        conn.send(
            {
                "base_url": fake.base_url,
                "token": fake.token,
                "users": [fake.user_id(i) for i in range(USERS)],
            }
        )
        while True:
            cmd, arg = await asyncio.to_thread(conn.recv)
            if cmd == "consume":
                conn.send(fake.consume(arg))
            elif cmd == "reset":
                fake.reset_rate_limit()
                fake.stats.reset()
                answers.clear()
                conn.send(None)
            elif cmd == "report":
                conn.send({"rate_limited": fake.stats.rate_limited, "answers": list(answers)})
            else:
                conn.send(None)
                return


class Fake:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=fake_process, args=(child,), daemon=True)
        self.proc.start()
        self.info: dict[str, Any] = self.conn.recv()
        self._lock = asyncio.Lock()

    async def call(self, cmd: str, arg: Any = None) -> Any:
        async with self._lock:
            await asyncio.to_thread(self.conn.send, (cmd, arg))
            return await asyncio.to_thread(self.conn.recv)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(("stop", None))
            self.conn.recv()
        self.proc.join(5)


# --- a worker process -----------------------------------------------------------------------


def worker_process(
    index: int, redis_url: str, key: str, info: dict[str, Any], t0: float, results: Any
) -> None:
    results.put(asyncio.run(_worker_main(index, redis_url, key, info, t0)))


async def _worker_main(
    index: int, redis_url: str, key: str, info: dict[str, Any], t0: float
) -> dict[str, Any]:
    import evenergy_async as ev
    from evenergy_async._redis import RedisRateLimiter

    users: list[str] = info["users"]
    ok = failed = 0
    limiter = RedisRateLimiter(redis_url, key=key, reservation_ttl=RESERVATION_TTL)
    async with ev.Client(
        token=info["token"],
        base_url=info["base_url"],
        limiter=limiter,
        rate_limit_window=WINDOW,
        timeout=TIMEOUT,
    ) as client:
        await limiter.ping()
        await asyncio.sleep(max(0.0, t0 - time.time()))
        end = t0 + DURATION

        async def task(i: int) -> None:
            nonlocal ok, failed
            n = index * TASKS + i
            while time.time() < end:
                try:
                    await client.users.get(users[n % len(users)])
                    ok += 1
                except ev.EvEnergyError as exc:
                    failed += 1
                    print(f"worker {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
                n += WORKERS * TASKS

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(task(i) for i in range(TASKS))), end - time.time()
            )
    await limiter.aclose()
    s = limiter.stats
    return {
        "index": index,
        "ok": ok,
        "failed": failed,
        "throttled": s.throttled,
        "waits": s.waits,
    }


# --- one run --------------------------------------------------------------------------------


async def run_variant(
    name: str, ctx: Any, fake: Fake, redis_url: str, *, outside: bool, kill: bool
) -> dict[str, Any]:
    from evenergy_async._redis import RedisRateLimiter

    await fake.call("reset")
    key = f"bench-{name.replace(' ', '')}-{uuid.uuid4().hex[:8]}"
    results = ctx.Queue()
    t0 = time.time() + STARTUP
    procs = [
        ctx.Process(target=worker_process, args=(i, redis_url, key, fake.info, t0, results))
        for i in range(WORKERS)
    ]
    for p in procs:
        p.start()
    outside_counted = 0
    monitor = RedisRateLimiter(redis_url, key=key, window=WINDOW)
    events: list[tuple[float, str]] = []
    if outside:
        events.append((t0 - 0.2, "consume 20"))
        events += [(t0 + 1.0 + 0.5 * k, "consume 2") for k in range(20)]
    if kill:
        events.append((t0 + KILL_AT, "kill"))
    events += [(t0 + s, "show") for s in range(0, int(DURATION) + 1, 3)]
    events.sort()
    for at, what in events:
        await asyncio.sleep(max(0.0, at - time.time()))
        if what.startswith("consume"):
            outside_counted += await fake.call("consume", int(what.split()[1]))
        elif what == "kill":
            assert procs[0].pid is not None
            os.kill(procs[0].pid, signal.SIGKILL)
            print(f"  [{name}] t={at - t0:4.1f}s  kill -9 worker 0", file=sys.stderr)
        else:
            snap = await monitor.snapshot()
            print(
                f"  [{name}] t={at - t0:4.1f}s  used {snap.used}/{snap.limit}  "
                f"in flight {snap.in_flight}  others {snap.others}  "
                f"paused {snap.blocked_for:.1f}s  waiting {snap.waiting_tasks}",
                file=sys.stderr,
            )
    await monitor.aclose()
    for p in procs:
        await asyncio.to_thread(p.join, DURATION + 30)
    workers: list[dict[str, Any]] = []
    while len(workers) < WORKERS - (1 if kill else 0):
        workers.append(await asyncio.to_thread(results.get, True, 10))
    report = await fake.call("report")
    accepted = [t - t0 for t, status in report["answers"] if status == 200]
    per_window = [
        sum(1 for t in accepted if k * WINDOW <= t < (k + 1) * WINDOW)
        for k in range(math.ceil(DURATION / WINDOW))
    ]
    late = sum(1 for t in accepted if t >= DURATION)
    refused_at = [round(t - t0, 2) for t, status in report["answers"] if status == 429]
    if refused_at:
        print(f"  [{name}] 429s at t = {refused_at} s", file=sys.stderr)
    return {
        "variant": name,
        "fleet": len(accepted),
        "outside": outside_counted,
        "util": (len(accepted) + outside_counted) / ALLOWED,
        "server_429": report["rate_limited"],
        "failed": sum(w["failed"] for w in workers),
        "per_window": per_window,
        "late": late,
    }


@contextlib.contextmanager
def redis_url_for(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from redis_server import redis_server

    with redis_server() as url:
        yield url


VARIANTS = {
    "fleet": {"outside": False, "kill": False},
    "outside": {"outside": True, "kill": False},
    "kill -9": {"outside": False, "kill": True},
}


async def main_async(args: argparse.Namespace, redis_url: str) -> None:
    ctx = mp.get_context("spawn")
    fake = Fake(ctx)
    rows = []
    try:
        for name, kw in VARIANTS.items():
            if args.only and args.only != name:
                continue
            print(f"running {name} ...", file=sys.stderr)
            rows.append(await run_variant(name, ctx, fake, redis_url, **kw))
    finally:
        fake.stop()
    print(
        f"\n{WORKERS} processes × {TASKS} tasks, {LIMIT} requests per {WINDOW:g} s rolling "
        f"window, {DURATION:g} s: a sliding window allows {ALLOWED}.\n"
    )
    print("| variant | fleet requests | outside consumer | utilisation | server 429s "
          "| failed calls | per 3 s window |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['fleet']} | {r['outside']} | {r['util']:.1%} "
            f"| {r['server_429']} | {r['failed']} | {' / '.join(map(str, r['per_window']))} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", help="redis:// URL (default: start a throwaway redis-server)")
    parser.add_argument("--only", choices=list(VARIANTS))
    args = parser.parse_args()
    with redis_url_for(args.redis) as url:
        asyncio.run(main_async(args, url))


if __name__ == "__main__":
    main()
