"""Bulk sync: requests and wall time of `client.users.sync` against the hand-written loop.

A fake with 20 000 users (in process: its request counts are exact); 5 000 records as
``evenergy users export`` writes them: 10 % with a new city, 2 % new users, the rest as on the
server.  Contenders, alternately, each on a fresh fake with the same seed:

- the hand-written loop: ``GET /users?email=`` for every record, then a PATCH of the whole
  object (email and every location field) whether or not anything differs, or a POST;
- ``client.users.sync(records)`` (``lookup="auto"``: one listing here);
- ``client.users.sync(records, lookup="each")``: one look-up per record, writes only what
  differs.

Each runs 8 requests at a time, then runs again on the state it left (a nightly job run
twice).  Requests are the fake's count; the hours at 1000 requests an hour (the API's default
budget) are that count divided by 1000, not a measurement.

    python benchmarks/bench_sync.py [--users 20000 --records 5000 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

import evenergy_async as ev
from evenergy_async.cli import to_api
from evenergy_async.testing import FakeEvEnergy

CONCURRENCY = 8
WRITES = (("PATCH", "/v2/users/{user_id}"), ("POST", "/v2/users"))
Run = Callable[[ev.Client, list[dict[str, Any]]], Awaitable[None]]


def build_records(exported: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """`count` records: 10 % changed (a new city, users with an address), 2 % new."""
    rng = random.Random(seed)
    changed, new = count // 10, count // 50
    with_address = [u for u in exported if u["default_location"].get("address_1")]
    picked = rng.sample(with_address, changed)
    picked_ids = {u["id"] for u in picked}
    same = rng.sample([u for u in exported if u["id"] not in picked_ids], count - changed - new)
    records = [dict(u) for u in same]
    for user in picked:
        location = {**user["default_location"], "city": user["default_location"]["city"] + "ton"}
        records.append({**user, "default_location": location})
    for i in range(new):
        location = {
            "address_1": f"{i} Park Row",
            "city": "Leeds",
            "postal_code": "LS1 5HD",
            "country_code": "GB",
        }
        records.append({"email": f"bench.new{i}@example.com", "default_location": location})
    rng.shuffle(records)
    return records


async def hand_loop(client: ev.Client, records: list[dict[str, Any]]) -> None:
    """What a sync job looks like without `sync`: look every user up, PATCH whole objects."""
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(record: dict[str, Any]) -> None:
        async with semaphore:
            location = record["default_location"]
            fields = {k: v for k, v in location.items() if not k.startswith("current_")}
            fields["coordinates"] = fields.get("coordinates") and ev.LatLong(
                **fields["coordinates"]
            )
            for name in ("tariff", "evse_site"):
                fields[name] = fields.get(name) and ev.Ref(fields[name])
            wanted = ev.Location(**fields)
            found = [u async for u in client.users.list(email=record["email"], page_size=1)]
            if found:
                await client.users.update(
                    found[0].id, email=record["email"], default_location=wanted
                )
            else:
                await client.users.create(email=record["email"], default_location=wanted)

    await asyncio.gather(*(one(r) for r in records))


def with_sync(**options: Any) -> Run:
    async def run(client: ev.Client, records: list[dict[str, Any]]) -> None:
        actions: Counter[str] = Counter()
        async for outcome in client.users.sync(records, concurrency=CONCURRENCY, **options):
            actions[outcome.action] += 1
        assert actions["failed"] == 0, actions

    return run


async def measure(
    run: Run, users: int, records: list[dict[str, Any]], origin: str
) -> dict[str, float]:
    async with (
        FakeEvEnergy(users=users, rate_limit=10**9, seed=0) as fake,
        ev.Client(token=fake.token, base_url=fake.base_url) as client,
    ):
        # The records name the fake's tariffs by URL: point them at this fake's port.
        here = orjson.loads(orjson.dumps(records).replace(origin.encode(), fake.origin.encode()))
        result: dict[str, float] = {}
        for label in ("first run", "run again"):
            fake.stats.reset()
            start = time.perf_counter()
            await run(client, here)
            result[f"{label} s"] = time.perf_counter() - start
            result[f"{label} requests"] = fake.stats.total
            result[f"{label} writes"] = sum(fake.stats.count(*w) for w in WRITES)
        assert fake.user_count == users + len(records) // 50  # no duplicate
        return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--records", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    async with (
        FakeEvEnergy(users=args.users, rate_limit=10**9, seed=0) as fake,
        ev.Client(token=fake.token, base_url=fake.base_url) as client,
    ):
        exported = [to_api(u) async for u in client.users.list()]
        origin = fake.origin
    records = build_records(exported, args.records, seed=1)

    contenders = {
        "hand-written loop (GET by email, PATCH whole)": hand_loop,
        'users.sync (lookup="auto")': with_sync(),
        'users.sync (lookup="each")': with_sync(lookup="each"),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for number in range(args.rounds):
        for name, run in contenders.items():
            values = await measure(run, args.users, records, origin)
            results[name].append(values)
            print(
                f"  round {number + 1}/{args.rounds} {name}: "
                f"{values['first run requests']:.0f} requests, {values['first run s']:.1f} s",
                flush=True,
            )

    changed, new = args.records // 10, args.records // 50
    print(
        f"\n### Sync {args.records:,} records against {args.users:,} users "
        f"({changed:,} changed, {new:,} new), {CONCURRENCY} requests at a time\n"
    )
    print(
        "| contender | requests | writes | hours at 1000/h | wall s (median, min–max) "
        "| run again: requests | writes | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rounds in results.items():

        def med(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        wall = [r["first run s"] for r in rounds]
        print(
            f"| {name} | {med('first run requests'):,.0f} | {med('first run writes'):,.0f} "
            f"| {med('first run requests') / 1000:.1f} "
            f"| {statistics.median(wall):.1f} ({min(wall):.1f}–{max(wall):.1f}) "
            f"| {med('run again requests'):,.0f} | {med('run again writes'):,.0f} "
            f"| {med('run again s'):.1f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
