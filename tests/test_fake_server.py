"""Tests of FakeEvEnergy alone, over raw aiohttp (not the evenergy client)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from polling import until

from evenergy_async.testing import FakeEvEnergy

USERS = 60
LINK = re.compile(r'<([^>]*)>;\s*rel="(previous|next)"')
LONDON = {
    "address_1": "1 High St",
    "city": "London",
    "postal_code": "EC1A 1BB",
    "country_code": "GB",
}


def basic(client_id: str, secret: str) -> dict[str, str]:
    """HTTP Basic client authentication (RFC 6749 section 2.3.1)."""
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


class Clock:
    """A hand-moved monotonic clock for rate-limit and token-expiry rules."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeEvEnergy]:
    async with FakeEvEnergy(users=USERS, tariffs=8, suppliers=3, evse_sites=3, seed=1) as f:
        yield f


@pytest.fixture
async def session(fake: FakeEvEnergy) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {fake.token}"}) as s:
        yield s


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    @property
    def links(self) -> dict[str, str | None]:
        found = {rel: url for url, rel in LINK.findall(self.headers["Link"])}
        return {rel: None if url == "about:blank" else url for rel, url in found.items()}


async def call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Reply:
    async with session.request(method, url, **kwargs) as response:
        return Reply(response.status, response.headers, await response.read())


async def get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> Reply:
    return await call(session, "GET", url, **kwargs)


# --- users: pagination -----------------------------------------------------------------------


async def test_first_page_items_links_and_headers(fake: FakeEvEnergy, session: Any) -> None:
    reply = await get(session, f"{fake.base_url}/users", params={"page_size": "10"})
    assert reply.status == 200
    users = reply.json
    assert [u["id"] for u in users] == [fake.user_id(i) for i in range(10)]
    assert all(u["url"] == f"{fake.base_url}/users/{u['id']}" for u in users)
    assert all(
        "current_carbon_intensity_grams_per_kilowatt_hour" not in u["default_location"]
        for u in users
    )
    assert reply.links["previous"] is None
    assert reply.links["next"] == (
        f"{fake.base_url}/users?page_size=10&page_after={fake.user_id(9)}"
    )
    assert reply.headers["EvEnergy-Version"] == "2"
    assert reply.headers["X-RateLimit-Limit"] == "1000"
    assert reply.headers["X-RateLimit-Remaining"] == "999"
    assert 'rel="previous"' in reply.headers["Link"]


async def test_walk_forward_then_backward(fake: FakeEvEnergy, session: Any) -> None:
    url: str | None = f"{fake.base_url}/users?page_size=7"
    pages = []
    while url:
        reply = await get(session, url)
        pages.append([u["id"] for u in reply.json])
        url = reply.links["next"]
    assert [i for page in pages for i in page] == [fake.user_id(i) for i in range(USERS)]
    assert [len(p) for p in pages] == [7] * 8 + [4]
    backwards = []
    url = f"{fake.base_url}/users?page_size=7&page_before={fake.user_id(USERS - 1)}"
    while url:
        reply = await get(session, url)
        backwards.append([u["id"] for u in reply.json])
        url = reply.links["previous"]
    ids = [i for page in reversed(backwards) for i in page]
    assert ids == [fake.user_id(i) for i in range(USERS - 1)]
    assert reply.links["next"] is not None  # the first page still links forward


@pytest.mark.parametrize("size", ["1", "100"])
async def test_page_size_bounds(fake: FakeEvEnergy, session: Any, size: str) -> None:
    reply = await get(session, f"{fake.base_url}/users", params={"page_size": size})
    assert len(reply.json) == min(int(size), USERS)
    assert reply.links["previous"] is None
    assert (reply.links["next"] is None) is (size == "100")  # exactly one page


@pytest.mark.parametrize("size", ["0", "101", "ten", "-1"])
async def test_page_size_out_of_range(fake: FakeEvEnergy, session: Any, size: str) -> None:
    reply = await get(session, f"{fake.base_url}/users", params={"page_size": size})
    assert reply.status == 400
    assert reply.headers["Content-Type"] == "application/problem+json"
    problem = reply.json
    assert problem["type"] == f"{fake.origin}/v2/problems/pagination-parameters/"
    assert problem["title"] == "Invalid pagination parameter"
    assert list(problem["field_errors"]) == ["page_size"]


async def test_page_after_wins_over_page_before(fake: FakeEvEnergy, session: Any) -> None:
    params = {"page_size": "3", "page_after": fake.user_id(10), "page_before": fake.user_id(2)}
    reply = await get(session, f"{fake.base_url}/users", params=params)
    assert [u["id"] for u in reply.json] == [fake.user_id(i) for i in (11, 12, 13)]
    assert reply.links["previous"] == (
        f"{fake.base_url}/users?page_size=3&page_before={fake.user_id(11)}"
    )


async def test_page_after_the_last_user_is_empty(fake: FakeEvEnergy, session: Any) -> None:
    params = {"page_after": fake.user_id(USERS - 1)}
    reply = await get(session, f"{fake.base_url}/users", params=params)
    assert reply.status == 200
    assert reply.json == []
    assert reply.links == {"previous": None, "next": None}


async def test_cursor_between_ids(fake: FakeEvEnergy, session: Any) -> None:
    between = fake.user_id(5)[:14] + "0" * 16  # same time part as user 5, smallest random part
    reply = await get(session, f"{fake.base_url}/users", params={"page_after": between})
    assert reply.json[0]["id"] == fake.user_id(5)


