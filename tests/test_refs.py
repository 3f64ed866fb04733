"""Lazy references and related resources: request economy, caching, origin safety."""

from __future__ import annotations

import asyncio

import pytest
from polling import until

import evenergy_async as ev
from evenergy_async.testing import FakeEvEnergy

TARIFF = "/v2/tariffs/{tariff_id}"
SUPPLIER = "/v2/suppliers/{supplier_id}"
SITE = "/v2/evse_sites/{evse_site_id}"
# Enough users for every tariff to be someone's and several pages; each page of 100 users
# costs about a second of spec validation, so no more.
USERS = 200


@pytest.fixture
async def fake(spec_check):
    async with FakeEvEnergy(users=USERS, tariffs=20, seed=3, on_exchange=spec_check) as server:
        yield server


def client_for(fake: FakeEvEnergy, **kwargs: object) -> ev.Client:
    return ev.Client(token=fake.token, base_url=fake.base_url, **kwargs)  # type: ignore[arg-type]


async def test_stream_with_resolve_costs_one_request_per_distinct_tariff(fake):
    async with client_for(fake) as client:
        count = 0
        async for user in client.users.list(page_size=100, resolve=("default_location.tariff",)):
            count += 1
            loc = user.default_location
            assert isinstance(loc, ev.Location)
            if isinstance(loc.tariff, ev.Ref):
                assert loc.tariff.resolved
                assert isinstance(loc.tariff.value, ev.Tariff)
                assert loc.tariff.value.url == loc.tariff.url
        assert count == USERS
    assert fake.stats.count("GET", "/v2/users") == USERS // 100
    assert fake.stats.count("GET", TARIFF) <= 20


async def test_nested_resolve_reaches_the_supplier(fake):
    async with client_for(fake) as client:
        paths = ("default_location.tariff.supplier", "default_location.evse_site")
        users = [u async for u in client.users.list(page_size=100, resolve=paths)]
    with_tariff = [
        u
        for u in users
        if isinstance(u.default_location, ev.Location)
        and isinstance(u.default_location.tariff, ev.Ref)
    ]
    assert with_tariff
    for user in with_tariff:
        tariff = user.default_location.tariff.value  # type: ignore[union-attr]
        assert tariff.supplier.resolved
        assert isinstance(tariff.supplier.value, ev.Supplier)
    sites = [
        u.default_location.evse_site
        for u in users  # type: ignore[union-attr]
        if isinstance(u.default_location.evse_site, ev.Ref)
    ]  # type: ignore[union-attr]
    assert sites and all(isinstance(s.value, ev.EVSESite) for s in sites)
    distinct_suppliers = {u.default_location.tariff.value.supplier.url for u in with_tariff}  # type: ignore[union-attr]
    assert fake.stats.count("GET", SUPPLIER) == len(distinct_suppliers)


async def test_concurrent_resolves_share_one_request_per_url(fake):
    async with client_for(fake) as reader:
        users = [u async for u in reader.users.list(page_size=100)]
    refs = [
        u.default_location.tariff
        for u in users  # type: ignore[union-attr]
        if isinstance(u.default_location, ev.Location)
        and isinstance(u.default_location.tariff, ev.Ref)
    ]
    distinct = {r.url for r in refs}
    fake.stats.reset()
    async with client_for(fake) as client:
        values = await asyncio.gather(*(client.resolve(ref.url) for ref in refs))
    assert fake.stats.count("GET", TARIFF) == len(distinct) == 20
    assert all(isinstance(v, ev.Tariff) for v in values)


async def test_expand_costs_no_tariff_request(fake):
    async with client_for(fake) as client:
        users = [
            u async for u in client.users.list(page_size=100, expand=("default_location.tariff",))
        ]
        refs = [
            u.default_location.tariff
            for u in users  # type: ignore[union-attr]
            if isinstance(u.default_location.tariff, ev.Ref)
        ]  # type: ignore[union-attr]
        assert refs and all(r.resolved for r in refs)
        # the expansions primed the cache: resolving costs nothing more
        await asyncio.gather(*(client.resolve(r.url) for r in refs[:50]))
    assert fake.stats.count("GET", "/v2/users") == USERS // 100
    assert fake.stats.count("GET", TARIFF) == 0


async def test_ref_resolves_through_its_client_and_caches(fake):
    async with client_for(fake) as client:
        me = await client.users.get("me")
        tariff_ref = me.default_location.tariff  # type: ignore[union-attr]
        assert isinstance(tariff_ref, ev.Ref) and not tariff_ref.resolved
        with pytest.raises(ev.EvEnergyError):
            _ = tariff_ref.value
        tariff = await tariff_ref.resolve()
        assert tariff_ref.resolved and tariff_ref.value is tariff
        assert tariff_ref.id == tariff.id
        assert await client.resolve(tariff_ref.url) is tariff  # cached
        assert fake.stats.count("GET", TARIFF) == 1


async def test_a_resolved_value_expires_after_the_cache_ttl(fake):
    async with client_for(fake, cache_ttl=0.05) as client:
        me = await client.users.get("me")
        url = me.default_location.tariff.url  # type: ignore[union-attr]
        await client.resolve(url)
        await asyncio.sleep(0.1)  # past the TTL: sleeping longer on a slow machine changes nothing
        await client.resolve(url)
        assert fake.stats.count("GET", TARIFF) == 2


