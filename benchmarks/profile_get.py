"""Where the client's CPU goes on ``client.users.get(id)``, taken apart by substitution.

Same workload as bench_get.py (64 concurrent workers, same ids), client CPU µs per get
(time.process_time of the client process; the fake runs in its own process):

- raw aiohttp + orjson (session-level headers), as in bench_get.py
- raw aiohttp, headers passed per request and a URL object built with ``/`` (as the client does)
- evenergy_async ``users.get``
- evenergy_async with a no-op rate limiter (``limiter=``): what the limiter costs
- evenergy_async with decoding swapped for plain dicts (msgspec.json.decode): what decoding
  a User costs

With ``--steps``, the library's own synchronous steps of one get are timed one by one
(no network; best of 5 with timeit), on a real response of the fake.

    python benchmarks/profile_get.py --requests 3000 --rounds 7 --steps
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import timeit
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
import orjson
from _harness import print_table, run_rounds_multi
from _peers import headers
from _server import ServerInfo, fake_server
from bench_get import CONNECTION_LIMIT, _workers, fetch_ids, measure, ours, raw
from yarl import URL

import evenergy_async as ev
from evenergy_async import LimiterStats, _convert


class NoLimiter:
    """Grants every request at once and learns nothing."""

    window = 3600.0

    def __init__(self) -> None:
        self.stats = LimiterStats()

    def configure(self, *, window: float) -> None:
        self.window = window

    async def acquire(self, max_wait: float | None = None) -> int:
        return 0

    async def record(self, ticket: int, rate: Any, status: int) -> None:
        return None

    def release(self, ticket: int, *, sent: bool) -> None:
        return None


async def raw_like_client(server: ServerInfo, ids: list[str], concurrency: int) -> int:
    connector = aiohttp.TCPConnector(limit=CONNECTION_LIMIT)
    sent = {**headers(server.token), "User-Agent": "evenergy-async/0.1.0"}
    timeout = aiohttp.ClientTimeout(total=30.0)
    async with aiohttp.ClientSession(connector=connector) as s:
        users = URL(server.base_url) / "users"

        async def get(user_id: str) -> str:
            async with s.get(
                users / user_id, headers=dict(sent), timeout=timeout, allow_redirects=False
            ) as resp:
                resp.raise_for_status()
                user = orjson.loads(await resp.read())
            return user["email"]  # type: ignore[no-any-return]

        return await _workers(ids, concurrency, get)


async def ours_no_limiter(server: ServerInfo, ids: list[str], concurrency: int) -> int:
    async with ev.Client(
        token=server.token, base_url=server.base_url, limiter=NoLimiter()
    ) as client:

        async def get(user_id: str) -> str:
            user = await client.users.get(user_id)
            return user.email  # type: ignore[return-value]

        return await _workers(ids, concurrency, get)


@contextlib.contextmanager
def dict_decode() -> Iterator[None]:
    original = _convert.Codec.decode
    _convert.Codec.decode = lambda self, body, cls: (msgspec.json.decode(body), [])  # type: ignore[method-assign]
    try:
        yield
    finally:
        _convert.Codec.decode = original  # type: ignore[method-assign]


async def ours_no_decode(server: ServerInfo, ids: list[str], concurrency: int) -> int:
    with dict_decode():
        async with ev.Client(token=server.token, base_url=server.base_url) as client:

            async def get(user_id: str) -> str:
                user: Any = await client.users.get(user_id)
                return user["email"]  # type: ignore[no-any-return]

            return await _workers(ids, concurrency, get)


async def _one_response(server: ServerInfo, user_id: str) -> tuple[Any, bytes, Any]:
    async with (
        aiohttp.ClientSession(headers=headers(server.token)) as session,
        session.get(f"{server.base_url}/users/{user_id}") as resp,
    ):
        return resp.headers, await resp.read(), resp.url


def steps(server: ServerInfo, user_id: str) -> None:
    """µs per call of each synchronous step the client takes for one get."""
    from evenergy_async import _convert, _sansio, _validate
    from evenergy_async._ratelimit import WindowState
    from evenergy_async._session import Response, merge_params
    from evenergy_async.models import User

    response_headers, body, url = asyncio.run(_one_response(server, user_id))
    client = ev.Client(token=server.token, base_url=server.base_url)
    users = client.users
    codec = _convert.Codec(client._ctx)
    session = client._session
    rate = _sansio.rate_limit_from_headers(response_headers, 200, time.time())
    state = WindowState(3600.0)
    state.on_response(state.try_acquire(0.0), 0.0, rate, 200)  # learn the budget
    for _ in range(63):  # 63 others in flight, as with 64 workers
        state.try_acquire(1.0)

    def limiter_round() -> None:
        ticket = state.try_acquire(2.0)
        state.on_response(ticket, 2.0, rate, 200)  # type: ignore[arg-type]

    user_url = users._url(user_id)
    table: list[tuple[str, Any]] = [
        ("check_id", lambda: _validate.check_id(user_id, _validate.USER_ID, "user_id", me=True)),
        ("check_expand(())", lambda: _validate.check_expand((), _validate.USER_EXPANSIONS)),
        ("Collection._url (one id)", lambda: users._url(user_id)),
        ("merge_params(url, {'expand': ()})", lambda: merge_params(user_url, {"expand": ()})),
        ("Session.check_origin", lambda: session.check_origin(user_url, "request to")),
        ("request_headers", lambda: _sansio.request_headers(server.token, None)),
        ("limiter state: try_acquire + on_response (64 in flight)", limiter_round),
        (
            "rate_limit_from_headers",
            lambda: _sansio.rate_limit_from_headers(response_headers, 200, 0.0),
        ),
        ("Response(...) (attrs frozen)", lambda: Response(200, response_headers, body, url)),
        ("decode_json (msgspec, to dicts)", lambda: _sansio.decode_json(body)),
        (
            "Codec.decode(body, User) (the collection's codec, as users.get)",
            lambda: codec.decode(body, User),
        ),
        ("context.remember([])", lambda: client._ctx.remember([])),
    ]
    print("\n### Synchronous steps of one `users.get` (µs per call, best of 5)\n")
    print("| step | µs |")
    print("|---|---:|")
    total = 0.0
    for label, fn in table:
        number = 20_000
        best = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6
        total += best
        print(f"| {label} | {best:.2f} |")
    print(f"| **sum** | **{total:.2f}** |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", action="store_true", help="also time the sync steps")
    args = parser.parse_args()
    variants = {
        "raw aiohttp + orjson": raw,
        "raw, per-request headers + yarl URL": raw_like_client,
        "evenergy_async users.get": ours,
        "evenergy_async, no-op limiter": ours_no_limiter,
        "evenergy_async, decode → dict": ours_no_decode,
    }
    with fake_server(1000) as server:
        distinct = asyncio.run(fetch_ids(server, 1000))
        ids = (distinct * (args.requests // len(distinct) + 1))[: args.requests]
        results = run_rounds_multi(
            [
                (name, lambda fn=fn: measure(fn, server, ids, args.concurrency))
                for name, fn in variants.items()
            ],
            args.rounds,
            args.warmup,
            fmt="{:,.0f}",
        )
        if args.steps:
            steps(server, distinct[0])
    print_table(
        f"{args.requests:,} GET /users/{{id}}, {args.concurrency} concurrent, taken apart: "
        "client CPU µs per get (lower is better)",
        results["cpu"],
        unit="CPU µs/get",
        floor="raw aiohttp + orjson",
        ratio_label="CPU vs raw",
        fmt="{:.0f}",
        delta=True,
    )
    print_table(
        "The same runs: gets/s (the fake is usually the bottleneck here)",
        results["gets/s"],
        unit="gets/s",
        floor="raw aiohttp + orjson",
        ratio_label="speed vs raw",
        fmt="{:,.0f}",
    )


if __name__ == "__main__":
    main()
