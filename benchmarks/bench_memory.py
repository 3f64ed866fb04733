"""Peak RSS growth of a client process streaming 1 000 000 users vs 10 000 users.

Each measurement is a fresh client process (so one run's high-water mark cannot hide in
another's): it imports the library, creates the client, opens its HTTP session, and takes
the baseline; it then streams every user with ``client.users.list(page_size=100)``, reading
``email`` and ``default_location.tariff`` of each and keeping none.  Growth is the peak RSS
(``ru_maxrss``) at the end minus the peak at the baseline.  Streaming must not grow with N:
the two growths should be within a few MB of each other.

    python benchmarks/bench_memory.py --small 10000 --large 1000000
    python benchmarks/bench_memory.py --with-floor     # raw aiohttp + orjson, for reference
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _server import fake_server

MB = 1024.0  # ru_maxrss is in KiB on Linux


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _child_ours(base_url: str, token: str, users: int, page_size: int) -> dict[str, Any]:
    import evenergy_async as ev

    async with ev.Client(token=token, base_url=base_url) as client:
        client._session.http  # noqa: B018 (open the lazily created aiohttp session)
        baseline = _peak_kib()
        count = 0
        email = tariff = None
        start = time.perf_counter()
        async for user in client.users.list(page_size=page_size):
            email = user.email
            tariff = user.default_location.tariff  # type: ignore[union-attr]
            count += 1
        seconds = time.perf_counter() - start
    assert isinstance(email, str) and tariff is not None
    return {"count": count, "baseline": baseline, "peak": _peak_kib(), "seconds": seconds}


async def _child_floor(base_url: str, token: str, users: int, page_size: int) -> dict[str, Any]:
    import aiohttp
    import orjson
    from _peers import headers, next_link

    async with aiohttp.ClientSession(headers=headers(token)) as session:
        baseline = _peak_kib()
        count = 0
        email = tariff = None
        start = time.perf_counter()
        url: str | None = f"{base_url}/users?page_size={page_size}"
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
        seconds = time.perf_counter() - start
    assert isinstance(email, str) and tariff is not None
    return {"count": count, "baseline": baseline, "peak": _peak_kib(), "seconds": seconds}


def _measure(kind: str, base_url: str, token: str, users: int, page_size: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, base_url, token, str(users), str(page_size)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result["count"] != users:
        raise AssertionError(f"{kind} streamed {result['count']} users, expected {users}")
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, base_url, token, users, page_size = sys.argv[2:7]
        child = _child_ours if kind == "ours" else _child_floor
        result = asyncio.run(child(base_url, token, int(users), int(page_size)))
        print(json.dumps(result))
        return

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--with-floor", action="store_true")
    args = parser.parse_args()
    kinds = ["ours", "floor"] if args.with_floor else ["ours"]
    names = {"ours": "evenergy_async users.list", "floor": "raw aiohttp + orjson dicts"}

    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for number in range(args.rounds):
        for users in (args.small, args.large):
            # A fake holding exactly `users` users: every stream runs to its natural end.
            with fake_server(users) as server:
                for kind in kinds:
                    result = _measure(kind, server.base_url, server.token, users, args.page_size)
                    runs.setdefault((kind, users), []).append(result)
                    print(
                        f"  round {number + 1}/{args.rounds}: {kind} {users:,} users: "
                        f"baseline {result['baseline'] / MB:.1f} MB, "
                        f"peak {result['peak'] / MB:.1f} MB, {result['seconds']:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )

    def growth(kind: str, users: int) -> float:
        return statistics.median((r["peak"] - r["baseline"]) / MB for r in runs[kind, users])

    def median(kind: str, users: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind, users])

    print(f"\n### Peak RSS while streaming (page_size={args.page_size}, fresh process each)\n")
    print(
        "| client | users | baseline peak RSS MB | end peak RSS MB | growth MB | stream s |"
        " growth − growth at small N MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        small = growth(kind, args.small)
        for users in (args.small, args.large):
            print(
                f"| {names[kind]} | {users:,} | {median(kind, users, 'baseline') / MB:.1f} "
                f"| {median(kind, users, 'peak') / MB:.1f} | {growth(kind, users):.1f} "
                f"| {median(kind, users, 'seconds'):.1f} "
                f"| {growth(kind, users) - small:+.1f} |"
            )
    difference = growth("ours", args.large) - growth("ours", args.small)
    verdict = "PASS" if abs(difference) <= 5.0 else "FAIL"
    print(
        f"\nevenergy_async: growth at {args.large:,} users minus growth at {args.small:,} users"
        f" = {difference:+.1f} MB (limit 5 MB): {verdict}"
    )
    print(
        "(the fake renders every page afresh here: stream seconds measure the fake as much as"
        " the client" + (f"; medians of {args.rounds} rounds)" if args.rounds > 1 else ")")
    )


if __name__ == "__main__":
    main()
