"""The Users API end to end: the client against FakeEvEnergy over real loopback sockets."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from polling import until

import evenergy_async as ev
from evenergy_async.testing import FakeEvEnergy


class Clock:
    """The fake's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ADDRESS = dict(address_1="1 High St", city="London", postal_code="EC1A 1BB", country_code="GB")


@pytest.fixture
async def fake(spec_check):
    async with FakeEvEnergy(users=250, tariffs=5, seed=1, on_exchange=spec_check) as server:
        yield server


@pytest.fixture
async def client(fake):
    async with ev.Client(token=fake.token, base_url=fake.base_url) as c:
        yield c


async def test_list_streams_every_user_once_in_order(client, fake):
    ids = [u.id async for u in client.users.list(page_size=40)]
    assert len(ids) == 250
    assert ids == sorted(ids)
    assert len(set(ids)) == 250
    assert fake.stats.count("GET", "/v2/users") == 7  # ceil(250 / 40)


async def test_every_page_keeps_page_size_email_and_expand(client, fake):
    urls: list[str] = []
    async for page in client.users.pages(page_size=30, expand=("default_location.tariff",)):
        if page.next_url:
            urls.append(page.next_url)
        for user in page.items:
            loc = user.default_location
            if isinstance(loc, ev.Location) and isinstance(loc.tariff, ev.Ref):
                assert loc.tariff.resolved
                assert isinstance(loc.tariff.value, ev.Tariff)
    assert urls
    for url in urls:
        assert "page_size=30" in url
        assert "expand=default_location.tariff" in url
    assert fake.stats.count("GET", "/v2/tariffs/{tariff_id}") == 0


async def test_email_filter_is_case_insensitive(client):
    first = await client.users.get("me")
    assert isinstance(first.email, str)
    found = [u async for u in client.users.list(email=first.email.upper())]
    assert [u.id for u in found] == [first.id]


async def test_pages_cursor_resumes_a_stream(client):
    pages = client.users.pages(page_size=50)
    first = await pages.__anext__()
    await pages.aclose()
    assert first.next_cursor == first.items[-1].id
    rest = [u.id async for u in client.users.list(page_size=50, page_after=first.next_cursor)]
    everything = [u.id async for u in client.users.list(page_size=100)]
    assert [u.id for u in first.items] + rest == everything


async def test_page_before_walks_back(client):
    everything = [u.id async for u in client.users.list(page_size=100)]
    page = await client.users.pages(page_size=10, page_before=everything[25]).__anext__()
    assert [u.id for u in page.items] == everything[15:25]


async def test_get_serves_location_detail(client):
    me = await client.users.get("me")
    by_id = await client.users.get(me.id)
    assert by_id == me
    assert isinstance(me.default_location, ev.Location)
    assert me.default_location.current_carbon_intensity_grams_per_kilowatt_hour is not ev.UNSET
    listed = (await client.users.pages(page_size=1).__anext__()).items[0]
    assert isinstance(listed.default_location, ev.Location)
    assert listed.default_location.current_carbon_intensity_grams_per_kilowatt_hour is ev.UNSET


@pytest.mark.parametrize("encoding", ["json", "form", "multipart"])
async def test_create_in_each_encoding(client, encoding):
    email = f"new-{encoding}@example.com"
    location = ev.Location(**ADDRESS, coordinates=ev.LatLong(51.5, -0.1), state=None)
    user = await client.users.create(email=email, default_location=location, encoding=encoding)
    assert user.email == email
    fetched = await client.users.get(user.id)
    assert isinstance(fetched.default_location, ev.Location)
    assert fetched.default_location.address_1 == "1 High St"
    assert fetched.default_location.coordinates == ev.LatLong(51.5, -0.1)
    assert fetched.default_location.state is None