@pytest.mark.parametrize("cursor", ["nope", "vhcl01HRFF3SEVSCRAV9B3CHVDFN0H", "user" + "a" * 26])
async def test_malformed_cursor(fake: FakeEvEnergy, session: Any, cursor: str) -> None:
    reply = await get(session, f"{fake.base_url}/users", params={"page_after": cursor})
    assert reply.status == 400
    assert "page_after" in reply.json["field_errors"]


async def test_email_filter_is_case_insensitive_and_kept_in_links(
    fake: FakeEvEnergy, session: Any
) -> None:
    email = fake.user_email(7)
    params = {"email": email.upper(), "page_size": "5"}
    reply = await get(session, f"{fake.base_url}/users", params=params)
    assert [u["id"] for u in reply.json] == [fake.user_id(7)]
    assert reply.links == {"previous": None, "next": None}
    params["page_before"] = fake.user_id(40)
    reply = await get(session, f"{fake.base_url}/users", params=params)
    assert reply.json[0]["email"] == email
    none = await get(session, f"{fake.base_url}/users", params={"email": "nobody@example.com"})
    assert none.json == []


async def test_links_keep_expand(fake: FakeEvEnergy, session: Any) -> None:
    params = [("page_size", "2"), ("expand", "default_location.tariff")]
    reply = await get(session, f"{fake.base_url}/users", params=params)
    assert reply.links["next"] == (
        f"{fake.base_url}/users?page_size=2&expand=default_location.tariff"
        f"&page_after={fake.user_id(1)}"
    )
    following = await get(session, str(reply.links["next"]))
    assert isinstance(following.json[0]["default_location"]["tariff"], dict)
    assert following.json[0]["id"] == fake.user_id(2)


async def test_cursors_apply_within_an_email_filter(fake: FakeEvEnergy, session: Any) -> None:
    email = fake.user_email(3)
    after = {"email": email, "page_after": fake.user_id(3)}
    assert (await get(session, f"{fake.base_url}/users", params=after)).json == []
    before = {"email": email, "page_before": fake.user_id(4)}
    assert [
        u["id"] for u in (await get(session, f"{fake.base_url}/users", params=before)).json
    ] == [fake.user_id(3)]
    bad = await get(session, f"{fake.base_url}/users", params={"email": "no-at-sign"})
    assert bad.status == 400 and "email" in bad.json["field_errors"]


# --- users: expansion and retrieval ----------------------------------------------------------


async def test_expansions_on_list(fake: FakeEvEnergy, session: Any) -> None:
    base = f"{fake.base_url}/users"
    plain = (await get(session, base, params={"page_size": "100"})).json
    assert all(isinstance(u["default_location"]["tariff"], str) for u in plain)
    tariff = (await get(session, base, params={"expand": "default_location.tariff"})).json
    first = tariff[0]["default_location"]["tariff"]
    assert first["url"] == plain[0]["default_location"]["tariff"]
    assert isinstance(first["supplier"], str)
    nested = (await get(session, base, params={"expand": "default_location.tariff.supplier"})).json
    supplier = nested[0]["default_location"]["tariff"]["supplier"]
    assert supplier["url"] == first["supplier"] and "name" in supplier
    sited = [u for u in plain if u["default_location"]["evse_site"]]
    assert sited, "seed 1 puts some users at an EVSE site"
    params = {"expand": "default_location.evse_site", "page_size": "100"}
    expanded = {u["id"]: u for u in (await get(session, base, params=params)).json}
    site = expanded[sited[0]["id"]]["default_location"]["evse_site"]
    assert site["url"] == sited[0]["default_location"]["evse_site"]
    assert site["id"].startswith("site") and site["evses"]


async def test_unknown_expansion(fake: FakeEvEnergy, session: Any) -> None:
    reply = await get(session, f"{fake.base_url}/users", params={"expand": "vehicles"})
    assert reply.status == 400
    assert reply.json["field_errors"] == {"expand": ['"vehicles" is not a valid choice.']}


async def test_get_user_me_and_detail(fake: FakeEvEnergy, session: Any) -> None:
    me = await get(
        session, f"{fake.base_url}/users/me", params={"expand": "default_location.tariff"}
    )
    assert me.status == 200
    body = me.json
    assert body["id"] == fake.user_id(0)
    location = body["default_location"]
    assert isinstance(location["current_carbon_intensity_grams_per_kilowatt_hour"], int)
    assert isinstance(location["tariff"], dict)
    assert set(LONDON) <= {k for k, v in location.items() if v is not None}
    same = await get(session, f"{fake.base_url}/users/{fake.user_id(0)}")
    assert same.json["email"] == body["email"]


@pytest.mark.parametrize("user_id", ["user" + "0" * 26, "nobody"])
async def test_unknown_user(fake: FakeEvEnergy, session: Any, user_id: str) -> None:
    reply = await get(session, f"{fake.base_url}/users/{user_id}")
    assert reply.status == 404
    assert reply.json["instance"] == f"{fake.base_url}/users/{user_id}"
    assert reply.json["detail"]


# --- users: writes ---------------------------------------------------------------------------


