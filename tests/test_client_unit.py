"""Unit tests of the client over the in-memory `MockTransport`: every collection method, every
error class, what is sent (headers, bodies), retries, rate limiting, credentials.  Backoffs
are recorded by an injected sleep, never slept."""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import pytest
from virtual_time import virtual
from yarl import URL

import evenergy_async as ev
from evenergy_async._policy import Request
from evenergy_async._ratelimit import LimiterStats
from evenergy_async.testing import MockReply, MockTransport

ORIGIN = "https://api.example.test"
B = f"{ORIGIN}/v2"
TOKEN_URL = f"{ORIGIN}/o/token/"
UID = "user01HN2NJ9NMRZBXT1H6FT9N7735"
UID2 = "user01HN2NJ9NMRZBXT1H6FT9N7736"
TID = "tari01HN2NJ9NMRZBXT1H6FT9N7735"
TID2 = "tari01HN2NJ9NMRZBXT1H6FT9N7835"
SID = "supl01HN2NJ9NMRZBXT1H6FT9N7735"
SITE = "site01JX2SZ0WAFTDYVYY0JRAYREY7"
SECRET_TOKEN = "tok-SECRET-abc123"
PROBLEM = "application/problem+json"


def uid(i: int) -> str:
    return f"user{i:026d}"


def user_json(user_id: str = UID, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": user_id,
        "url": f"{B}/users/{user_id}",
        "email": "frodo@example.com",
        "full_name": "Frodo Baggins",
        "joined_at": "2023-06-15T10:00:00Z",
        "terms_consent_datetime": None,
        "default_location": {
            "address_1": "Bag End",
            "address_2": None,
            "postal_code": "HB1 1AA",
            "country_code": "GB",
            "coordinates": None,
            "tariff": f"{B}/tariffs/{TID}",
            "city": "Hobbiton",
            "state": None,
            "evse_site": None,
        },
        "vehicles": [],
        "evses": [],
    }
    data.update(overrides)
    return data


def supplier_json(supplier_id: str = SID) -> dict[str, Any]:
    return {
        "id": supplier_id,
        "url": f"{B}/suppliers/{supplier_id}",
        "name": "Rivendell Renewables",
        "icon": None,
    }


def tariff_json(tariff_id: str = TID, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": tariff_id,
        "url": f"{B}/tariffs/{tariff_id}",
        "supplier": f"{B}/suppliers/{SID}",
        "name": f"Tariff {tariff_id[-4:]}",
        "currency": "GBP",
    }
    data.update(overrides)
    return data


def site_json(site_id: str = SITE) -> dict[str, Any]:
    return {
        "id": site_id,
        "url": f"{B}/evse_sites/{site_id}",
        "evses": [],
        "cpms_connection": None,
    }


def link(next_url: str | None = None, previous: str | None = None) -> dict[str, str]:
    return {
        "Link": f'<{previous or "about:blank"}>; rel="previous", '
        f'<{next_url or "about:blank"}>; rel="next"'
    }


def calls(m: MockTransport, method: str | None = None, url: str | None = None) -> list[Request]:
    """The requests sent, optionally filtered by method and URL."""
    return m.calls(method, url)


def hosts(m: MockTransport) -> set[str]:
    return {r.url.host or "" for r in m.requests}


def form_of(call: Request) -> dict[str, str]:
    assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    return dict(parse_qsl((call.body or b"").decode(), keep_blank_values=True))


