"""Concurrent single gets: ``client.users.get(id)`` vs raw aiohttp, 64 at a time.

Both contenders fetch the same user ids in the same order with 64 concurrent workers over a
connection pool of the same size (aiohttp's TCPConnector(limit=100), which is what the
client creates), and read ``email`` of each answer; raw aiohttp decodes with orjson.loads
to a dict, the client to its attrs models.  Each measurement opens its own session/client.

    python benchmarks/bench_get.py --requests 3000 --concurrency 64 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from _harness import print_table, run_rounds_multi
from _peers import headers, next_link
from _server import ServerInfo, fake_server

import evenergy_async as ev

CONNECTION_LIMIT = 100  # what evenergy_async's own session uses


async def fetch_ids(server: ServerInfo, count: int) -> list[str]:
    ids: list[str] = []
    url: str | None = f"{server.base_url}/users?page_size=100"
    async with aiohttp.ClientSession(headers=headers(server.token)) as session:
        while url is not None and len(ids) < count:
            async with session.get(url) as resp:
                resp.raise_for_status()
                ids += [u["id"] for u in orjson.loads(await resp.read())]
                url = next_link(resp.headers.get("Link"))
    return ids[:count]


async def _workers(ids: list[str], concurrency: int, get: Callable[[str], Awaitable[str]]) -> int:
    source = iter(ids)
    done = 0

    async def worker() -> None:
        nonlocal done
        for user_id in source:  # shared iterator: each id is fetched once
            email = await get(user_id)
            assert isinstance(email, str)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def raw(server: ServerInfo, ids: list[str], concurrency: int) -> int:
    connector = aiohttp.TCPConnector(limit=CONNECTION_LIMIT)
    async with aiohttp.ClientSession(connector=connector, headers=headers(server.token)) as s:
        base = server.base_url

        async def get(user_id: str) -> str:
            async with s.get(f"{base}/users/{user_id}") as resp:
                resp.raise_for_status()
                user = orjson.loads(await resp.read())
            return user["email"]  # type: ignore[no-any-return]

        return await _workers(ids, concurrency, get)


async def ours(server: ServerInfo, ids: list[str], concurrency: int) -> int:
    async with ev.Client(token=server.token, base_url=server.base_url) as client:

        async def get(user_id: str) -> str:
            user = await client.users.get(user_id)
            return user.email  # type: ignore[return-value]

        return await _workers(ids, concurrency, get)


def measure(
    fn: Callable[[ServerInfo, list[str], int], Awaitable[int]],
    server: ServerInfo,
    ids: list[str],
    concurrency: int,
) -> dict[str, float]:
    """gets/s (wall clock) and the client process's CPU time per get."""
    cpu = time.process_time()
    start = time.perf_counter()
    done = asyncio.run(fn(server, ids, concurrency))  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    assert done == len(ids), (done, len(ids))
    return {"gets/s": done / elapsed, "cpu": cpu / done * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--distinct", type=int, default=1000, help="distinct user ids")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    with fake_server(max(args.distinct, 1000)) as server:
        distinct = asyncio.run(fetch_ids(server, args.distinct))
        ids = list(itertools.islice(itertools.cycle(distinct), args.requests))
        contenders = {"raw aiohttp + orjson": raw, "evenergy_async users.get": ours}
        results = run_rounds_multi(
            [
                (name, lambda fn=fn: measure(fn, server, ids, args.concurrency))
                for name, fn in contenders.items()
            ],
            args.rounds,
            args.warmup,
            fmt="{:,.0f}",
        )
    print_table(
        f"{args.requests:,} GET /users/{{id}}, {args.concurrency} concurrent "
        f"(gets/s, higher is better)",
        results["gets/s"],
        unit="gets/s",
        floor="raw aiohttp + orjson",
        ratio_label="speed vs raw aiohttp",
        fmt="{:,.0f}",
    )
    print_table(
        "The same runs: client process CPU time per get (µs, lower is better)",
        results["cpu"],
        unit="CPU µs/get",
        floor="raw aiohttp + orjson",
        ratio_label="CPU vs raw aiohttp",
        fmt="{:.0f}",
        delta=True,
        notes=[
            "When the fake (one process, one core) is the bottleneck, gets/s of both "
            "contenders converge; the client's CPU per get shows its own cost regardless."
        ],
    )


if __name__ == "__main__":
    main()