async def test_create_json_then_list_find_and_get(fake: FakeEvEnergy, session: Any) -> None:
    payload = {
        "email": "New.Person@example.org",
        "id": "user" + "9" * 26,  # read-only: ignored
        "full_name": "Ignored",
        "default_location": {
            **LONDON,
            "coordinates": {"latitude": 51.5, "longitude": -0.1},
            "tariff": f"{fake.base_url}/tariffs/{fake.tariff_id(2)}",
            "evse_site": f"{fake.base_url}/evse_sites/{fake.evse_site_id(1)}",
        },
    }
    created = await call(session, "POST", f"{fake.base_url}/users", json=payload)
    assert created.status == 201
    user = created.json
    assert user["id"] != payload["id"] and user["id"] > fake.user_id(USERS - 1)
    assert created.headers["Location"] == user["url"]
    assert user["default_location"]["coordinates"] == {"latitude": 51.5, "longitude": -0.1}
    assert user["default_location"]["tariff"].endswith(fake.tariff_id(2))
    assert "current_carbon_intensity_grams_per_kilowatt_hour" in user["default_location"]
    assert fake.user_count == USERS + 1
    found = await get(session, f"{fake.base_url}/users", params={"email": "new.person@EXAMPLE.org"})
    assert [u["id"] for u in found.json] == [user["id"]]
    last = await get(
        session, f"{fake.base_url}/users", params={"page_after": fake.user_id(USERS - 1)}
    )
    assert [u["id"] for u in last.json] == [user["id"]]
    fetched = await get(session, user["url"])
    assert fetched.json["email"] == "New.Person@example.org"


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({}, {"email": ["This field is required."]}),
        ({"email": "not-an-email"}, {"email": ["Enter a valid email address."]}),
        ({"email": "a@example.com", "nickname": "x"}, {"nickname": ["Unknown field."]}),
        ({"email": "a@example.com", "default_location": None}, {"default_location": None}),
        (
            {"email": "a@example.com", "default_location": {"address_1": "1 High St"}},
            {
                "default_location.city": None,
                "default_location.postal_code": None,
                "default_location.country_code": None,
            },
        ),
        (
            {"email": "a@example.com", "default_location": {**LONDON, "country_code": "UK"}},
            {"default_location.country_code": ['"UK" is not a valid choice.']},
        ),
        (
            {
                "email": "a@example.com",
                "default_location": {**LONDON, "coordinates": {"latitude": 91, "longitude": 0}},
            },
            {"default_location.coordinates.latitude": None},
        ),
        (
            {
                "email": "a@example.com",
                "default_location": {"tariff": "https://api.ev.energy/v2/tariffs/tari0"},
            },
            {"default_location.tariff": ["Invalid hyperlink - Object does not exist."]},
        ),
        (
            {"email": "a@example.com", "default_location": {"coordinates": {"latitude": 1}}},
            {
                "default_location.coordinates.longitude": ["This field is required."],
                "default_location.address_1": None,
                "default_location.city": None,
                "default_location.postal_code": None,
                "default_location.country_code": None,
            },
        ),
    ],
)
async def test_create_validation(
    fake: FakeEvEnergy, session: Any, payload: dict[str, Any], errors: dict[str, Any]
) -> None:
    reply = await call(session, "POST", f"{fake.base_url}/users", json=payload)
    assert reply.status == 400
    problem = reply.json
    assert problem["title"] == "Request failed validation."
    assert problem["type"] == f"{fake.origin}/v2/problems/validation-failed/"
    assert set(problem["field_errors"]) == set(errors)
    for field, messages in errors.items():
        if messages is not None:
            assert problem["field_errors"][field] == messages
    assert fake.user_count == USERS


async def test_explicit_nulls_are_not_an_address(fake: FakeEvEnergy, session: Any) -> None:
    location = dict.fromkeys(["address_1", "city", "postal_code", "country_code", "coordinates"])
    payload = {"email": "nulls@example.com", "default_location": location}
    reply = await call(session, "POST", f"{fake.base_url}/users", json=payload)
    assert reply.status == 201
    assert reply.json["default_location"]["address_1"] is None


async def test_duplicate_email_is_400(fake: FakeEvEnergy, session: Any) -> None:
    seeded = fake.user_email(4).upper()
    reply = await call(session, "POST", f"{fake.base_url}/users", json={"email": seeded})
    assert reply.status == 400
    assert reply.json["field_errors"] == {"email": ["user with this email already exists."]}
    ok = await call(session, "POST", f"{fake.base_url}/users", json={"email": "dup@example.com"})
    again = await call(session, "POST", f"{fake.base_url}/users", json={"email": "DUP@example.com"})
    assert (ok.status, again.status) == (201, 400)


async def test_malformed_and_unsupported_bodies(fake: FakeEvEnergy, session: Any) -> None:
    url = f"{fake.base_url}/users"
    broken = await call(
        session, "POST", url, data=b"{", headers={"Content-Type": "application/json"}
    )
    assert broken.status == 400 and broken.json["title"] == "Malformed request"
    listed = await call(session, "POST", url, json=["a@example.com"])
    assert listed.status == 400
    xml = await call(session, "POST", url, data=b"<u/>", headers={"Content-Type": "text/xml"})
    assert xml.status == 400 and xml.json["title"] == "Unsupported media type"


async def test_create_urlencoded_with_dotted_keys(fake: FakeEvEnergy, session: Any) -> None:
    form = {
        "email": "form@example.com",
        "default_location.address_1": "2 Mill Road",
        "default_location.address_2": "",
        "default_location.city": "Cambridge",
        "default_location.postal_code": "CB1 2AB",
        "default_location.country_code": "GB",
        "default_location.coordinates.latitude": "52.2",
        "default_location.coordinates.longitude": "0.12",
        "default_location.tariff": "",
    }
    reply = await call(session, "POST", f"{fake.base_url}/users", data=form)
    assert reply.status == 201, reply.json
    location = reply.json["default_location"]
    assert location["coordinates"] == {"latitude": 52.2, "longitude": 0.12}
    assert location["address_2"] is None and location["tariff"] is None
    bad = dict(form, email="form2@example.com")
    bad["default_location.coordinates.latitude"] = "north"
    reply = await call(session, "POST", f"{fake.base_url}/users", data=bad)
    assert reply.json["field_errors"] == {
        "default_location.coordinates.latitude": ["A valid number is required."]
    }