async def test_errors_are_not_cached_and_cancellation_leaves_others_waiting(fake):
    async with client_for(fake, max_retries=0) as client:
        me = await client.users.get("me")
        url = me.default_location.tariff.url  # type: ignore[union-attr]
        fake.faults.fail_next(1, status=500)
        with pytest.raises(ev.ServerError):
            await client.resolve(url)
        fake.faults.latency = 0.2
        waiters = [asyncio.create_task(client.resolve(url)) for _ in range(5)]
        await until(lambda: fake.stats.count("GET", TARIFF) == 2)  # sent, answer held back
        waiters[0].cancel()
        results = await asyncio.gather(*waiters[1:])
        assert all(isinstance(r, ev.Tariff) for r in results)
        assert fake.stats.count("GET", TARIFF) == 2  # the failure, then one shared fetch


async def test_another_origin_is_refused_unsent(fake):
    async with client_for(fake) as client:
        before = fake.stats.total
        for url in (
            "https://evil.example/v2/tariffs/tari" + "0" * 26,
            fake.base_url.replace("127.0.0.1", "localhost") + "/tariffs/x",
        ):
            with pytest.raises(ev.EvEnergyError):
                await client.resolve(url)
            with pytest.raises(ev.EvEnergyError):
                await client.resolve(ev.Ref(url))
        assert fake.stats.total == before


async def test_unbound_ref_explains_itself():
    ref: ev.Ref[ev.Tariff] = ev.Ref("https://api.ev.energy/v2/tariffs/tari" + "0" * 26)
    with pytest.raises(ev.EvEnergyError, match=r"client\.resolve"):
        await ref.resolve()


async def test_tariff_supplier_and_site_collections(fake):
    async with client_for(fake) as client:
        tariffs = [t async for t in client.tariffs.list(page_size=7)]
        assert len(tariffs) == 20
        assert [t.name for t in tariffs] == sorted(t.name for t in tariffs)
        detail = await client.tariffs.get(tariffs[0].id, expand=("supplier", "prices"))
        assert detail.supplier.resolved
        assert isinstance(detail.prices, tuple)
        supplier_id = detail.supplier.id
        only = [t async for t in client.tariffs.list(supplier_id=supplier_id)]
        assert only and all(t.supplier.id == supplier_id for t in only)
        by_model = [t async for t in client.tariffs.list(supplier=detail.supplier.value)]
        by_ref = [t async for t in client.tariffs.list(supplier=detail.supplier)]
        assert by_model == by_ref == only
        with pytest.raises(ev.InvalidRequest):
            await client.tariffs.list(supplier=supplier_id, supplier_id=supplier_id).__anext__()
        with pytest.raises(ev.InvalidRequest):
            await client.tariffs.list(supplier="tari" + "0" * 26).__anext__()
        valid = [t async for t in client.tariffs.list(valid=True)]
        assert all(t.valid_until is None or t.valid_until >= t.valid_from for t in valid)  # type: ignore[operator]
        suppliers = [s async for s in client.suppliers.list(page_size=2)]
        assert suppliers and await client.suppliers.get(suppliers[0].id) == suppliers[0]
        sites = [s async for s in client.evse_sites.list()]
        assert sites and (await client.evse_sites.get(sites[0].id)).id == sites[0].id
        with pytest.raises(ev.InvalidRequest):
            await client.tariffs.get("supl" + "0" * 26)
        with pytest.raises(ev.InvalidRequest):
            await client.suppliers.get("nope")
        with pytest.raises(ev.NotFound):
            await client.tariffs.get("tari" + "Z" * 26)


async def test_last_waiter_leaving_cancels_the_fetch(fake):
    async with client_for(fake) as client:
        me = await client.users.get("me")
        url = me.default_location.tariff.url  # type: ignore[union-attr]
        fake.faults.latency = 0.2
        task = asyncio.create_task(client.resolve(url))
        await until(lambda: fake.stats.count("GET", TARIFF) == 1)  # sent, answer held back
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert not client._shared.resolving
        assert client.limiter.state.in_flight() == 0  # type: ignore[attr-defined]
        fake.faults.latency = 0
        assert isinstance(await client.resolve(url), ev.Tariff)  # fetched afresh


async def test_views_acting_as_different_users_do_not_share_resolved_values(fake):
    async with client_for(fake) as client:
        users = (await client.users.pages(page_size=3).__anext__()).items
        url = next(
            u.default_location.tariff.url  # type: ignore[union-attr]
            for u in users
            if isinstance(u.default_location.tariff, ev.Ref)  # type: ignore[union-attr]
        )
        alice, bob = client.as_user(users[0].id), client.as_user(users[1].id)
        await alice.resolve(url)
        await alice.resolve(url)
        await bob.resolve(url)
        assert fake.stats.count("GET", TARIFF) == 2  # one each, cached per view


async def test_the_devices_a_user_links_resolve(fake):
    """Vehicles and EVSEs have no model yet: they resolve to the JSON the fake serves."""
    async with client_for(fake) as client:
        page = await client.users.pages(page_size=20).__anext__()
        user = next(u for u in page.items if u.vehicles and u.evses)
        vehicle = await client.resolve(user.vehicles[0])
        evse = await user.evses[0].resolve()
        assert vehicle["url"] == user.vehicles[0].url and vehicle["user"] == user.url
        assert evse["id"] == user.evses[0].id and evse["user"] == user.url
        assert await client.resolve(user.vehicles[0].url) is vehicle  # cached
    assert fake.stats.count("GET", "/v2/vehicles/{vehicle_id}") == 1
    assert fake.stats.count("GET", "/v2/evses/{evse_id}") == 1
