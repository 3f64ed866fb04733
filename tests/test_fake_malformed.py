"""FakeEvEnergy answers malformed input with a 400 problem (never a 500 with a traceback).

The property test drives one fake, on an event loop of its own that runs for each request,
with generated query strings, headers and bodies on every endpoint; the examples pin the
inputs that once made it crash (``page_size=²``: ``isdigit()`` then ``int()``; 5000-digit
numbers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from evenergy_async.testing import FakeEvEnergy

PROBLEM = "application/problem+json"
HUGE = "9" * 5000
LONG = "9" * 1500  # four of them still fit aiohttp's 8190-byte request line


class Served:
    """A fake and a client session on an event loop of their own, run for each request."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakeEvEnergy(users=30, tariffs=6, suppliers=3, evse_sites=3, rate_limit=10**9)
        self.session: aiohttp.ClientSession | None = None
        self.run(self._start())

    async def _start(self) -> None:
        await self.fake.start()
        self.session = aiohttp.ClientSession()

    def run(self, coroutine: Any) -> Any:
        # a bound on a hang only: one loopback request
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, 60))

    def request(
        self, method: str, path_and_query: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, str, bytes]:
        async def send() -> tuple[int, str, bytes]:
            assert self.session is not None
            url = URL(self.fake.origin + path_and_query, encoded=True)
            async with self.session.request(method, url, headers=headers, data=body) as reply:
                return reply.status, reply.headers.get("Content-Type", ""), await reply.read()

        result: tuple[int, str, bytes] = self.run(send())
        return result

    def close(self) -> None:
        async def stop() -> None:
            if self.session is not None:
                await self.session.close()
            await self.fake.close()

        self.run(stop())
        self.loop.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = Served()
    yield server
    server.close()


def auth(served: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.fake.token}"}


# --- the inputs that once crashed it, and their neighbours -------------------------------------


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v2/users?page_size=%C2%B2", "page_size"),  # ²: isdigit() but not int()
        ("/v2/users?page_size=%D9%A3", "page_size"),  # Arabic-Indic 3
        (f"/v2/users?page_size={HUGE}", "page_size"),
        ("/v2/users?page_size=-1", "page_size"),
        ("/v2/users?page_size=0", "page_size"),
        ("/v2/users?page_size=%201", "page_size"),
        ("/v2/tariffs?page=%C2%B2", "page"),
        (f"/v2/tariffs?page={HUGE}", "page"),
        ("/v2/suppliers?page=0", "page"),
        ("/v2/suppliers?page=-3", "page"),
        ("/v2/users?page_after=%00%FF", "page_after"),
        ("/v2/users?page_before=user" + "!" * 26, "page_before"),
        ("/v2/vehicles?page_after=user" + "0" * 26, "page_after"),
        (f"/v2/evses?page_size={HUGE}", "page_size"),
        ("/v2/tariffs?valid=%C2%B2", "valid"),
        ("/v2/users?expand=%FF", "expand"),
    ],
)
def test_malformed_query_is_a_400_problem(served: Served, path: str, field: str) -> None:
    status, content_type, body = served.request("GET", path, auth(served), None)
    assert status == 400, body
    assert content_type == PROBLEM
    assert field in msgspec.json.decode(body)["field_errors"]


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b"{", "application/json", None),
        (b"[1, 2]", "application/json", None),
        (b'{"email": 5}', "application/json", "email"),
        (
            b'{"email": "a@example.com", "default_location": "x"}',
            "application/json",
            "default_location",
        ),
        (
            b'{"email": "a@example.com", "default_location": {"coordinates": {"latitude": "x"}}}',
            "application/json",
            "default_location.coordinates.latitude",
        ),
        (
            b'{"email": "a@example.com", "default_location": {"tariff": 7}}',
            "application/json",
            "default_location.tariff",
        ),
        (
            b"email=a%40example.com&default_location.coordinates.latitude=" + HUGE.encode(),
            "application/x-www-form-urlencoded",
            "default_location.coordinates.latitude",
        ),
        (b"\xff\xfe", "application/x-www-form-urlencoded", None),
        (b"--x\r\nno headers\r\n--x--", "multipart/form-data; boundary=x", None),
        (b"<user/>", "application/xml", None),
    ],
)
def test_malformed_body_is_a_400_problem(
    served: Served, body: bytes, content_type: str, field: str | None
) -> None:
    headers = {**auth(served), "Content-Type": content_type}
    status, answered, reply = served.request("POST", "/v2/users", headers, body)
    assert status == 400, reply
    assert answered == PROBLEM
    if field is not None:
        assert field in msgspec.json.decode(reply)["field_errors"]


