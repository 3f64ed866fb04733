"""Request economy of related resources, counted by FakeEvEnergy.

2000 users share 20 tariffs.  Counts the requests the fake served for:

- streaming every user with ``resolve=("default_location.tariff",)``;
- 2000 concurrent ``client.resolve()`` calls on fresh Refs in a fresh client;
- streaming with ``expand=("default_location.tariff",)`` (the server inlines the tariffs).

    python benchmarks/bench_refs.py
"""

from __future__ import annotations

import asyncio
import time

import evenergy_async as ev
from evenergy_async.testing import FakeEvEnergy

USERS = 2000
TARIFFS = 20
PAGES = "GET", "/v2/users"
TARIFF = "GET", "/v2/tariffs/{tariff_id}"


def tariff_of(user: ev.User) -> ev.Ref[ev.Tariff] | None:
    location = user.default_location
    if isinstance(location, ev.Location) and isinstance(location.tariff, ev.Ref):
        return location.tariff
    return None


async def main() -> None:
    rows: list[tuple[str, int, int, str, float]] = []
    async with FakeEvEnergy(users=USERS, tariffs=TARIFFS) as fake:
        async with ev.Client(token=fake.token, base_url=fake.base_url) as client:
            start = time.perf_counter()
            users = [u async for u in client.users.list(resolve=("default_location.tariff",))]
            seconds = time.perf_counter() - start
            resolved = sum(1 for u in users if (r := tariff_of(u)) is not None and r.resolved)
            rows.append(
                (
                    "stream, resolve=tariff",
                    fake.stats.count(*PAGES),
                    fake.stats.count(*TARIFF),
                    f"{resolved}/{len(users)}",
                    seconds,
                )
            )

        fake.stats.reset()
        refs = [r for u in users if (r := tariff_of(u)) is not None]
        async with ev.Client(token=fake.token, base_url=fake.base_url) as client:
            start = time.perf_counter()
            await asyncio.gather(*(client.resolve(ev.Ref(r.url)) for r in refs))
            seconds = time.perf_counter() - start
            rows.append(
                (
                    f"{len(refs)} concurrent resolve()",
                    fake.stats.count(*PAGES),
                    fake.stats.count(*TARIFF),
                    f"{len(refs)}/{len(refs)}",
                    seconds,
                )
            )

        fake.stats.reset()
        async with ev.Client(token=fake.token, base_url=fake.base_url) as client:
            start = time.perf_counter()
            users = [u async for u in client.users.list(expand=("default_location.tariff",))]
            seconds = time.perf_counter() - start
            resolved = sum(1 for u in users if (r := tariff_of(u)) is not None and r.resolved)
            rows.append(
                (
                    "stream, expand=tariff",
                    fake.stats.count(*PAGES),
                    fake.stats.count(*TARIFF),
                    f"{resolved}/{len(users)}",
                    seconds,
                )
            )

    print(f"{USERS} users, {TARIFFS} tariffs, page_size=100")
    print("| case | page requests | tariff requests | resolved | seconds |")
    print("|---|---|---|---|---|")
    for case, pages, tariffs, resolved, seconds in rows:
        print(f"| {case} | {pages} | {tariffs} | {resolved} | {seconds:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