async def test_create_and_patch_multipart(fake: FakeEvEnergy, session: Any) -> None:
    form = aiohttp.FormData()
    form.add_field("email", "multi@example.com")
    for key, value in LONDON.items():
        form.add_field(f"default_location.{key}", value)
    form.add_field("default_location.state", "")
    reply = await call(session, "POST", f"{fake.base_url}/users", data=form)
    assert reply.status == 201, reply.json
    assert reply.json["default_location"]["city"] == "London"
    patch = aiohttp.FormData()
    patch.add_field("default_location.tariff", f"{fake.base_url}/tariffs/{fake.tariff_id(0)}")
    patched = await call(session, "PATCH", reply.json["url"], data=patch)
    assert patched.status == 200
    assert patched.json["default_location"]["tariff"].endswith(fake.tariff_id(0))
    assert patched.json["default_location"]["city"] == "London"


async def test_patch_merges_and_nulls_clear(fake: FakeEvEnergy, session: Any) -> None:
    url = f"{fake.base_url}/users/{fake.user_id(0)}"
    before = (await get(session, url)).json
    renamed = await call(session, "PATCH", url, json={"email": "renamed@example.com"})
    assert renamed.status == 200
    assert renamed.json["default_location"] == before["default_location"] | {
        "current_carbon_intensity_grams_per_kilowatt_hour": renamed.json["default_location"][
            "current_carbon_intensity_grams_per_kilowatt_hour"
        ]
    }
    cleared = await call(session, "PATCH", url, json={"default_location": {"tariff": None}})
    location = cleared.json["default_location"]
    assert (
        location["tariff"] is None
        and location["address_1"] == before["default_location"]["address_1"]
    )
    address_keys = [
        "address_1",
        "address_2",
        "city",
        "state",
        "postal_code",
        "country_code",
        "coordinates",
    ]
    no_address = await call(
        session, "PATCH", url, json={"default_location": dict.fromkeys(address_keys)}
    )
    assert all(no_address.json["default_location"][k] is None for k in address_keys)
    assert (
        no_address.json["default_location"]["current_carbon_intensity_grams_per_kilowatt_hour"]
        is None
    )
    partial = await call(session, "PATCH", url, json={"default_location": {"city": "Leeds"}})
    assert partial.status == 400 and partial.json["instance"] == url
    assert "default_location.address_1" in partial.json["field_errors"]
    null_location = await call(session, "PATCH", url, json={"default_location": None})
    assert null_location.json["field_errors"] == {
        "default_location": ["This field may not be null."]
    }
    expanded = await call(
        session,
        "PATCH",
        url,
        params={"expand": "default_location.evse_site"},
        json={
            "default_location": {"evse_site": f"{fake.base_url}/evse_sites/{fake.evse_site_id(0)}"}
        },
    )
    assert expanded.json["default_location"]["evse_site"]["id"] == fake.evse_site_id(0)
    old_email = await get(session, f"{fake.base_url}/users", params={"email": before["email"]})
    assert old_email.json == []  # the seeded email was released


async def test_patch_email_clash_and_unknown_user(fake: FakeEvEnergy, session: Any) -> None:
    url = f"{fake.base_url}/users/{fake.user_id(1)}"
    clash = await call(session, "PATCH", url, json={"email": fake.user_email(2)})
    assert clash.status == 400 and "email" in clash.json["field_errors"]
    same = await call(session, "PATCH", url, json={"email": fake.user_email(1).upper()})
    assert same.status == 200  # a user's own email is not a clash
    missing = await call(session, "PATCH", f"{fake.base_url}/users/user{'0' * 26}", json={})
    assert missing.status == 404


async def test_writes_invalidate_cached_pages(fake: FakeEvEnergy, session: Any) -> None:
    url = f"{fake.base_url}/users?page_size=5"
    first = await get(session, url)
    again = await get(session, url)
    assert first.body == again.body
    await call(session, "PATCH", first.json[2]["url"], json={"email": "cache@example.com"})
    after = await get(session, url)
    assert after.json[2]["email"] == "cache@example.com"


# --- auth, tokens, versions ------------------------------------------------------------------


async def test_missing_or_bad_token_is_401(fake: FakeEvEnergy) -> None:
    async with aiohttp.ClientSession() as anonymous:
        reply = await get(anonymous, f"{fake.base_url}/users")
        assert reply.status == 401
        assert reply.headers["Content-Type"] == "application/problem+json"
        assert reply.json["detail"] == "Authentication credentials were not provided."
        assert reply.headers["X-RateLimit-Remaining"] == "999"
        bad = await get(anonymous, f"{fake.base_url}/users", headers={"Authorization": "Bearer x"})
        assert bad.status == 401 and "expired" in bad.json["detail"]


