"""Where the streaming time goes: the client against the floor, taken apart.

Variants, alternated in rounds like the benchmarks (µs per user, lower is better):

- floor:                   raw aiohttp + orjson dicts (as in bench_stream.py)
- evenergy_async:          ``client.users.list()`` (as in bench_stream.py)
- evenergy_async, no decode: the same with ``Codec.decode_list`` swapped for one that hands
                           back plain dicts: what the session, limiter, Link handling and
                           async generators cost on their own
- evenergy_async, vehicles and evses as str: the same, decoding into a `User` whose
                           `vehicles` and `evses` are URL strings rather than Refs (a
                           contract change measured, not made)
- ... gc off:              floor and client with the cyclic garbage collector disabled

and for each, the time spent in the garbage collector per user (``gc.callbacks``).  Then,
with ``--decode-breakdown``, the cost of each step of decoding one user, on pre-loaded pages.

    python benchmarks/profile_stream.py --users 100000 --rounds 5 --decode-breakdown
    python benchmarks/profile_stream.py --pyinstrument            # a profile of one stream
    py-spy record -r 500 -o /tmp/ours.svg -- \\
        python benchmarks/bench_stream.py --only evenergy --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import time
import timeit
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from _harness import print_table, run_rounds_multi
from _peers import UrlListUser
from _server import ServerInfo, fake_server
from bench_decode import fetch_bodies
from bench_stream import floor, ours

from evenergy_async import User, _convert


class GCClock:
    """Seconds spent in the cyclic garbage collector while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start

    @contextlib.contextmanager
    def installed(self) -> Iterator[GCClock]:
        gc.callbacks.append(self)
        try:
            yield self
        finally:
            gc.callbacks.remove(self)


@contextlib.contextmanager
def no_decode() -> Iterator[None]:
    """Make the client hand back plain dicts (msgspec.json.decode) instead of models."""
    import msgspec

    original = _convert.Codec.decode_list
    _convert.Codec.decode_list = lambda self, body, cls: (msgspec.json.decode(body), [])  # type: ignore[method-assign]
    try:
        yield
    finally:
        _convert.Codec.decode_list = original  # type: ignore[method-assign]


async def ours_dicts(server: ServerInfo, users: int, page_size: int) -> int:
    import evenergy_async as ev

    count = 0
    email = tariff = None
    with no_decode():
        async with ev.Client(token=server.token, base_url=server.base_url) as client:
            # pages(), since list() reads user.id; it skips one async-generator hop per user
            async for page in client.users.pages(page_size=page_size):
                for user in page.items:
                    email = user["email"]  # type: ignore[index]
                    tariff = user["default_location"]["tariff"]  # type: ignore[index]
                    count += 1
    assert isinstance(email, str) and tariff is not None
    return count


@contextlib.contextmanager
def url_lists() -> Iterator[None]:
    """Make `users.list()` decode into `UrlListUser` (vehicles and evses as URL strings)."""
    from evenergy_async.resources import users

    users.User = UrlListUser  # type: ignore[misc]
    try:
        yield
    finally:
        users.User = User  # type: ignore[misc]


async def ours_url_lists(server: ServerInfo, users: int, page_size: int) -> int:
    with url_lists():
        return await ours(server, users, page_size)


def per_user(stream: Any, server: ServerInfo, users: int, page_size: int, gc_on: bool):
    """Wall µs, client CPU µs and garbage-collector µs, per user."""

    def measure() -> dict[str, float]:
        clock = GCClock()
        if not gc_on:
            gc.disable()
        try:
            with clock.installed():
                cpu = time.process_time()
                start = time.perf_counter()
                count = asyncio.run(stream(server, users, page_size))
                elapsed = time.perf_counter() - start
                cpu = time.process_time() - cpu
        finally:
            gc.enable()
        assert count == users
        return {
            "wall": elapsed / users * 1e6,
            "cpu": cpu / users * 1e6,
            "gc": clock.seconds / users * 1e6,
        }

    return measure


