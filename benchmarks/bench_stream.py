"""Streaming users: users/s of `client.users.list()` against raw aiohttp and pydantic peers.

Every contender streams the same users from the same fake server (in its own process), page
by page along ``Link: rel="next"``, and its consumer reads ``email`` and
``default_location.tariff`` of every user and counts them:

- floor:              raw aiohttp + orjson.loads to plain dicts, one page at a time
- evenergy_async:     ``client.users.list(page_size=...)`` yielding attrs models
- httpx + pydantic:   httpx.AsyncClient + ``TypeAdapter(list[User]).validate_json``
- aiohttp + pydantic: raw aiohttp + ``TypeAdapter(list[User]).validate_json``
- aiohttp + msgspec Structs: raw aiohttp + ``msgspec.json.Decoder(list[User])`` into
                      ``msgspec.Struct`` classes, relations as plain strings: the compiled
                      ceiling (Structs are not the public attrs models)

Each measurement opens its own session/client (included in the time) on a fresh event loop.

    python benchmarks/bench_stream.py --users 100000 --rounds 5
    python benchmarks/bench_stream.py --only evenergy_async --rounds 1 --warmup 0   # to profile
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import httpx
import orjson
from _harness import print_table, run_rounds_multi
from _peers import headers, ms_users, next_link, pyd_users
from _server import ServerInfo, fake_server

import evenergy_async as ev

Stream = Callable[[ServerInfo, int, int], Coroutine[Any, Any, int]]


async def floor(server: ServerInfo, users: int, page_size: int) -> int:
    count = 0
    email = tariff = None
    url: str | None = f"{server.base_url}/users?page_size={page_size}"
    async with aiohttp.ClientSession(headers=headers(server.token)) as session:
        while url is not None:
            async with session.get(url) as resp:
                resp.raise_for_status()
                body = await resp.read()
                link = resp.headers.get("Link")
            for u in orjson.loads(body):
                email = u["email"]
                tariff = u["default_location"]["tariff"]
                count += 1
            url = next_link(link)
    assert isinstance(email, str) and tariff is not None
    return count


async def ours(server: ServerInfo, users: int, page_size: int) -> int:
    count = 0
    email = tariff = None
    async with ev.Client(token=server.token, base_url=server.base_url) as client:
        async for user in client.users.list(page_size=page_size):
            email = user.email
            tariff = user.default_location.tariff  # type: ignore[union-attr]
            count += 1
    assert isinstance(email, str) and tariff is not None
    return count


async def httpx_pydantic(server: ServerInfo, users: int, page_size: int) -> int:
    count = 0
    email = tariff = None
    url: str | None = f"{server.base_url}/users"
    params: dict[str, Any] | None = {"page_size": page_size}
    async with httpx.AsyncClient(headers=headers(server.token), timeout=30.0) as client:
        while url is not None:
            resp = await client.get(url, params=params)
            resp.raise_for_status()
            for u in pyd_users.validate_json(resp.content):
                email = u.email
                tariff = u.default_location.tariff  # type: ignore[union-attr]
                count += 1
            params = None
            url = resp.links.get("next", {}).get("url")
            if url == "about:blank":
                url = None
    assert isinstance(email, str) and tariff is not None
    return count


def aiohttp_typed(decode_page: Callable[[bytes], Any]) -> Stream:
    """Raw aiohttp, one page at a time along `Link`, each page decoded by `decode_page`."""

    async def stream(server: ServerInfo, users: int, page_size: int) -> int:
        count = 0
        email = tariff = None
        url: str | None = f"{server.base_url}/users?page_size={page_size}"
        async with aiohttp.ClientSession(headers=headers(server.token)) as session:
            while url is not None:
                async with session.get(url) as resp:
                    resp.raise_for_status()
                    body = await resp.read()
                    link = resp.headers.get("Link")
                for u in decode_page(body):
                    email = u.email
                    tariff = u.default_location.tariff
                    count += 1
                url = next_link(link)
        assert isinstance(email, str) and tariff is not None
        return count

    return stream


CONTENDERS: dict[str, Stream] = {
    "floor: aiohttp + orjson dicts": floor,
    "evenergy_async (attrs)": ours,
    "httpx + pydantic v2": httpx_pydantic,
    "aiohttp + pydantic v2": aiohttp_typed(pyd_users.validate_json),
    "aiohttp + msgspec Structs (ceiling)": aiohttp_typed(ms_users.decode),
}
FLOOR = "floor: aiohttp + orjson dicts"


def measure(stream: Stream, server: ServerInfo, users: int, page_size: int) -> dict[str, float]:
    """users/s (wall clock) and the client process's CPU time per user."""
    cpu = time.process_time()
    start = time.perf_counter()
    count = asyncio.run(stream(server, users, page_size))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if count != users:
        raise AssertionError(f"{stream.__name__} streamed {count} users, expected {users}")
    return {"users/s": count / elapsed, "cpu": cpu / count * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument(
        "--only", action="append", default=None, help="run only contenders whose name has this"
    )
    args = parser.parse_args()
    chosen = {
        name: fn
        for name, fn in CONTENDERS.items()
        if args.only is None or any(part in name for part in args.only)
    }
    pages = -(-args.users // args.page_size)
    with fake_server(args.users, page_cache=pages + 16) as server:
        results = run_rounds_multi(
            [
                (name, lambda fn=fn: measure(fn, server, args.users, args.page_size))
                for name, fn in chosen.items()
            ],
            args.rounds,
            args.warmup,
            fmt="{:,.0f}",
        )
    floor_name = FLOOR if FLOOR in chosen else None
    print_table(
        f"Streaming {args.users:,} users, page_size={args.page_size} (users/s, higher is better)",
        results["users/s"],
        unit="users/s",
        floor=floor_name,
        ratio_label="speed vs floor",
        fmt="{:,.0f}",
    )
    print_table(
        "The same runs: client process CPU time per user (µs, lower is better)",
        results["cpu"],
        unit="CPU µs/user",
        floor=floor_name,
        ratio_label="CPU vs floor",
        fmt="{:.2f}",
        delta=True,
        notes=[
            "The fake runs in its own process with a page cache holding every page, so after "
            "the warm-up round it serves pre-serialized bodies.  evenergy_async requests the "
            "next page before decoding the current one (one page ahead); the others fetch one "
            "page at a time, so their wall time also includes waiting for the fake.  CPU time "
            "is the client process's own (time.process_time), whatever the fake does."
        ],
    )


if __name__ == "__main__":
    main()