async def test_client_credentials_grant(fake: FakeEvEnergy) -> None:
    async with aiohttp.ClientSession() as s:
        auth = basic(fake.client_id, fake.client_secret)
        form = {"grant_type": "client_credentials"}
        reply = await call(s, "POST", fake.token_url, data=form, headers=auth)
        assert reply.status == 200
        token = reply.json
        assert token["token_type"] == "Bearer" and token["expires_in"] == 36000
        assert token["scope"]
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        me = await get(s, f"{fake.base_url}/users/me", headers=headers)
        assert me.status == 400 and me.json["title"] == "Missing user"
        acting = dict(headers, **{"EvEnergy-User": fake.user_id(9)})
        me = await get(s, f"{fake.base_url}/users/me", headers=acting)
        assert me.json["id"] == fake.user_id(9)
        ghost = dict(headers, **{"EvEnergy-User": "user" + "0" * 26})
        assert (await get(s, f"{fake.base_url}/users", headers=ghost)).status == 400
        by_form = dict(form, client_id=fake.client_id, client_secret=fake.client_secret)
        assert (await call(s, "POST", fake.token_url, data=by_form)).status == 200
        wrong = basic(fake.client_id, "nope")
        denied = await call(s, "POST", fake.token_url, data=form, headers=wrong)
        assert (denied.status, denied.json["error"]) == (401, "invalid_client")
        grant = await call(s, "POST", fake.token_url, data={"grant_type": "password"}, headers=auth)
        assert (grant.status, grant.json["error"]) == (400, "unsupported_grant_type")
        assert fake.stats.token_fetches == 2
        assert fake.rate_limit_remaining() == 1000 - 3  # the token endpoint is not limited


async def test_issued_tokens_expire() -> None:
    clock = Clock()
    fake = FakeEvEnergy(users=3, token_lifetime=60, clock=clock)
    async with fake, aiohttp.ClientSession() as s:
        auth = basic(fake.client_id, fake.client_secret)
        form = {"grant_type": "client_credentials"}
        token = (await call(s, "POST", fake.token_url, data=form, headers=auth)).json
        assert token["expires_in"] == 60
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        clock.now += 59
        assert (await get(s, f"{fake.base_url}/users", headers=headers)).status == 200
        clock.now += 1
        expired = await get(s, f"{fake.base_url}/users", headers=headers)
        assert expired.status == 401
        assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
        static = {"Authorization": f"Bearer {fake.token}"}
        assert (await get(s, f"{fake.base_url}/users", headers=static)).status == 200


@pytest.mark.parametrize(("version", "status"), [(None, 200), ("2", 200), ("3", 400), ("x", 400)])
async def test_version_header(
    fake: FakeEvEnergy, session: Any, version: str | None, status: int
) -> None:
    headers = {} if version is None else {"EvEnergy-Version": version}
    reply = await get(session, f"{fake.base_url}/users/me", headers=headers)
    assert reply.status == status
    assert reply.headers["EvEnergy-Version"] == "2"
    if status == 400:
        assert reply.json["title"] == "Unsupported version"
        assert reply.json["detail"] == f"Unsupported version requested: {version}"


async def test_405_404_and_406(fake: FakeEvEnergy, session: Any) -> None:
    deleted = await call(session, "DELETE", f"{fake.base_url}/users/me")
    assert deleted.status == 405 and "PATCH" in deleted.headers["Allow"]
    assert deleted.headers["Content-Type"] == "application/problem+json"
    missing = await get(session, f"{fake.base_url}/nothing-here")
    assert missing.status == 404 and missing.json["title"] == "Not found"
    html = await get(session, f"{fake.base_url}/users", headers={"Accept": "text/html"})
    assert html.status == 406
    fine = await get(session, f"{fake.base_url}/users", headers={"Accept": "text/html, */*;q=0.1"})
    assert fine.status == 200


# --- rate limit ------------------------------------------------------------------------------