async def test_update_leaves_unset_fields_alone_and_none_clears(client):
    user = await client.users.create(
        email="patch@example.com", default_location=ev.Location(**ADDRESS)
    )
    renamed = await client.users.update(user.id, email="patched@example.com")
    assert renamed.email == "patched@example.com"
    assert isinstance(renamed.default_location, ev.Location)
    assert renamed.default_location.city == "London"  # untouched

    cleared = await client.users.update(
        user.id,
        default_location=ev.Location(
            address_1=None, city=None, postal_code=None, country_code=None, coordinates=None
        ),
    )
    assert isinstance(cleared.default_location, ev.Location)
    assert cleared.default_location.address_1 is None
    assert cleared.default_location.city is None
    assert cleared.email == "patched@example.com"


async def test_update_with_none_clears_the_whole_location(client):
    user = await client.users.create(
        email="clear@example.com",
        default_location=ev.Location(**ADDRESS, coordinates=ev.LatLong(1.0, 2.0)),
    )
    cleared = await client.users.update(user.id, default_location=None)
    loc = cleared.default_location
    assert isinstance(loc, ev.Location)
    assert (loc.address_1, loc.city, loc.postal_code, loc.country_code) == (None,) * 4
    assert loc.coordinates is None and loc.tariff is None and loc.evse_site is None
    assert cleared.email == "clear@example.com"


@pytest.mark.parametrize("encoding", ["form", "multipart"])
async def test_form_update_clears_with_empty_values(client, encoding):
    user = await client.users.create(
        email=f"f-{encoding}@example.com", default_location=ev.Location(**ADDRESS)
    )
    cleared = await client.users.update(
        user.id,
        default_location=ev.Location(
            address_1=None, city=None, postal_code=None, country_code=None
        ),
        encoding=encoding,
    )
    assert isinstance(cleared.default_location, ev.Location)
    assert cleared.default_location.postal_code is None


async def test_bad_input_sends_nothing(client, fake):
    before = fake.stats.total
    me = await client.users.get("me")
    cases = [
        client.users.get("not-an-id"),
        client.users.create(email="x@example.com", default_location=None),  # type: ignore[arg-type]
        client.users.update(me.id, default_location=ev.Location(address_1="only this")),
        client.users.create(email="not-an-email"),
        client.users.update(
            me.id, default_location=ev.Location(**{**ADDRESS, "country_code": "XX"})
        ),
    ]
    for call in cases:
        with pytest.raises(ev.InvalidRequest):
            await call
    with pytest.raises(ev.InvalidRequest):
        await client.users.list(page_size=101).__anext__()
    with pytest.raises(ev.InvalidRequest):
        await client.users.list(expand=("default_location.nope",)).__anext__()
    assert fake.stats.total == before + 1  # only the get("me")


async def test_duplicate_email_is_a_bad_request_with_field_errors(client):
    me = await client.users.get("me")
    with pytest.raises(ev.BadRequest) as caught:
        await client.users.create(email=str(me.email).upper())
    assert caught.value.status == 400
    assert "email" in caught.value.field_errors
    assert caught.value.headers.get("X-RateLimit-Limit")


async def test_unknown_user_is_not_found(client):
    with pytest.raises(ev.NotFound) as caught:
        await client.users.get("user" + "Z" * 26)
    assert caught.value.status == 404
    assert caught.value.detail


async def test_wrong_token_is_unauthorized(fake):
    async with ev.Client(token="wrong", base_url=fake.base_url) as client:
        with pytest.raises(ev.Unauthorized):
            await client.users.get("me")
        assert "wrong" not in repr(client)


async def test_client_credentials_fetch_once_and_refresh(spec_check):
    """One token for 20 concurrent calls; once the server says it expired (its clock moved past
    the lifetime: the fake's clock is the test's), one new token and the call goes through."""
    clock = Clock()
    async with FakeEvEnergy(users=5, on_exchange=spec_check, clock=clock) as fake:
        creds = ev.ClientCredentials(fake.client_id, fake.client_secret)
        async with ev.Client(credentials=creds, base_url=fake.base_url) as client:
            me = await client.as_user(await _first_id(client)).users.get("me")
            await asyncio.gather(*(client.users.get(me.id) for _ in range(20)))
            assert fake.stats.token_fetches == 1
            assert 401 not in fake.stats.statuses
            clock.now += fake.token_lifetime  # the server's side of the token's lifetime
            assert (await client.users.get(me.id)).id == me.id
            assert fake.stats.token_fetches == 2
            assert fake.stats.statuses[401] == 1  # the expired token, then the fresh one
            assert (await client.users.get(me.id)).id == me.id
            assert fake.stats.token_fetches == 2
            assert fake.client_secret not in repr(creds)