class Sleeps:
    """Stands for asyncio.sleep in the session: records each delay, lets the loop run once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def make_client(mocked: MockTransport, *args: Any, **kwargs: Any) -> ev.Client:
    """A client over `mocked` whose backoffs are recorded, not slept."""
    kwargs.setdefault("base_url", B)
    c = ev.Client(*args, transport=mocked, **kwargs)
    c._session.sleep = Sleeps()
    return c


def sleeps(c: ev.Client) -> list[float]:
    recorder = c._session.sleep
    assert isinstance(recorder, Sleeps)
    return recorder.delays


@pytest.fixture
def mocked():
    return MockTransport()


@pytest.fixture
async def client(mocked):
    async with make_client(mocked, SECRET_TOKEN) as c:
        yield c


class OpenLimiter:
    """A limiter that grants at once: lets tests drive true concurrency through the client."""

    def __init__(self) -> None:
        self.window = 1.0
        self.stats = LimiterStats()
        self.tickets = 0

    def configure(self, *, window: float) -> None:
        self.window = window

    async def acquire(self, max_wait: float | None = None) -> int:
        self.tickets += 1
        return self.tickets

    async def record(self, ticket: int, rate: ev.RateLimit | None, status: int) -> None:
        pass

    def release(self, ticket: int, *, sent: bool) -> None:
        pass


# --- headers ------------------------------------------------------------------------------------


async def test_headers_sent(mocked, client):
    mocked.get(f"{B}/users/{UID}", payload=user_json())
    await client.users.get(UID)
    [call] = calls(mocked, "GET")
    headers = call.headers
    assert headers["Authorization"] == f"Bearer {SECRET_TOKEN}"
    assert headers["EvEnergy-Version"] == "2"
    assert headers["Accept"] == "application/json"
    assert "EvEnergy-User" not in headers


async def test_acting_user_header(mocked):
    mocked.get(f"{B}/users/me", payload=user_json())
    async with make_client(mocked, SECRET_TOKEN, acting_user=UID) as c:
        assert c.acting_user == UID
        await c.users.get("me")
    [call] = calls(mocked, "GET")
    assert call.headers["EvEnergy-User"] == UID


async def test_as_user_header_and_shared_state(mocked, client):
    mocked.get(f"{B}/users/me", payload=user_json(UID2), repeat=True)
    bob = client.as_user(UID2)
    assert bob.acting_user == UID2
    assert bob.limiter is client.limiter
    user = await bob.users.get("me")
    assert user.id == UID2
    await client.users.get("me")
    first, second = calls(mocked, "GET")
    assert first.headers["EvEnergy-User"] == UID2
    assert "EvEnergy-User" not in second.headers
    await bob.close()  # a view's close does not close the shared session
    await client.users.get("me")
    assert len(calls(mocked, "GET")) == 3


@pytest.mark.parametrize("bad", ["bob", "me", 5, UID.lower()])
def test_acting_user_validated(bad):
    with pytest.raises(ev.InvalidRequest) as info:
        ev.Client(SECRET_TOKEN, base_url=B, acting_user=bad)
    assert info.value.field == "acting_user"


async def test_as_user_validated(client):
    with pytest.raises(ev.InvalidRequest):
        client.as_user("nobody")


# --- users --------------------------------------------------------------------------------------


async def test_users_get(mocked, client):
    mocked.get(f"{B}/users/{UID}", payload=user_json())
    user = await client.users.get(UID)
    assert isinstance(user, ev.User)
    assert user.id == UID
    assert user.default_location.tariff.url == f"{B}/tariffs/{TID}"
    assert not user.default_location.tariff.resolved


@pytest.mark.parametrize(
    "base", ["https://api.example.com:8443/some%20where/v2", "http://127.0.0.1:8080/v2/"]
)
async def test_a_resource_url_is_the_collection_url_joined_with_the_id(mocked, base):
    async with make_client(mocked, SECRET_TOKEN, base_url=base) as c:
        root = URL(base.rstrip("/"))
        for url in (root / "users" / UID, root / "users" / "me", root / "tariffs" / TID):
            mocked.get(url, payload=user_json() if "users" in url.path else tariff_json())
        await c.users.get(UID)
        await c.users.get("me")
        await c.tariffs.get(TID)
    assert [str(r.url) for r in mocked.requests] == [
        str(root / "users" / UID),
        str(root / "users" / "me"),
        str(root / "tariffs" / TID),
    ]


async def test_users_get_me_with_expand_primes_cache(mocked, client):
    data = user_json()
    data["default_location"]["tariff"] = tariff_json(supplier=supplier_json())
    data["default_location"]["current_carbon_intensity_grams_per_kilowatt_hour"] = 250
    url = f"{B}/users/me?expand=default_location.tariff&expand=default_location.tariff.supplier"
    mocked.get(url, payload=data)
    user = await client.users.get(
        "me", expand=("default_location.tariff", "default_location.tariff.supplier")
    )
    assert user.default_location.current_carbon_intensity_grams_per_kilowatt_hour == 250
    tariff_ref = user.default_location.tariff
    assert tariff_ref.resolved
    assert isinstance(tariff_ref.value, ev.Tariff)
    assert tariff_ref.value.supplier.resolved
    # the expanded relations are in the resolve cache: no request
    assert await client.resolve(f"{B}/tariffs/{TID}") is tariff_ref.value
    supplier = await client.resolve(ev.Ref(f"{B}/suppliers/{SID}"))
    assert isinstance(supplier, ev.Supplier)
    assert len(calls(mocked)) == 1


async def test_users_list_follows_link(mocked, client):
    first = f"{B}/users?page_size=2&email=frodo%40example.com"
    second = f"{B}/users?page_size=2&email=frodo%40example.com&page_after={uid(2)}"
    mocked.get(first, payload=[user_json(uid(1)), user_json(uid(2))], headers=link(second))
    mocked.get(second, payload=[user_json(uid(3))], headers=link(None, first))
    users = [u async for u in client.users.list(page_size=2, email="frodo@example.com")]
    assert [u.id for u in users] == [uid(1), uid(2), uid(3)]
    assert len(calls(mocked, "GET", first)) == 1
    assert len(calls(mocked, "GET", second)) == 1


async def test_users_list_relative_link_and_expand(mocked, client):
    first = f"{B}/users?page_size=100&expand=default_location.evse_site"
    # the link leaves the filters out; the client puts them back
    second = f"{B}/users?page_after={uid(1)}&page_size=100&expand=default_location.evse_site"
    data = user_json(uid(1))
    data["default_location"]["evse_site"] = site_json()
    mocked.get(
        first, payload=[data], headers={"Link": f"</v2/users?page_after={uid(1)}>; rel=next"}
    )
    mocked.get(second, payload=[])
    users = [u async for u in client.users.list(expand=["default_location.evse_site"])]
    assert [u.id for u in users] == [uid(1)]
    assert users[0].default_location.evse_site.resolved
    assert len(calls(mocked, "GET", second)) == 1


async def test_users_list_without_link_header_stops(mocked, client):
    mocked.get(f"{B}/users?page_size=100", payload=[user_json()])
    assert [u.id async for u in client.users.list()] == [UID]
    assert len(calls(mocked)) == 1


async def test_users_pages(mocked, client):
    first = f"{B}/users?page_size=1&page_after={uid(0)}"
    second = f"{B}/users?page_size=1&page_after={uid(1)}"
    mocked.get(first, payload=[user_json(uid(1))], headers=link(second, f"{B}/users?x=1"))
    mocked.get(second, payload=[user_json(uid(2))], headers=link(None, first))
    pages = [p async for p in client.users.pages(page_size=1, page_after=uid(0))]
    assert len(pages) == 2
    assert [u.id for u in pages[0].items] == [uid(1)]
    assert pages[0].next_url == second
    assert pages[0].next_cursor == uid(1)
    assert pages[0].previous_url == f"{B}/users?x=1"
    assert pages[1].next_url is None
    assert pages[1].next_cursor is None
    assert pages[1].previous_url == first


async def test_users_page_before(mocked, client):
    url = f"{B}/users?page_size=5&page_before={uid(9)}"
    mocked.get(url, payload=[])
    pages = [p async for p in client.users.pages(page_size=5, page_before=uid(9))]
    assert len(pages) == 1
    assert pages[0].items == []
    assert len(calls(mocked, "GET", url)) == 1


async def test_users_list_resolve_one_request_per_distinct_tariff(mocked, client):
    items = []
    for i in range(4):
        data = user_json(uid(i))
        data["default_location"]["tariff"] = f"{B}/tariffs/{TID if i % 2 else TID2}"
        items.append(data)
    mocked.get(f"{B}/users?page_size=100", payload=items)
    mocked.get(f"{B}/tariffs/{TID}", payload=tariff_json(TID))
    mocked.get(f"{B}/tariffs/{TID2}", payload=tariff_json(TID2))
    users = [u async for u in client.users.list(resolve=("default_location.tariff",))]
    assert [u.default_location.tariff.value.id for u in users] == [TID2, TID, TID2, TID]
    assert len(calls(mocked, "GET", f"{B}/tariffs/{TID}")) == 1
    assert len(calls(mocked, "GET", f"{B}/tariffs/{TID2}")) == 1


async def test_users_create_json(mocked, client):
    mocked.post(f"{B}/users", status=201, payload=user_json(email="a@example.com"))
    location = ev.Location(
        address_1="1 High St", city="London", postal_code="EC1A 1BB", country_code="GB"
    )
    user = await client.users.create(email="a@example.com", default_location=location)
    assert user.email == "a@example.com"
    [call] = calls(mocked, "POST")
    assert call.headers["Content-Type"] == "application/json"
    assert msgspec.json.decode(call.body) == {
        "email": "a@example.com",
        "default_location": {
            "address_1": "1 High St",
            "city": "London",
            "postal_code": "EC1A 1BB",
            "country_code": "GB",
        },
    }


async def test_users_create_email_only(mocked, client):
    mocked.post(f"{B}/users", status=201, payload=user_json())
    await client.users.create(email="a@example.com")
    [call] = calls(mocked, "POST")
    assert msgspec.json.decode(call.body) == {"email": "a@example.com"}


async def test_users_create_form(mocked, client):
    mocked.post(f"{B}/users", status=201, payload=user_json())
    location = ev.Location(
        address_1="1 High St",
        address_2=None,
        city="London",
        postal_code="EC1A 1BB",
        country_code="GB",
        coordinates=ev.LatLong(51.5, -0.1),
    )
    await client.users.create(email="a@example.com", default_location=location, encoding="form")
    [call] = calls(mocked, "POST")
    fields = parse_qsl((call.body).decode(), keep_blank_values=True)
    assert fields == [
        ("email", "a@example.com"),
        ("default_location.address_1", "1 High St"),
        ("default_location.address_2", ""),
        ("default_location.postal_code", "EC1A 1BB"),
        ("default_location.country_code", "GB"),
        ("default_location.coordinates.latitude", "51.5"),
        ("default_location.coordinates.longitude", "-0.1"),
        ("default_location.city", "London"),
    ]


async def test_users_create_multipart(mocked, client):
    mocked.post(f"{B}/users", status=201, payload=user_json())
    location = ev.Location(
        address_1="1 High St", city="London", postal_code="EC1A 1BB", country_code="GB"
    )
    await client.users.create(
        email="a@example.com", default_location=location, encoding="multipart"
    )
    [call] = calls(mocked, "POST")
    assert call.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    body = (call.body).decode()
    assert 'name="email"' in body
    assert "a@example.com" in body
    assert 'name="default_location.city"' in body
    assert "London" in body
    assert body.count("Content-Disposition: form-data") == 5


async def test_users_update_sends_only_given_fields(mocked, client):
    mocked.patch(f"{B}/users/{UID}", payload=user_json(email="b@example.com"))
    user = await client.users.update(UID, email="b@example.com")
    assert user.email == "b@example.com"
    [call] = calls(mocked, "PATCH")
    assert msgspec.json.decode(call.body) == {"email": "b@example.com"}


async def test_users_update_location_nulls_present_unset_absent(mocked, client):
    url = f"{B}/users/{UID}?expand=default_location.tariff"
    mocked.patch(url, payload=user_json())
    location = ev.Location(
        address_1=None,
        address_2=None,
        city=None,
        postal_code=None,
        country_code=None,
        coordinates=None,
        tariff=ev.Ref(f"{B}/tariffs/{TID}"),
    )
    await client.users.update(UID, default_location=location, expand=["default_location.tariff"])
    [call] = calls(mocked, "PATCH", url)
    assert msgspec.json.decode(call.body) == {
        "default_location": {
            "address_1": None,
            "address_2": None,
            "postal_code": None,
            "country_code": None,
            "coordinates": None,
            "tariff": f"{B}/tariffs/{TID}",
            "city": None,
        }
    }


async def test_users_update_form_null_as_empty(mocked, client):
    mocked.patch(f"{B}/users/me", payload=user_json())
    await client.users.update("me", default_location=ev.Location(state=None), encoding="form")
    [call] = calls(mocked, "PATCH")
    assert parse_qsl((call.body).decode(), keep_blank_values=True) == [
        ("default_location.state", "")
    ]


async def test_users_update_default_location_none_clears(mocked, client):
    mocked.patch(f"{B}/users/{UID}", payload=user_json())
    await client.users.update(UID, default_location=None)
    [call] = calls(mocked, "PATCH")
    sent = msgspec.json.decode(call.body)["default_location"]
    for name in ("address_1", "city", "postal_code", "country_code"):
        assert sent[name] is None


REFUSED_CALLS = {
    "get bad id": lambda c: c.users.get("user123"),
    "get expand unknown": lambda c: c.users.get(UID, expand=["default_location"]),
    "create bad email": lambda c: c.users.create(email="not-an-email"),
    "create partial address": lambda c: c.users.create(
        email="a@example.com", default_location=ev.Location(city="London")
    ),
    "create coordinates only": lambda c: c.users.create(
        email="a@example.com", default_location=ev.Location(coordinates=ev.LatLong(1.0, 2.0))
    ),
    "create bad country": lambda c: c.users.create(
        email="a@example.com",
        default_location=ev.Location(address_1="1", city="x", postal_code="p", country_code="XX"),
    ),
    "create null location": lambda c: c.users.create(email="a@example.com", default_location=None),
    "create bad encoding": lambda c: c.users.create(email="a@example.com", encoding="xml"),
    "update bad id": lambda c: c.users.update("nobody", email="a@example.com"),
    "update bad email": lambda c: c.users.update(UID, email="x@y"),
    "update bad latitude": lambda c: c.users.update(
        UID,
        default_location=ev.Location(
            address_1="1",
            city="x",
            postal_code="p",
            country_code="GB",
            coordinates=ev.LatLong(95.0, 0.0),
        ),
    ),
    "update bad expand": lambda c: c.users.update(UID, email="a@example.com", expand=["x"]),
    "update tariff as str": lambda c: c.users.update(
        UID, default_location=ev.Location(tariff=f"{B}/tariffs/{TID}")
    ),
    "tariff bad id": lambda c: c.tariffs.get(SID),
    "tariff bad expand": lambda c: c.tariffs.get(TID, expand=["default_location.tariff"]),
    "tariff bad user": lambda c: c.tariffs.get(TID, available_for_user_id="x"),
    "supplier bad id": lambda c: c.suppliers.get(TID),
    "site bad id": lambda c: c.evse_sites.get("site"),
    "resolve not a url": lambda c: c.resolve(5),
}


@pytest.mark.parametrize("call", REFUSED_CALLS.values(), ids=REFUSED_CALLS.keys())
async def test_input_refused_before_any_request(mocked, client, call):
    with pytest.raises(ev.InvalidRequest):
        await call(client)
    assert mocked.requests == []


REFUSED_STREAMS = {
    "users page_size 0": lambda c: c.users.list(page_size=0),
    "users page_size 101": lambda c: c.users.list(page_size=101),
    "users page_size bool": lambda c: c.users.list(page_size=True),
    "users bad email": lambda c: c.users.list(email="nope"),
    "users bad cursor": lambda c: c.users.pages(page_after="cursor"),
    "users bad resolve": lambda c: c.users.list(resolve=["default_location"]),
    "tariffs page 0": lambda c: c.tariffs.pages(page=0),
    "tariffs page_size": lambda c: c.tariffs.list(page_size="5"),
    "tariffs supplier id": lambda c: c.tariffs.list(supplier_id=TID),
    "tariffs valid": lambda c: c.tariffs.list(valid="yes"),
    "tariffs gsp_group": lambda c: c.tariffs.list(gsp_group=""),
    "suppliers page_size": lambda c: c.suppliers.list(page_size=500),
    "suppliers user": lambda c: c.suppliers.list(available_for_user_id=SID),
}


@pytest.mark.parametrize("stream", REFUSED_STREAMS.values(), ids=REFUSED_STREAMS.keys())
async def test_stream_input_refused_before_any_request(mocked, client, stream):
    with pytest.raises(ev.InvalidRequest):
        async for _ in stream(client):
            pass
    assert mocked.requests == []


# --- tariffs, suppliers, EVSE sites -------------------------------------------------------------


async def test_tariffs_get_with_expand(mocked, client):
    url = f"{B}/tariffs/{TID}?expand=supplier&available_for_user_id={UID}"
    data = tariff_json(
        supplier=supplier_json(), current_price=12, prices=f"{B}/tariffs/{TID}/prices"
    )
    mocked.get(url, payload=data)
    tariff = await client.tariffs.get(TID, expand=["supplier"], available_for_user_id=UID)
    assert isinstance(tariff, ev.Tariff)
    assert tariff.current_price == 12
    assert tariff.supplier.resolved
    assert tariff.supplier.value.name == "Rivendell Renewables"
    assert await tariff.supplier.resolve() is tariff.supplier.value
    assert len(calls(mocked)) == 1


async def test_tariffs_list_page_numbers(mocked, client):
    first = f"{B}/tariffs?page_size=2&valid=true&gsp_group=_C"
    second = f"{B}/tariffs?page_size=2&valid=true&gsp_group=_C&page=2"
    mocked.get(first, payload=[tariff_json(TID), tariff_json(TID2)], headers=link(second))
    mocked.get(second, payload=[tariff_json("tari" + "Z" * 26)], headers=link(None, first))
    tariffs = [t async for t in client.tariffs.list(page_size=2, valid=True, gsp_group="_C")]
    assert [t.id for t in tariffs] == [TID, TID2, "tari" + "Z" * 26]
    assert all(isinstance(t, ev.Tariff) for t in tariffs)


async def test_tariffs_pages_from_page(mocked, client):
    url = f"{B}/tariffs?page_size=10&page=3&supplier_id={SID}&expand=supplier"
    mocked.get(url, payload=[tariff_json(supplier=supplier_json())])
    pages = [
        p
        async for p in client.tariffs.pages(
            page_size=10, page=3, supplier_id=SID, expand="supplier"
        )
    ]
    assert len(pages) == 1
    assert pages[0].items[0].supplier.resolved
    assert pages[0].next_url is None
    assert pages[0].next_cursor is None


async def test_suppliers_get(mocked, client):
    mocked.get(f"{B}/suppliers/{SID}", payload=supplier_json())
    supplier = await client.suppliers.get(SID)
    assert supplier == ev.Supplier(
        id=SID, url=f"{B}/suppliers/{SID}", name="Rivendell Renewables", icon=None
    )


async def test_suppliers_list(mocked, client):
    first = f"{B}/suppliers?page_size=1&available_for_user_id={UID}"
    second = f"{B}/suppliers?page_size=1&page=2&available_for_user_id={UID}"
    other = "supl" + "B" * 26
    mocked.get(first, payload=[supplier_json()], headers=link(second))
    mocked.get(second, payload=[supplier_json(other)])
    suppliers = [s async for s in client.suppliers.list(page_size=1, available_for_user_id=UID)]
    assert [s.id for s in suppliers] == [SID, other]


async def test_evse_sites_get(mocked, client):
    mocked.get(f"{B}/evse_sites/{SITE}", payload=site_json())
    site = await client.evse_sites.get(SITE)
    assert isinstance(site, ev.EVSESite)
    assert site.id == SITE
    assert site.cpms_connection is None


async def test_evse_sites_list(mocked, client):
    other = "site" + "B" * 26
    mocked.get(f"{B}/evse_sites", payload=[site_json()], headers=link(f"{B}/evse_sites?page=2"))
    mocked.get(f"{B}/evse_sites?page=2", payload=[site_json(other)])
    assert [s.id async for s in client.evse_sites.list()] == [SITE, other]


# --- resolve ------------------------------------------------------------------------------------


async def test_resolve_ref_cached(mocked, client):
    mocked.get(f"{B}/users/{UID}", payload=user_json())
    mocked.get(f"{B}/tariffs/{TID}", payload=tariff_json())
    user = await client.users.get(UID)
    tariff = await user.default_location.tariff.resolve()
    assert isinstance(tariff, ev.Tariff)
    assert user.default_location.tariff.value is tariff
    assert await client.resolve(ev.Ref(f"{B}/tariffs/{TID}")) is tariff
    assert await client.resolve(f"{B}/tariffs/{TID}") is tariff
    assert len(calls(mocked, "GET", f"{B}/tariffs/{TID}")) == 1


async def test_resolve_coalesces_concurrent_requests(mocked, client):
    async def slow(request):
        await asyncio.sleep(0.05)
        return MockReply(payload=tariff_json())

    mocked.get(f"{B}/tariffs/{TID}", callback=slow, repeat=True)
    refs = [ev.Ref(f"{B}/tariffs/{TID}") for _ in range(10)]
    values = await asyncio.gather(*(client.resolve(r) for r in refs))
    assert all(v is values[0] for v in values)
    assert all(r.resolved for r in refs)
    assert len(calls(mocked, "GET")) == 1


@pytest.mark.parametrize(
    ("path", "payload", "model"),
    [
        (f"users/{UID}", user_json(), ev.User),
        (f"suppliers/{SID}", supplier_json(), ev.Supplier),
        (f"evse_sites/{SITE}", site_json(), ev.EVSESite),
    ],
)
async def test_resolve_decodes_by_collection(mocked, client, path, payload, model):
    mocked.get(f"{B}/{path}", payload=payload)
    assert isinstance(await client.resolve(f"{B}/{path}"), model)


async def test_resolve_unknown_collection_gives_json(mocked, client):
    url = f"{B}/vehicles/vhcl01HRFF3SEVSCRAV9B3CHVDFN0H"
    mocked.get(url, payload={"id": "vhcl01HRFF3SEVSCRAV9B3CHVDFN0H", "make": "X"})
    assert await client.resolve(url) == {"id": "vhcl01HRFF3SEVSCRAV9B3CHVDFN0H", "make": "X"}


@pytest.mark.parametrize(
    "url",
    [
        f"https://evil.example/v2/tariffs/{TID}",
        f"http://api.example.test/v2/tariffs/{TID}",  # same host, other scheme
        f"https://api.example.test:8443/v2/tariffs/{TID}",  # other port
        f"/v2/tariffs/{TID}",  # not absolute
    ],
)
async def test_resolve_other_origin_refused_without_request(mocked, client, url):
    mocked.get(url, payload=tariff_json(), repeat=True)
    with pytest.raises(ev.EvEnergyError) as info:
        await client.resolve(url)
    assert not isinstance(info.value, ev.TransportError)
    assert mocked.requests == []
    assert SECRET_TOKEN not in str(info.value)


async def test_decoded_ref_to_other_origin_refused(mocked, client):
    data = user_json()
    data["default_location"]["tariff"] = f"https://evil.example/v2/tariffs/{TID}"
    mocked.get(f"{B}/users/{UID}", payload=data)
    user = await client.users.get(UID)
    with pytest.raises(ev.EvEnergyError):
        await user.default_location.tariff.resolve()
    assert hosts(mocked) == {"api.example.test"}


async def test_link_to_other_origin_refused(mocked, client):
    evil = f"https://evil.example/v2/users?page_after={uid(1)}"
    mocked.get(f"{B}/users?page_size=100", payload=[user_json(uid(1))], headers=link(evil))
    mocked.get(evil, payload=[user_json(uid(2))])
    with pytest.raises(ev.EvEnergyError) as info:
        async for _ in client.users.list():
            pass
    assert not isinstance(info.value, ev.TransportError)
    assert hosts(mocked) == {"api.example.test"}


# --- errors -------------------------------------------------------------------------------------

ERRORS = {
    400: ev.BadRequest,
    401: ev.Unauthorized,
    403: ev.Forbidden,
    404: ev.NotFound,
    405: ev.APIError,
    406: ev.APIError,
    409: ev.Conflict,
    413: ev.APIError,
    422: ev.BadRequest,
    429: ev.RateLimited,
    500: ev.ServerError,
    502: ev.ServerError,
    503: ev.ServerError,
    504: ev.ServerError,
}


@pytest.mark.parametrize(("status", "cls"), sorted(ERRORS.items()))
async def test_every_error_class(mocked, status, cls):
    problem = {
        "type": f"{B}/problems/something/",
        "title": f"Title {status}",
        "status": status,
        "detail": f"Detail {status}",
        "instance": f"{B}/users/{UID}",
        "field_errors": {"email": ["bad"], "default_location": {"city": ["required"]}},
    }
    headers = {"X-Request-Id": f"req-{status}", "Retry-After": "30"}
    mocked.get(
        f"{B}/users/{UID}", status=status, payload=problem, headers=headers, content_type=PROBLEM
    )
    async with make_client(mocked, SECRET_TOKEN, max_retries=0, max_rate_limit_wait=1.0) as c:
        with pytest.raises(ev.APIError) as info:
            await c.users.get(UID)
    exc = info.value
    assert type(exc) is cls
    assert exc.status == status
    assert exc.type == problem["type"]
    assert exc.title == problem["title"]
    assert exc.detail == problem["detail"]
    assert exc.instance == problem["instance"]
    assert exc.field_errors == {"email": ("bad",), "default_location.city": ("required",)}
    assert exc.headers["X-Request-Id"] == f"req-{status}"
    if cls is ev.RateLimited:
        assert exc.retry_after == 30.0
    assert len(calls(mocked)) == 1
    assert SECRET_TOKEN not in str(exc) and SECRET_TOKEN not in repr(exc)


@pytest.mark.parametrize(("status", "cls"), [(404, ev.NotFound), (502, ev.ServerError)])
async def test_error_with_html_body(mocked, status, cls):
    mocked.get(
        f"{B}/users/{UID}", status=status, body="<html>oops</html>", content_type="text/html"
    )
    async with make_client(mocked, SECRET_TOKEN, max_retries=0) as c:
        with pytest.raises(cls) as info:
            await c.users.get(UID)
    assert info.value.title in ("Not Found", "Bad Gateway")
    assert info.value.detail is None


async def test_error_in_list_stream_carries_resume_cursor(mocked, client):
    first = f"{B}/users?page_size=1"
    second = f"{B}/users?page_size=1&page_after={uid(1)}"
    mocked.get(first, payload=[user_json(uid(1))], headers=link(second))
    mocked.get(second, status=404, payload={"title": "gone"}, content_type=PROBLEM)
    seen = []
    with pytest.raises(ev.NotFound) as info:
        async for user in client.users.list(page_size=1):
            seen.append(user.id)
    assert seen == [uid(1)]
    assert info.value.resume_cursor == uid(1)


# --- malformed 2xx bodies -----------------------------------------------------------------------

MALFORMED = {
    "not json": ("GET", f"users/{UID}", b"<html>", lambda c: c.users.get(UID)),
    "empty": ("GET", f"users/{UID}", b"", lambda c: c.users.get(UID)),
    "array for one": ("GET", f"users/{UID}", b"[]", lambda c: c.users.get(UID)),
    "missing id": ("GET", f"users/{UID}", b'{"url": "x"}', lambda c: c.users.get(UID)),
    "bad country": (
        "GET",
        f"users/{UID}",
        msgspec.json.encode(user_json(default_location={"country_code": "XX"})),
        lambda c: c.users.get(UID),
    ),
    "tariff bad type": (
        "GET",
        f"tariffs/{TID}",
        msgspec.json.encode(tariff_json(type="CHEAP")),
        lambda c: c.tariffs.get(TID),
    ),
    "supplier missing icon": (
        "GET",
        f"suppliers/{SID}",
        b'{"id": "s", "url": "u", "name": "n"}',
        lambda c: c.suppliers.get(SID),
    ),
    "site bad evses": (
        "GET",
        f"evse_sites/{SITE}",
        b'{"id": "s", "url": "u", "evses": 5, "cpms_connection": null}',
        lambda c: c.evse_sites.get(SITE),
    ),
    "create returns junk": (
        "POST",
        "users",
        b'"created"',
        lambda c: c.users.create(email="a@example.com"),
    ),
    "update returns junk": (
        "PATCH",
        f"users/{UID}",
        b"null",
        lambda c: c.users.update(UID, email="a@example.com"),
    ),
}


@pytest.mark.parametrize(
    ("method", "path", "body", "call"), MALFORMED.values(), ids=MALFORMED.keys()
)
async def test_malformed_success_body(mocked, client, method, path, body, call):
    mocked.add(method, f"{B}/{path}", status=200, body=body)
    with pytest.raises(ev.InvalidResponse):
        await call(client)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"id": "x"}', {}),  # an object, not an array
        (b"[1, 2]", {}),
        (b"<html>", {}),
        (b"[]", {"Link": "this is not a link header"}),
    ],
)
async def test_malformed_list_response(mocked, client, body, headers):
    mocked.get(f"{B}/users?page_size=100", body=body, headers=headers)
    with pytest.raises(ev.InvalidResponse):
        async for _ in client.users.list():
            pass


# --- retries ------------------------------------------------------------------------------------


async def test_max_retries_503_with_retry_after(mocked):
    url = f"{B}/users/{UID}"
    mocked.get(url, status=503, headers={"Retry-After": "0.05"}, repeat=True)
    async with make_client(mocked, SECRET_TOKEN, max_retries=2) as c:
        with pytest.raises(ev.ServerError) as info:
            await c.users.get(UID)
    assert info.value.status == 503
    assert len(calls(mocked, "GET", url)) == 3  # one try and two retries
    assert sleeps(c) == [0.05, 0.05]  # Retry-After honoured twice


async def test_503_then_success(mocked, client):
    url = f"{B}/users/{UID}"
    mocked.get(url, status=502)
    mocked.get(url, status=504)
    mocked.get(url, payload=user_json())
    assert (await client.users.get(UID)).id == UID
    assert len(calls(mocked, "GET", url)) == 3


@pytest.mark.parametrize("status", [500, 501])
async def test_500_not_retried(mocked, client, status):
    mocked.get(f"{B}/users/{UID}", status=status, repeat=True)
    with pytest.raises(ev.ServerError):
        await client.users.get(UID)
    assert len(calls(mocked)) == 1


async def test_max_retries_zero(mocked):
    mocked.get(f"{B}/users/{UID}", status=503, repeat=True)
    async with make_client(mocked, SECRET_TOKEN, max_retries=0) as c:
        with pytest.raises(ev.ServerError):
            await c.users.get(UID)
    assert len(calls(mocked)) == 1


async def test_connection_error_retried_then_transport_error(mocked):
    # nothing registered: aioresponses refuses the connection
    async with make_client(mocked, SECRET_TOKEN, max_retries=2) as c:
        c._session.tune(backoff_base=0.001)
        with pytest.raises(ev.TransportError) as info:
            await c.users.get(UID)
    assert len(calls(mocked)) == 3
    assert SECRET_TOKEN not in str(info.value)


async def test_timeout_is_transport_error(mocked, client):
    mocked.get(f"{B}/users/{UID}", timeout=True, repeat=True)
    client._session.tune(max_retries=1)
    with pytest.raises(ev.TransportError):
        await client.users.get(UID)
    assert len(calls(mocked)) == 2


async def test_lost_create_response_looks_up_by_email(mocked, client):
    mocked.post(f"{B}/users", status=503)
    mocked.get(
        f"{B}/users?page_size=1&email=a%40example.com", payload=[user_json(email="A@example.com")]
    )
    user = await client.users.create(email="a@example.com")
    assert user.id == UID
    assert len(calls(mocked, "POST")) == 1  # never sent twice blindly


@virtual  # the limiter pauses at least 1 s after a 429: on virtual time
async def test_429_then_success_not_counted_in_max_retries(mocked):
    url = f"{B}/users/{UID}"
    mocked.get(url, status=429, headers={"Retry-After": "0.05"}, content_type=PROBLEM)
    mocked.get(url, status=429, headers={"RetryAfter": "0.05"}, content_type=PROBLEM)
    mocked.get(
        url,
        payload=user_json(),
        headers={"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "97"},
    )
    async with make_client(mocked, SECRET_TOKEN, max_retries=0, rate_limit_window=0.5) as c:
        user = await asyncio.wait_for(c.users.get(UID), 5)
        assert c.rate_limit == ev.RateLimit(100, 97, None)
        assert c.limiter.stats.throttled == 2
    assert user.id == UID
    assert len(calls(mocked, "GET", url)) == 3
    assert c.limiter.stats.waits == 2  # the limiter held each retry for Retry-After
    assert sleeps(c) == []  # the limiter waited, the session slept no backoff


@virtual  # the limiter pauses at least 1 s after a 429: on virtual time
async def test_429_with_rate_headers_waits_retry_after_not_window(mocked):
    url = f"{B}/users/{UID}"
    throttled = {"Retry-After": "0.05", "X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0"}
    mocked.get(url, status=429, headers=throttled, content_type=PROBLEM)
    mocked.get(url, payload=user_json())
    async with make_client(mocked, SECRET_TOKEN) as c:
        user = await asyncio.wait_for(c.users.get(UID), 1.5)
    assert user.id == UID


async def test_max_rate_limit_wait_exceeded_by_retry_after(mocked):
    url = f"{B}/users/{UID}"
    mocked.get(url, status=429, headers={"Retry-After": "30"}, content_type=PROBLEM, repeat=True)
    async with make_client(mocked, SECRET_TOKEN, max_rate_limit_wait=1.0) as c:
        with pytest.raises(ev.RateLimited) as info:
            await c.users.get(UID)
        assert c.limiter.stats.waits == 0  # refused at once, not waited
    assert info.value.retry_after == 30.0
    assert len(calls(mocked)) == 1


async def test_max_rate_limit_wait_exceeded_by_local_budget(mocked):
    url = f"{B}/users/{UID}"
    mocked.get(
        url,
        payload=user_json(),
        headers={"X-RateLimit-Limit": "1", "X-RateLimit-Remaining": "0"},
        repeat=True,
    )
    async with make_client(
        mocked, SECRET_TOKEN, rate_limit_window=60.0, max_rate_limit_wait=0.5
    ) as c:
        await c.users.get(UID)
        with pytest.raises(ev.RateLimited) as info:
            await c.users.get(UID)
    assert info.value.retry_after == pytest.approx(60.0, abs=1.0)
    assert len(calls(mocked)) == 1  # refused locally, nothing sent


async def test_client_waits_for_budget(mocked):
    url = f"{B}/users/{UID}"
    mocked.get(
        url,
        payload=user_json(),
        headers={"X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "1"},
        repeat=True,
    )
    async with make_client(mocked, SECRET_TOKEN, rate_limit_window=0.2) as c:
        for _ in range(3):
            await c.users.get(UID)
        assert c.limiter.stats.waits == 1  # the third waited for the window
    assert len(calls(mocked)) == 3


# --- credentials --------------------------------------------------------------------------------


async def test_client_credentials_token_fetched_and_used(mocked):
    mocked.post(TOKEN_URL, payload={"access_token": "T1", "expires_in": 36000})
    mocked.get(f"{B}/users/me", payload=user_json())
    creds = ev.ClientCredentials("my-client", "my-secret")
    async with make_client(mocked, credentials=creds) as c:
        await c.users.get("me")
    [post] = calls(mocked, "POST", TOKEN_URL)
    expected = base64.b64encode(b"my-client:my-secret").decode()
    assert post.headers["Authorization"] == f"Basic {expected}"
    assert form_of(post) == {"grant_type": "client_credentials"}
    [get] = calls(mocked, "GET")
    assert get.headers["Authorization"] == "Bearer T1"


async def test_custom_token_url_and_scope(mocked):
    token_url = "https://auth.example.test/oauth/token"
    mocked.post(token_url, payload={"access_token": "T1"})
    mocked.get(f"{B}/users/me", payload=user_json())
    creds = ev.ClientCredentials("id", "sec", token_url=token_url, scope="users:read")
    async with make_client(mocked, credentials=creds) as c:
        await c.users.get("me")
    [post] = calls(mocked, "POST", token_url)
    assert form_of(post) == {"grant_type": "client_credentials", "scope": "users:read"}


async def test_401_refreshes_token_once_and_retries(mocked):
    mocked.post(TOKEN_URL, payload={"access_token": "T1", "expires_in": 36000})
    mocked.post(TOKEN_URL, payload={"access_token": "T2", "expires_in": 36000})
    url = f"{B}/users/{UID}"
    mocked.get(url, status=401, payload={"title": "expired"}, content_type=PROBLEM)
    mocked.get(url, payload=user_json())
    async with make_client(mocked, credentials=ev.ClientCredentials("id", "sec")) as c:
        assert (await c.users.get(UID)).id == UID
    first, second = calls(mocked, "GET", url)
    assert first.headers["Authorization"] == "Bearer T1"
    assert second.headers["Authorization"] == "Bearer T2"
    assert len(calls(mocked, "POST", TOKEN_URL)) == 2


async def test_401_twice_raises_unauthorized(mocked):
    mocked.post(TOKEN_URL, payload={"access_token": "T1"}, repeat=True)
    url = f"{B}/users/{UID}"
    mocked.get(url, status=401, payload={"title": "nope"}, content_type=PROBLEM, repeat=True)
    async with make_client(mocked, credentials=ev.ClientCredentials("id", "sec")) as c:
        with pytest.raises(ev.Unauthorized):
            await c.users.get(UID)
    assert len(calls(mocked, "GET", url)) == 2
    assert len(calls(mocked, "POST", TOKEN_URL)) == 2


async def test_401_static_token_not_retried(mocked, client):
    mocked.get(f"{B}/users/{UID}", status=401, repeat=True)
    with pytest.raises(ev.Unauthorized):
        await client.users.get(UID)
    assert len(calls(mocked)) == 1


async def test_token_fetch_single_flight(mocked):
    async def slow_token(request):
        await asyncio.sleep(0.05)
        return MockReply(payload={"access_token": "T1", "expires_in": 36000})

    mocked.post(TOKEN_URL, callback=slow_token, repeat=True)
    mocked.get(f"{B}/users/{UID}", payload=user_json(), repeat=True)
    creds = ev.ClientCredentials("id", "sec")
    async with make_client(mocked, credentials=creds, limiter=OpenLimiter()) as c:
        users = await asyncio.gather(*(c.users.get(UID) for _ in range(20)))
        assert c._session.auth.fetches == 1
    assert len(users) == 20
    assert len(calls(mocked, "POST", TOKEN_URL)) == 1
    gets = calls(mocked, "GET")
    assert len(gets) == 20
    assert {g.headers["Authorization"] for g in gets} == {"Bearer T1"}


async def test_cancelled_caller_does_not_cancel_shared_token_fetch(mocked):
    async def slow_token(request):
        await asyncio.sleep(0.1)
        return MockReply(payload={"access_token": "T1"})

    mocked.post(TOKEN_URL, callback=slow_token, repeat=True)
    mocked.get(f"{B}/users/{UID}", payload=user_json(), repeat=True)
    async with make_client(
        mocked, credentials=ev.ClientCredentials("id", "sec"), limiter=OpenLimiter()
    ) as c:
        first = asyncio.ensure_future(c.users.get(UID))
        second = asyncio.ensure_future(c.users.get(UID))
        await asyncio.sleep(0.02)
        first.cancel()
        assert (await asyncio.wait_for(second, 2)).id == UID
        with pytest.raises(asyncio.CancelledError):
            await first
    assert len(calls(mocked, "POST", TOKEN_URL)) == 1


async def test_token_endpoint_refusal(mocked):
    mocked.post(
        TOKEN_URL,
        status=401,
        payload={"error": "invalid_client", "error_description": "bad client"},
    )
    creds = ev.ClientCredentials("id", "very-secret-value")
    async with make_client(mocked, credentials=creds) as c:
        with pytest.raises(ev.Unauthorized) as info:
            await c.users.get(UID)
    assert "bad client" in str(info.value)
    assert "very-secret-value" not in str(info.value)
    assert calls(mocked, "GET") == []


async def test_token_endpoint_bad_response(mocked):
    mocked.post(TOKEN_URL, payload={"token_type": "bearer"})
    async with make_client(mocked, credentials=ev.ClientCredentials("id", "sec")) as c:
        with pytest.raises(ev.InvalidResponse):
            await c.users.get(UID)


async def test_secrets_never_in_repr_or_messages(mocked):
    creds = ev.ClientCredentials("my-client", "TOP-SECRET-42")
    assert "TOP-SECRET-42" not in repr(creds)
    assert "TOP-SECRET-42" not in str(creds)
    mocked.post(TOKEN_URL, payload={"access_token": "ACCESS-TOKEN-99"})
    mocked.get(f"{B}/users/{UID}", status=403, payload={"title": "no"}, content_type=PROBLEM)
    async with make_client(mocked, credentials=creds, acting_user=UID) as c:
        with pytest.raises(ev.Forbidden) as info:
            await c.users.get(UID)
        texts = [repr(c), str(c), repr(c._session.auth), repr(info.value), str(info.value)]
        texts.append(repr(c.as_user(UID2)))
    for text in texts:
        assert "TOP-SECRET-42" not in text
        assert "ACCESS-TOKEN-99" not in text
    async with make_client(mocked, SECRET_TOKEN) as c:
        assert SECRET_TOKEN not in repr(c)
        assert SECRET_TOKEN not in repr(c._session.auth)


# --- sessions and construction ------------------------------------------------------------------


async def test_own_transport_closed(mocked):
    mocked.get(f"{B}/users/{UID}", payload=user_json())
    async with make_client(mocked, SECRET_TOKEN) as c:
        await c.users.get(UID)
    assert mocked.closed


def test_client_base_url_normalised():
    assert ev.Client(SECRET_TOKEN, base_url=f"{B}/").base_url == B


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"token": SECRET_TOKEN, "credentials": ev.ClientCredentials("a", "b")},
        {"token": ""},
        {"token": SECRET_TOKEN, "base_url": "ftp://x"},
        {"token": SECRET_TOKEN, "base_url": "not a url"},
        {"token": SECRET_TOKEN, "base_url": f"{B}?x=1"},
        {"token": SECRET_TOKEN, "timeout": 0},
        {"token": SECRET_TOKEN, "max_retries": -1},
        {"token": SECRET_TOKEN, "max_retries": True},
        {"token": SECRET_TOKEN, "rate_limit_window": 0},
        {"token": SECRET_TOKEN, "max_rate_limit_wait": -1},
        {"credentials": ("a", "b")},
    ],
)
def test_client_construction_refused(kwargs):
    with pytest.raises(ev.InvalidRequest):
        ev.Client(**kwargs)


async def test_rate_limit_property(mocked, client):
    assert client.rate_limit is None
    mocked.get(
        f"{B}/users/{UID}",
        payload=user_json(),
        headers={"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "999"},
    )
    await client.users.get(UID)
    assert client.rate_limit == ev.RateLimit(1000, 999, None)
    assert client.as_user(UID).rate_limit == client.rate_limit


async def test_filters_a_server_drops_from_its_links_are_put_back(mocked, client):
    """Every page answers the same question: page_size, email and expand stay on every page
    even when the server's next link leaves them out."""
    email = "someone@example.com"
    first = f"{B}/users?page_size=2&email=someone%40example.com&expand=default_location.tariff"
    bare_next = f"{B}/users?page_after={uid(2)}"
    kept_next = (
        f"{B}/users?page_after={uid(2)}&page_size=2&email=someone%40example.com"
        "&expand=default_location.tariff"
    )
    link = f'<about:blank>; rel="previous", <{bare_next}>; rel="next"'
    mocked.get(first, payload=[user_json(uid(1)), user_json(uid(2))], headers={"Link": link})
    mocked.get(
        kept_next, payload=[user_json(uid(3))], headers={"Link": '<about:blank>; rel="next"'}
    )
    ids = [
        u.id
        async for u in client.users.list(
            page_size=2, email=email, expand=("default_location.tariff",)
        )
    ]
    assert ids == [uid(1), uid(2), uid(3)]
    assert calls(mocked, "GET", kept_next)


async def test_resolve_accepts_the_origin_with_its_default_port_written_out(mocked, client):
    mocked.get(f"{B}/tariffs/{TID}", payload=tariff_json())
    tariff = await client.resolve(f"https://API.example.test:443/v2/tariffs/{TID}")
    assert tariff.id == TID