def test_a_non_ascii_version_or_basic_credential_is_refused(served: Served) -> None:
    arabic_two = "\u0662".encode().decode("latin-1")  # as a header carries it
    status, content_type, _ = served.request(
        "GET", "/v2/users/me", {**auth(served), "EvEnergy-Version": arabic_two}, None
    )
    assert (status, content_type) == (400, PROBLEM)
    status, _, body = served.request(
        "POST",
        "/o/token/",
        {
            "Authorization": "Basic \u00e9\u00e9",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        b"grant_type=client_credentials",
    )
    assert status == 401 and msgspec.json.decode(body)["error"] == "invalid_client"


# --- the property ------------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/v2/users"),
    ("POST", "/v2/users"),
    ("GET", "/v2/users/me"),
    ("GET", "/v2/users/{user}"),
    ("PATCH", "/v2/users/{user}"),
    ("GET", "/v2/tariffs"),
    ("GET", "/v2/tariffs/{tariff}"),
    ("GET", "/v2/suppliers"),
    ("GET", "/v2/suppliers/{supplier}"),
    ("GET", "/v2/evse_sites"),
    ("GET", "/v2/evse_sites/{site}"),
    ("GET", "/v2/vehicles"),
    ("GET", "/v2/vehicles/{text}"),
    ("GET", "/v2/evses"),
    ("GET", "/v2/evses/{text}"),
    ("POST", "/o/token/"),
]
PARAMETERS = [
    "page_size",
    "page",
    "page_after",
    "page_before",
    "expand",
    "email",
    "valid",
    "gsp_group",
    "supplier_id",
    "available_for_user_id",
    "include_optional",
    "cpid",
]
numbers = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.sampled_from(
        ["²", "٣", "１", "1e3", "0x10", " 7", "7 ", "+7", "-0", "", LONG, "0" * 1500 + "5"]
    ),
)
values = st.one_of(
    numbers, st.text(max_size=40), st.sampled_from(["user" + "0" * 26, "%ZZ", "%FF"])
)
queries = st.lists(
    st.tuples(st.one_of(st.sampled_from(PARAMETERS), st.text(max_size=10)), values), max_size=4
)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=20),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    ["email", "default_location", "coordinates", "latitude", "tariff", "city"]
                ),
                st.text(max_size=8),
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.none(),
    json_values.map(lambda value: (msgspec.json.encode(value), "application/json")),
    st.binary(max_size=60).map(lambda raw: (raw, "application/json")),
    st.lists(st.tuples(st.text(max_size=30), st.one_of(numbers, st.text(max_size=20))), max_size=4)
    .map(lambda pairs: "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode())
    .map(lambda raw: (raw, "application/x-www-form-urlencoded")),
    st.binary(max_size=60).map(lambda raw: (raw, "multipart/form-data; boundary=b")),
    st.tuples(st.binary(max_size=20), st.sampled_from(["text/plain", "", "application/json; x"])),
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=30,
)
headers = st.dictionaries(
    st.sampled_from(["EvEnergy-Version", "EvEnergy-User", "Accept"]), header_values, max_size=3
)


def encode_query(pairs: list[tuple[str, str]]) -> str:
    """Percent-encoded, except ``%ZZ``/``%FF`` kept raw: malformed escapes reach the server."""
    parts = []
    for name, value in pairs:
        raw = value if value in ("%ZZ", "%FF") else quote(value, safe="")
        parts.append(f"{quote(name, safe='')}={raw}")
    return "&".join(parts)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    text=st.text(min_size=1, max_size=32).map(lambda t: quote(t, safe="")),
    query=queries,
    sent_headers=headers,
    body=bodies,
)
def test_no_input_makes_the_fake_answer_500(
    served: Served,
    endpoint: tuple[str, str],
    text: str,
    query: list[tuple[str, str]],
    sent_headers: dict[str, str],
    body: tuple[bytes, str] | None,
) -> None:
    fake = served.fake
    method, template = endpoint
    path = template.format(
        user=fake.user_id(3),
        tariff=fake.tariff_id(1),
        supplier=fake.supplier_id(1),
        site=fake.evse_site_id(1),
        text=text,
    )
    request_headers = {**auth(served), **sent_headers}
    data = None
    if body is not None and method != "GET":
        data, request_headers["Content-Type"] = body
    if template == "/o/token/":
        request_headers["Authorization"] = "Basic " + sent_headers.get("Accept", "")
    status, content_type, reply = served.request(
        method, f"{path}?{encode_query(query)}" if query else path, request_headers, data
    )
    assert status < 500, reply
    if status >= 400 and template.startswith("/v2"):
        assert content_type == PROBLEM
        problem = msgspec.json.decode(reply)
        assert problem["status"] == status