async def test_client_credentials_are_fetched_again_before_they_expire(spec_check, monkeypatch):
    """A token whose expires_in is 1 s is replaced before it lapses: once the loop's clock is
    1 s on (moved ahead, not waited for) the next call fetches a new one without a 401 (the
    fake's clock stands still, so the server would still take the old one)."""
    clock = Clock()
    async with FakeEvEnergy(users=5, token_lifetime=1.0, on_exchange=spec_check, clock=clock) as f:
        creds = ev.ClientCredentials(f.client_id, f.client_secret)
        async with ev.Client(credentials=creds, base_url=f.base_url) as client:
            user_id = f.user_id(1)
            await client.users.get(user_id)
            assert f.stats.token_fetches == 1
            # past the refresh time (at most 0.9 s after the fetch, on the loop's clock)
            loop = asyncio.get_running_loop()
            real_time = loop.time
            monkeypatch.setattr(loop, "time", lambda: real_time() + 1.0)
            await client.users.get(user_id)
            assert f.stats.token_fetches == 2
            assert 401 not in f.stats.statuses


async def test_bad_client_credentials_are_unauthorized(fake):
    creds = ev.ClientCredentials(fake.client_id, "wrong-secret")
    async with ev.Client(credentials=creds, base_url=fake.base_url) as client:
        with pytest.raises(ev.Unauthorized) as caught:
            await client.users.get("user" + "0" * 26)
        assert "wrong-secret" not in str(caught.value)


async def test_as_user_sends_acting_user(fake):
    creds = ev.ClientCredentials(fake.client_id, fake.client_secret)
    async with ev.Client(credentials=creds, base_url=fake.base_url) as client:
        target = await _first_id(client, skip=3)
        bob = client.as_user(target)
        assert (await bob.users.get("me")).id == target
        assert bob.limiter is client.limiter
        with pytest.raises(ev.BadRequest):
            await client.users.get("me")  # client credentials act for no single user
        with pytest.raises(ev.InvalidRequest):
            client.as_user("bob")


async def test_caller_owned_session_is_left_open(fake):
    async with aiohttp.ClientSession() as http:
        async with ev.Client(token=fake.token, base_url=fake.base_url, session=http) as client:
            await client.users.get("me")
        assert not http.closed
        async with http.get(
            f"{fake.base_url}/users/me", headers={"Authorization": f"Bearer {fake.token}"}
        ) as r:
            assert r.status == 200


async def test_cancelled_stream_releases_connections_and_tokens(client):
    streaming = asyncio.Event()

    async def consume() -> None:
        async for _ in client.users.list(page_size=5):
            streaming.set()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(consume())
    await streaming.wait()  # mid-stream: a page read, the next one asked for or about to be
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    session = client._session
    # the page read ahead (if one was asked for) is answered or cancelled, and given back
    await until(lambda: session.limiter.state.in_flight() == 0)
    connector = session.http.connector
    assert connector is not None
    assert sum(len(v) for v in connector._acquired_per_host.values()) == 0  # type: ignore[attr-defined]
    assert (await client.users.get("me")).id  # still usable


async def test_malformed_success_body_is_invalid_response(client, fake):
    fake.faults.garbage_next(1)
    with pytest.raises(ev.InvalidResponse):
        await client.users.get("me")
    fake.faults.garbage_next(1, body=b'[{"id": 5}]')
    with pytest.raises(ev.InvalidResponse):
        await client.users.list().__anext__()


async def _first_id(client: ev.Client, skip: int = 0) -> str:
    async for page in client.users.pages(page_size=skip + 1):
        return page.items[skip].id
    raise AssertionError("no users")