def decode_steps() -> list[tuple[str, Callable[[bytes], object]]]:
    """Decoders of one page body, from dicts to ours, each adding one part of the cost."""
    import msgspec
    from _peers import PlainUser, ms_users

    from evenergy_async import _convert as c
    from evenergy_async.models import Prices
    from evenergy_async.refs import _MISSING, Ref

    codec = c.Codec(None)
    url_lists = c.Codec(None)
    plain = msgspec.json.Decoder(list[PlainUser])
    # The decoder checks a Ref is of its field's class (`ref_to`); Prices takes a plain one.
    constants: dict[Any, Ref[Any]] = {}

    def constant(tp: Any, obj: Any) -> Ref[Any]:
        ref = constants.get(tp)
        if ref is None:
            ref = constants[tp] = (Ref if tp is Prices else tp)("https://x/v2/tariffs/t")
        return ref

    constant_refs = msgspec.json.Decoder(list[User], dec_hook=constant)
    new_refs = msgspec.json.Decoder(
        list[User], dec_hook=lambda tp, obj: (Ref if tp is Prices else tp)(obj, _MISSING, None)
    )
    return [
        ("orjson.loads", orjson.loads),
        ("msgspec.json.decode to dicts", msgspec.json.decode),
        ("msgspec Structs, relations as str", ms_users.decode),
        ("attrs models, relations as str (no hook)", plain.decode),
        ("attrs models, one constant Ref", constant_refs.decode),
        ("attrs models, a new Ref per relation", new_refs.decode),
        (
            "Codec.decode_list, vehicles and evses as str",
            lambda body: url_lists.decode_list(body, UrlListUser),
        ),
        ("Codec.decode_list (one Ref per URL)", lambda body: codec.decode_list(body, User)),
    ]


def decode_breakdown(bodies: list[bytes], repeat: int) -> None:
    """µs per user of decoding a page, and of what it is made of."""
    n = sum(len(orjson.loads(b)) for b in bodies)
    print(f"\n### Decode steps, µs per user ({n:,} users, best of 5 × {repeat})\n")
    print("| step | µs/user |")
    print("|---|---:|")
    for label, decode in decode_steps():

        def run(decode: Callable[[bytes], object] = decode) -> None:
            for body in bodies:
                decode(body)

        best = min(timeit.repeat(run, number=repeat, repeat=5)) / repeat / n * 1e6
        print(f"| {label} | {best:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--decode-breakdown", action="store_true")
    parser.add_argument("--pyinstrument", action="store_true", help="profile one client stream")
    args = parser.parse_args()
    pages = -(-args.users // args.page_size)
    with fake_server(args.users, page_cache=pages + 16) as server:
        if args.pyinstrument:
            from pyinstrument import Profiler

            asyncio.run(ours(server, args.users, args.page_size))  # warm the fake's cache
            profiler = Profiler(interval=0.0005)
            with profiler:
                asyncio.run(ours(server, args.users, args.page_size))
            print(profiler.output_text(unicode=True, color=False, show_all=False))
            return
        variants = {
            "floor: aiohttp + orjson dicts": (floor, True),
            "evenergy_async": (ours, True),
            "evenergy_async, decode → dicts": (ours_dicts, True),
            "evenergy_async, vehicles and evses as str": (ours_url_lists, True),
            "floor, gc off": (floor, False),
            "evenergy_async, gc off": (ours, False),
        }
        results = run_rounds_multi(
            [
                (name, per_user(fn, server, args.users, args.page_size, on))
                for name, (fn, on) in variants.items()
            ],
            args.rounds,
            args.warmup,
            fmt="{:.2f}",
        )
        if args.decode_breakdown:
            bodies = asyncio.run(fetch_bodies(server.base_url, server.token, 20, args.page_size))
    for metric, title in (
        ("wall", "wall-clock µs per user"),
        ("cpu", "client process CPU µs per user"),
        ("gc", "µs per user inside the garbage collector (gc.callbacks)"),
    ):
        print_table(
            f"Streaming {args.users:,} users taken apart: {title} (lower is better)",
            results[metric],
            unit="µs/user",
            floor="floor: aiohttp + orjson dicts" if metric != "gc" else None,
            ratio_label="vs floor",
            fmt="{:.2f}",
            delta=metric != "gc",
        )
    if args.decode_breakdown:
        decode_breakdown(bodies, repeat=5)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