async def test_rate_limit_429_and_recovery() -> None:
    clock = Clock()
    async with FakeEvEnergy(users=3, rate_limit=5, rate_window=1.0, clock=clock) as fake:
        headers = {"Authorization": f"Bearer {fake.token}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            remaining = []
            for _ in range(5):
                reply = await get(s, f"{fake.base_url}/users")
                remaining.append(int(reply.headers["X-RateLimit-Remaining"]))
            assert remaining == [4, 3, 2, 1, 0]
            limited = await get(s, f"{fake.base_url}/users")
            assert limited.status == 429
            assert limited.headers["Retry-After"] == "1"
            assert limited.headers["X-RateLimit-Remaining"] == "0"
            problem = limited.json
            assert problem["type"] == f"{fake.origin}/v2/problems/rate-limit-exceeded/"
            assert problem["title"] == "Too Many Requests"
            assert problem["detail"] == "Request was rate limited. Try again in 1 seconds"
            await get(s, f"{fake.base_url}/users")  # refused too: not counted
            assert fake.stats.rate_limited == 2
            clock.now += 1.0
            recovered = await get(s, f"{fake.base_url}/users")
            assert recovered.status == 200
            assert recovered.headers["X-RateLimit-Remaining"] == "4"


async def test_rate_limit_is_a_sliding_log() -> None:
    clock = Clock()
    async with FakeEvEnergy(users=3, rate_limit=3, rate_window=10.0, clock=clock) as fake:
        headers = {"Authorization": f"Bearer {fake.token}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            for step in (0.0, 4.0, 4.0):  # arrivals at t=0, 4, 8
                clock.now += step
                assert (await get(s, f"{fake.base_url}/users")).status == 200
            clock.now += 1.5  # t=9.5: all three still inside the window
            limited = await get(s, f"{fake.base_url}/users")
            assert (limited.status, limited.headers["Retry-After"]) == (429, "1")
            clock.now += 0.5  # t=10: the first left the window (not a fixed-window reset)
            reply = await get(s, f"{fake.base_url}/users")
            assert (reply.status, reply.headers["X-RateLimit-Remaining"]) == (200, "0")
            clock.now += 0.5  # t=10.5: the next to leave arrived at t=4 -> ceil(3.5)
            assert (await get(s, f"{fake.base_url}/users")).headers["Retry-After"] == "4"


async def test_every_token_and_user_shares_one_budget_and_consume() -> None:
    async with FakeEvEnergy(users=3, rate_limit=10) as fake, aiohttp.ClientSession() as s:
        token = fake.issue_token()
        as_user = {"Authorization": f"Bearer {token}", "EvEnergy-User": fake.user_id(1)}
        static = {"Authorization": f"Bearer {fake.token}"}
        await get(s, f"{fake.base_url}/users", headers=as_user)
        await get(s, f"{fake.base_url}/users", headers=static)
        assert fake.rate_limit_remaining() == 8
        assert fake.consume(5) == 5
        assert fake.consume(5) == 3  # beyond the budget: refused, not counted
        reply = await get(s, f"{fake.base_url}/users", headers=static)
        assert reply.status == 429
        fake.rate_limit = 20  # settable at runtime
        reply = await get(s, f"{fake.base_url}/users", headers=static)
        assert (reply.status, reply.headers["X-RateLimit-Limit"]) == (200, "20")
        assert reply.headers["X-RateLimit-Remaining"] == "9"
        fake.reset_rate_limit()
        assert fake.rate_limit_remaining() == 20


# --- faults and stats ------------------------------------------------------------------------


async def test_fail_next(fake: FakeEvEnergy, session: Any) -> None:
    fake.faults.fail_next(2, status=503, retry_after=1)
    statuses = [(await get(session, f"{fake.base_url}/users")).status for _ in range(3)]
    assert statuses == [503, 503, 200]
    fake.faults.fail_next(1, status=502, problem=False)
    plain = await get(session, f"{fake.base_url}/users")
    assert plain.status == 502 and plain.headers["Content-Type"].startswith("text/plain")
    fake.faults.fail_next(status=503, retry_after=2)
    problem = await get(session, f"{fake.base_url}/users")
    assert problem.headers["Retry-After"] == "2" and problem.json["status"] == 503
    assert fake.stats.faults["fail_next"] == 4
    assert fake.rate_limit_remaining() == 999  # injected failures are not counted


async def test_error_rate_is_deterministic(session: Any) -> None:
    async def run() -> list[int]:
        async with FakeEvEnergy(users=3, seed=7) as f:
            f.faults.error_rate = 0.5
            headers = {"Authorization": f"Bearer {f.token}"}
            async with aiohttp.ClientSession(headers=headers) as s:
                return [(await get(s, f"{f.base_url}/users/me")).status for _ in range(30)]

    first, second = await run(), await run()
    assert first == second
    assert 5 < first.count(503) < 25 and set(first) == {200, 503}


async def test_cut_next_write_commits_then_drops(fake: FakeEvEnergy, session: Any) -> None:
    fake.faults.cut_next_write()
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await call(session, "POST", f"{fake.base_url}/users", json={"email": "cut@example.com"})
    found = await get(session, f"{fake.base_url}/users", params={"email": "cut@example.com"})
    assert len(found.json) == 1  # the user was created before the connection dropped
    assert fake.stats.faults["cut"] == 1 and fake.stats.statuses[0] == 1
    ok = await call(session, "POST", f"{fake.base_url}/users", json={"email": "ok@example.com"})
    assert ok.status == 201


async def test_cut_after_commit_rate_on_patch(fake: FakeEvEnergy, session: Any) -> None:
    fake.faults.cut_after_commit_rate = 1.0
    url = f"{fake.base_url}/users/{fake.user_id(3)}"
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await call(session, "PATCH", url, json={"email": "patched@example.com"})
    invalid = await call(session, "PATCH", url, json={"email": "bad"})
    assert invalid.status == 400  # nothing committed, nothing cut
    fake.faults.cut_after_commit_rate = 0.0
    assert (await get(session, url)).json["email"] == "patched@example.com"


async def test_garbage_next(fake: FakeEvEnergy, session: Any) -> None:
    fake.faults.garbage_next()
    reply = await get(session, f"{fake.base_url}/users/me")
    assert reply.status == 200
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(reply.body)
    fake.faults.garbage_next(body=b"<html>oops</html>", content_type="text/html")
    html = await get(session, f"{fake.base_url}/users/me")
    assert html.body == b"<html>oops</html>" and html.headers["Content-Type"] == "text/html"
    assert (await get(session, f"{fake.base_url}/users/me")).json["id"] == fake.user_id(0)
    assert fake.stats.faults["garbage"] == 2


async def test_latency(fake: FakeEvEnergy, session: Any) -> None:
    fake.faults.latency = 0.2  # far longer than 20 turns of the loop, however slow
    held = asyncio.create_task(get(session, f"{fake.base_url}/users/me"))
    await until(lambda: fake.stats.faults["latency"] == 1)  # handled, answer held back
    for _ in range(20):
        await asyncio.sleep(0)
    assert not held.done()
    assert (await held).status == 200
    assert fake.stats.faults["latency"] == 1


async def test_stats_by_route_and_status(fake: FakeEvEnergy, session: Any) -> None:
    await get(session, f"{fake.base_url}/users")
    await get(session, f"{fake.base_url}/users/me")
    await get(session, f"{fake.base_url}/users/{fake.user_id(1)}")
    await get(session, f"{fake.base_url}/users/nobody")
    assert fake.stats.count("GET", "/v2/users") == 1
    assert fake.stats.requests[("GET", "/v2/users/{user_id}")] == 3
    assert fake.stats.statuses == {200: 3, 404: 1}
    assert fake.stats.total == 4
    fake.stats.reset()
    assert fake.stats.total == 0 and not fake.stats.statuses


async def test_on_exchange_sees_every_exchange() -> None:
    seen: list[Any] = []
    async with FakeEvEnergy(users=3, on_exchange=seen.append) as fake:
        headers = {"Authorization": f"Bearer {fake.token}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            await call(s, "POST", f"{fake.base_url}/users", json={"email": "e@example.com"})
            await get(s, f"{fake.base_url}/users/nobody")
    assert [(e.method, e.status) for e in seen] == [("POST", 201), ("GET", 404)]
    assert msgspec.json.decode(seen[0].request_body) == {"email": "e@example.com"}
    assert msgspec.json.decode(seen[0].response_body)["email"] == "e@example.com"
    assert seen[1].response_headers["Content-Type"] == "application/problem+json"
    with pytest.raises(AttributeError):
        seen[0].status = 500  # frozen


# --- tariffs, suppliers, EVSE sites ----------------------------------------------------------


async def test_tariff_pages_sorted_by_name(fake: FakeEvEnergy, session: Any) -> None:
    url: str | None = f"{fake.base_url}/tariffs?page_size=3"
    names, pages = [], 0
    while url:
        reply = await get(session, url)
        names += [t["name"] for t in reply.json]
        pages += 1
        url = reply.links["next"]
    assert pages == 3 and len(names) == 8 and names == sorted(names)
    last = await get(session, f"{fake.base_url}/tariffs", params={"page": "3", "page_size": "3"})
    assert last.links["previous"] == f"{fake.base_url}/tariffs?page=2&page_size=3"
    assert last.links["next"] is None
    past = await get(session, f"{fake.base_url}/tariffs", params={"page": "4", "page_size": "3"})
    assert past.status == 404 and past.json["detail"] == "Invalid page."
    zero = await get(session, f"{fake.base_url}/tariffs", params={"page": "0"})
    assert zero.status == 400


async def test_tariff_filters(fake: FakeEvEnergy, session: Any) -> None:
    base = f"{fake.base_url}/tariffs"
    every = {t["id"] for t in (await get(session, base)).json}
    valid = {t["id"] for t in (await get(session, base, params={"valid": "true"})).json}
    invalid = {t["id"] for t in (await get(session, base, params={"valid": "false"})).json}
    assert valid and invalid and valid | invalid == every and not valid & invalid
    assert (await get(session, base, params={"valid": "maybe"})).status == 400
    supplier = fake.supplier_id(1)
    by_supplier = (await get(session, base, params={"supplier_id": supplier})).json
    assert by_supplier and all(t["supplier"].endswith(supplier) for t in by_supplier)
    region = (await get(session, base, params={"gsp_group": "_B"})).json
    assert all(t["gsp_group"] == "_B" for t in region)
    mine = (await get(session, base, params={"available_for_user_id": fake.user_id(1)})).json
    assert 0 < len(mine) < len(every)
    link = (await get(session, base, params={"supplier_id": supplier, "page_size": "1"})).links
    assert f"supplier_id={supplier}" in str(link["next"])


async def test_tariff_expansions_and_detail(fake: FakeEvEnergy, session: Any) -> None:
    params = [("expand", "supplier"), ("expand", "scheduler_tariff")]
    listed = (await get(session, f"{fake.base_url}/tariffs", params=params)).json
    assert all(isinstance(t["supplier"], dict) for t in listed)
    scheduled = [t for t in listed if t["scheduler_tariff"] is not None]
    assert scheduled and all(isinstance(t["scheduler_tariff"], dict) for t in scheduled)
    assert all(isinstance(t["scheduler_tariff"]["supplier"], str) for t in scheduled)
    url = f"{fake.base_url}/tariffs/{fake.tariff_id(1)}"
    detail = (await get(session, url)).json
    assert detail["prices"] == f"{url}/prices" and isinstance(detail["current_price"], int)
    assert detail["daily_prices"]["peak"]["price"]
    prices = (await get(session, url, params={"expand": "prices"})).json["prices"]
    assert len(prices) == 48 and all(p["interval_seconds"] == 1800 for p in prices)
    assert (await get(session, f"{fake.base_url}/tariffs/tari{'0' * 26}")).status == 404


async def test_suppliers(fake: FakeEvEnergy, session: Any) -> None:
    reply = await get(session, f"{fake.base_url}/suppliers", params={"page_size": "2"})
    names = [s["name"] for s in reply.json]
    assert names == sorted(names) and reply.links["next"]
    supplier = (await get(session, f"{fake.base_url}/suppliers/{fake.supplier_id(0)}")).json
    assert supplier["id"] == fake.supplier_id(0) and "icon" in supplier
    missing = await get(session, f"{fake.base_url}/suppliers/supl{'0' * 26}")
    assert missing.status == 404


async def test_evse_sites(fake: FakeEvEnergy, session: Any) -> None:
    reply = await get(session, f"{fake.base_url}/evse_sites")
    assert len(reply.json) == 3 and reply.links == {"previous": None, "next": None}
    connections = {s["cpms_connection"] for s in reply.json}
    assert connections == {None, "CHARGEPOINT", "SWTCH"}
    for site in reply.json:  # the static token acts for a user, so user_connected is known
        assert (site["user_connected"] is None) is (site["cpms_connection"] is None)
    site = (await get(session, f"{fake.base_url}/evse_sites/{fake.evse_site_id(2)}")).json
    assert site["id"] == fake.evse_site_id(2)


# --- vehicles and EVSEs ------------------------------------------------------------------------


async def walk(session: Any, url: str | None, rel: str = "next") -> list[str]:
    ids: list[str] = []
    while url:
        reply = await get(session, url)
        assert reply.status == 200, reply.body
        page = [item["id"] for item in reply.json]
        ids = ids + page if rel == "next" else page + ids
        url = reply.links[rel]
    return ids


@pytest.mark.parametrize(("collection", "field"), [("vehicles", "vehicles"), ("evses", "evses")])
async def test_every_device_a_user_links_is_served_and_listed(
    fake: FakeEvEnergy, session: Any, collection: str, field: str
) -> None:
    users = (await get(session, f"{fake.base_url}/users", params={"page_size": "100"})).json
    linked = [url for user in users for url in user[field]]
    assert linked  # the seed gives some users devices
    for url in linked:
        device = (await get(session, url)).json
        assert device["url"] == url and url.endswith(device["id"])
        owner = next(user for user in users if url in user[field])
        assert device["user"] == owner["url"]
    sites = (await get(session, f"{fake.base_url}/evse_sites")).json
    site_evses = [url for site in sites for url in site["evses"]] if field == "evses" else []
    every = sorted(url.rsplit("/", 1)[1] for url in linked + site_evses)
    forward = await walk(session, f"{fake.base_url}/{collection}?page_size=3")
    assert forward == every
    last = f"{collection[:4] if collection == 'evses' else 'vhcl'}{'Z' * 26}"
    backward = await walk(
        session, f"{fake.base_url}/{collection}?page_size=4&page_before={last}", "previous"
    )
    assert backward == every


async def test_a_site_evse_has_no_user_and_an_unknown_device_is_404(
    fake: FakeEvEnergy, session: Any
) -> None:
    site = (await get(session, f"{fake.base_url}/evse_sites/{fake.evse_site_id(0)}")).json
    evse = (await get(session, site["evses"][0])).json
    assert "user" not in evse and evse["location"] is None
    assert evse["cpid"].startswith("CP")
    for path in (f"vehicles/vhcl{'0' * 26}", f"evses/evse{'0' * 26}", "vehicles/nope"):
        missing = await get(session, f"{fake.base_url}/{path}")
        assert missing.status == 404 and missing.json["title"] == "Not found"


async def test_device_lists_filter_by_acting_user_and_cpid(
    fake: FakeEvEnergy, session: Any
) -> None:
    users = (await get(session, f"{fake.base_url}/users", params={"page_size": "100"})).json
    owner = next(user for user in users if len(user["vehicles"]) == 2 and user["evses"])
    acting = {"EvEnergy-User": owner["id"]}
    mine = (await get(session, f"{fake.base_url}/vehicles", headers=acting)).json
    assert [vehicle["url"] for vehicle in mine] == sorted(owner["vehicles"])
    one = await get(session, f"{fake.base_url}/vehicles", headers=acting, params={"page_size": "1"})
    assert one.links["next"] is not None and one.links["previous"] is None
    evse = (await get(session, owner["evses"][0])).json
    found = (await get(session, f"{fake.base_url}/evses", params={"cpid": evse["cpid"]})).json
    assert found == [evse]
    for other in ("CP" + "0" * 26, "SHIR100001"):
        assert (await get(session, f"{fake.base_url}/evses", params={"cpid": other})).json == []
    expanded = (await get(session, owner["vehicles"][0], params={"expand": "user"})).json
    assert expanded["user"]["id"] == owner["id"]
    refused = await get(session, f"{fake.base_url}/vehicles", params={"expand": "trim"})
    assert refused.status == 400 and refused.json["field_errors"] == {
        "expand": ['"trim" is not a valid choice.']
    }
    cursor = await get(session, f"{fake.base_url}/vehicles", params={"page_after": fake.user_id(1)})
    assert cursor.status == 400 and "page_after" in cursor.json["field_errors"]


async def test_serve_forever_until_cancelled() -> None:
    fake = FakeEvEnergy(users=2)
    task = asyncio.create_task(fake.serve_forever())
    await until(lambda: fake.port != 0)
    headers = {"Authorization": f"Bearer {fake.token}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        assert (await get(s, f"{fake.base_url}/users/me")).status == 200
        base_url = fake.base_url
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(s, f"{base_url}/users/me")


# --- scale -----------------------------------------------------------------------------------


async def test_a_million_users_cost_nothing_until_served() -> None:
    """Users are built from their index on demand, and a served page is cached: counted in
    records built, not in seconds."""
    fake = FakeEvEnergy(users=1_000_000, rate_limit=10**6)
    built = 0
    seeded = fake._store._seeded

    def counting(index: int, entropy: bytes) -> Any:
        nonlocal built
        built += 1
        return seeded(index, entropy)

    fake._store._seeded = counting  # type: ignore[method-assign]
    async with fake:
        assert built == 0
        headers = {"Authorization": f"Bearer {fake.token}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            params = {"page_size": "100", "page_after": fake.user_id(999_900)}
            late = await get(s, f"{fake.base_url}/users", params=params)
            ids = [u["id"] for u in late.json]
            assert ids == [fake.user_id(i) for i in range(999_901, 1_000_000)]
            assert late.links["next"] is None
            assert late.links["previous"] is not None
            email = fake.user_email(654_321)
            found = await get(s, f"{fake.base_url}/users", params={"email": email})
            assert [u["id"] for u in found.json] == [fake.user_id(654_321)]
            assert built < 200  # the late page, and the user found by email: not a million
            page_url = f"{fake.base_url}/users?page_size=100&page_after={fake.user_id(500_000)}"
            before = built
            first = await get(s, page_url)
            await until(lambda: built >= before + 200)  # this page, then the next prefetched
            served = built
            for _ in range(5):
                assert (await get(s, page_url)).body == first.body
            assert built == served  # cached: not one user built again
