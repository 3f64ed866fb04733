"""The public contract of the design, line by line, against the fake over loopback."""

from __future__ import annotations

import aiohttp
import pytest

import evenergy_async as ev
from evenergy_async.testing import FakeEvEnergy


@pytest.mark.parametrize("with_credentials", [False, True])
async def test_the_contract_as_written(with_credentials: bool, spec_check) -> None:
    async with FakeEvEnergy(users=150, tariffs=20, seed=0, on_exchange=spec_check) as fake:
        auth: dict[str, object] = (
            {
                "credentials": ev.ClientCredentials(
                    fake.client_id, fake.client_secret, token_url=None
                )
            }
            if with_credentials
            else {"token": fake.token}
        )
        async with ev.Client(
            **auth,  # type: ignore[arg-type]
            base_url=fake.base_url,
            acting_user=None,
            timeout=30.0,
            max_retries=5,
            rate_limit_window=3600.0,
            max_rate_limit_wait=None,
            limiter=None,
            session=None,
            deadline=None,
            max_response_bytes=64 * 2**20,
        ) as client:
            seen = [
                u
                async for u in client.users.list(
                    page_size=100, email=None, expand=(), page_after=None
                )
            ]
            assert len(seen) == 150 and all(isinstance(u, ev.User) for u in seen)

            first = await client.users.pages(page_size=100).__anext__()
            assert len(first.items) == 100
            assert first.next_url and first.next_cursor == first.items[-1].id

            me_id = seen[0].id
            user = await (client.as_user(me_id) if with_credentials else client).users.get(
                "me", expand=("default_location.tariff",)
            )
            assert user.id == me_id
            assert isinstance(user.default_location, ev.Location)
            assert user.default_location.tariff.resolved  # type: ignore[union-attr]

            user = await client.users.create(
                email="a@example.com",
                default_location=ev.Location(
                    address_1="1 High St", city="London", postal_code="EC1A 1BB", country_code="GB"
                ),
            )
            user = await client.users.update(user.id, email="b@example.com")
            assert user.email == "b@example.com"
            assert user.default_location.city == "London"  # type: ignore[union-attr]
            user = await client.users.update(user.id, default_location=None)
            assert user.default_location.address_1 is None  # type: ignore[union-attr]

            someone = seen[1]
            tariff_ref = someone.default_location.tariff  # type: ignore[union-attr]
            assert isinstance(tariff_ref, ev.Ref)
            tariff = await tariff_ref.resolve()
            assert await client.resolve(tariff_ref) is tariff
            assert await tariff_ref is tariff  # `await ref` = `await ref.resolve()`
            assert isinstance(tariff, ev.Tariff)

            async for u in client.users.list(resolve=("default_location.tariff",)):
                if isinstance(u.default_location.tariff, ev.Ref):  # type: ignore[union-attr]
                    assert isinstance(u.default_location.tariff.value, ev.Tariff)  # type: ignore[union-attr]

            assert (await client.tariffs.get(tariff.id)).id == tariff.id
            assert (await client.suppliers.get(tariff.supplier.id)).id == tariff.supplier.id
            site = await client.evse_sites.list().__anext__()
            assert (await client.evse_sites.get(site.id)).id == site.id

            assert isinstance(client.rate_limit, ev.RateLimit)
            assert client.rate_limit.limit == 1000

            bob = client.as_user(seen[2].id)
            assert bob.limiter is client.limiter
            assert (await bob.users.get("me")).id == seen[2].id

            records = [
                {"id": seen[3].id, "email": "renamed@example.com"},
                {"email": "new.person@example.com"},
                {"email": "broken"},
            ]
            async for outcome in client.users.sync(
                records, dry_run=False, concurrency=8, shard=None
            ):
                assert isinstance(outcome, ev.SyncOutcome)
                expected = {0: "updated", 1: "created", 2: "failed"}[outcome.index]
                assert outcome.action == expected
                assert outcome.changed == (("email",) if expected != "failed" else ())
                assert (outcome.user is None) == (outcome.error is not None)

            stats = client.stats
            assert stats.requests >= 10 and stats.cache_hits >= 1
        # after the `async with`, every call raises ev.ClientClosed
        with pytest.raises(ev.ClientClosed):
            await client.users.get("me")
        with pytest.raises(ev.ClientClosed):
            await client.resolve(someone.default_location.tariff.url)  # type: ignore[union-attr]


async def test_names_the_contract_promises() -> None:
    for name in ("User", "Location", "LatLong", "Tariff", "Supplier", "EVSESite", "Ref", "Page",
                 "RateLimit", "UNSET", "ClientCredentials", "RedisRateLimiter",
                 "SyncOutcome"):  # fmt: skip
        assert hasattr(ev, name)
    from evenergy_async import errors

    assert issubclass(errors.BadRequest, errors.APIError)
    assert issubclass(errors.InvalidRequest, ValueError)
    for cls in (
        errors.TransportError,
        errors.InvalidResponse,
        errors.InvalidRequest,
        errors.OutcomeUnknown,
        errors.ClientClosed,
    ):
        assert issubclass(cls, errors.EvEnergyError)
        assert getattr(ev, cls.__name__) is cls
    assert issubclass(errors.RateLimiterUnavailable, errors.TransportError)
    for cls in (errors.BadRequest, errors.Unauthorized, errors.Forbidden, errors.NotFound,
                errors.Conflict, errors.RateLimited, errors.ServerError):  # fmt: skip
        assert issubclass(cls, errors.APIError)


async def test_a_caller_owned_session() -> None:
    async with FakeEvEnergy(users=3) as fake, aiohttp.ClientSession() as http:
        async with ev.Client(token=fake.token, base_url=fake.base_url, session=http) as client:
            assert (await client.users.get("me")).id
        assert not http.closed
