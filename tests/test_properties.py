"""Property tests: hostile header values and bodies only ever give library results or the
library's own errors (never KeyError, TypeError, IndexError, ValueError, RecursionError...)."""

from __future__ import annotations

import math
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from evenergy_async import _bodies as b
from evenergy_async import _convert, _sansio
from evenergy_async import _validate as v
from evenergy_async.errors import APIError, InvalidRequest, InvalidResponse, status_error
from evenergy_async.models import (
    UNSET,
    EVSESite,
    LatLong,
    Location,
    Price,
    Supplier,
    Tariff,
    User,
)
from evenergy_async.refs import Ref

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_700_000_000.0
API = "https://api.ev.energy/v2"

# --- strategies ---------------------------------------------------------------------------------

header_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="latin-1")),
    st.binary().map(lambda b: b.decode("latin-1")),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.integers().map(str),
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-0", "0x10", "1_000", "٣", "１２"]
    ),
    st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
    st.builds(
        "{}, {:02d} {} {:04d} {:02d}:{:02d}:{:02d} {}".format,
        st.sampled_from(["Mon", "Tue", "Xyz", ""]),
        st.integers(0, 99),
        st.sampled_from(["Jan", "Feb", "Foo", ""]),
        st.integers(0, 99999),
        st.integers(0, 99),
        st.integers(0, 99),
        st.integers(0, 99),
        st.sampled_from(["GMT", "UTC", "+9999", "-0000", "+0100", "", "Z"]),
    ),
)

link_fragment = st.sampled_from(
    [
        *("<", ">", ";", ",", '"', "\\", "=", " ", "\t", "rel", "next", "previous", "about:blank"),
        *("https://api.ev.energy/v2/users?page_after=x", "*", "'", "\n", "\x00", "é"),
    ]
)
link_text = st.one_of(
    header_text,
    st.lists(link_fragment, max_size=30).map("".join),
    st.lists(
        st.tuples(
            st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=30),
            st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=4),
        ),
        max_size=4,
    ).map(
        lambda links: ", ".join(
            f"<{url}>" + "".join(f'; {k}="{val}"' for k, val in params) for url, params in links
        )
    ),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(
        ["GB", "XX", "2023-06-15T10:00:00Z", "2026-03-17", "FLAT_RATE", "CHARGEPOINT", API, ""]
    ),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    ),
    max_leaves=8,
)

USER_KEYS = [
    "id",
    "url",
    "email",
    "full_name",
    "joined_at",
    "terms_consent_datetime",
    "default_location",
    "vehicles",
    "evses",
]
LOCATION_KEYS = [
    "address_1",
    "address_2",
    "postal_code",
    "country_code",
    "coordinates",
    "tariff",
    "city",
    "state",
    "evse_site",
    "current_carbon_intensity_grams_per_kilowatt_hour",
]
TARIFF_KEYS = [
    "id",
    "url",
    "supplier",
    "name",
    "currency",
    "highlighted",
    "type",
    "daily_prices",
    "timezone_name",
    "price_chart_url",
    "gsp_group",
    "valid_from",
    "valid_until",
    "scheduler_tariff",
    "current_price",
    "prices",
]
SUPPLIER_KEYS = ["id", "url", "name", "icon", "highlighted"]
SITE_KEYS = ["id", "url", "evses", "cpms_connection", "cpms_connection_display_name"]
SITE_KEYS.append("user_connected")
PRICE_KEYS = ["started_at", "interval_seconds", "price_minor_units"]


def shaped(
    keys: list[str], plausible: dict[str, st.SearchStrategy[Any]], required: int = 0
) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the model's own keys holding mostly plausible, sometimes junk values (the
    first `required` keys nearly always there), plus maybe an unknown key."""

    def value(key: str) -> st.SearchStrategy[Any]:
        good = plausible.get(key, json_scalars)
        return st.one_of(good, good, good, json_values)

    fields = st.fixed_dictionaries(
        {k: value(k) for k in keys[:required]},
        optional={k: value(k) for k in keys[required:]},
    )
    extra = st.dictionaries(st.text(max_size=5), json_scalars, max_size=1)
    return st.tuples(fields, extra).map(lambda pair: {**pair[1], **pair[0]})


def url_to(collection: str) -> st.SearchStrategy[str]:
    return st.just(f"{API}/{collection}/{collection[:4]}01HN2NJ9NMRZBXT1H6FT9N7735")


DATETIME = st.sampled_from(["2023-06-15T10:00:00Z", "2023-06-15T10:00:00+01:00", "2023-13-01"])
supplier_like = shaped(
    SUPPLIER_KEYS,
    {
        "id": st.just("supl01"),
        "url": url_to("suppliers"),
        "name": st.text(max_size=5),
        "icon": st.none(),
        "highlighted": st.booleans(),
    },
    required=4,
)
price_like = shaped(
    PRICE_KEYS,
    {"started_at": DATETIME, "interval_seconds": st.integers(), "price_minor_units": st.integers()},
    required=3,
)
site_like = shaped(
    SITE_KEYS,
    {
        "id": st.just("site01"),
        "url": url_to("evse_sites"),
        "evses": st.lists(url_to("evses"), max_size=2),
        "cpms_connection": st.sampled_from([None, "CHARGEPOINT", "SWTCH", "OTHER"]),
        "user_connected": st.one_of(st.none(), st.booleans()),
    },
    required=4,
)
tariff_like = shaped(
    TARIFF_KEYS,
    {
        "id": st.just("tari01"),
        "url": url_to("tariffs"),
        "supplier": st.one_of(url_to("suppliers"), supplier_like),
        "name": st.text(max_size=5),
        "currency": st.just("GBP"),
        "type": st.sampled_from(["FLAT_RATE", "DYNAMIC", "CHEAP"]),
        "daily_prices": st.dictionaries(st.text(max_size=3), json_scalars, max_size=2),
        "valid_from": st.sampled_from(["2026-03-17", "2026-02-30"]),
        "valid_until": st.sampled_from([None, "2027-03-17", "x"]),
        "scheduler_tariff": st.one_of(st.none(), url_to("tariffs")),
        "current_price": st.one_of(st.none(), st.integers()),
        "prices": st.one_of(url_to("prices"), st.lists(price_like, max_size=2)),
    },
    required=5,
)
location_like = shaped(
    LOCATION_KEYS,
    {
        "country_code": st.sampled_from(["GB", "US", "XX", None]),
        "coordinates": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {}, optional={"latitude": json_scalars, "longitude": json_scalars}
            ),
        ),
        "tariff": st.one_of(st.none(), url_to("tariffs"), tariff_like),
        "evse_site": st.one_of(st.none(), url_to("evse_sites"), site_like),
        "current_carbon_intensity_grams_per_kilowatt_hour": st.one_of(st.none(), st.integers()),
    },
)
user_like = shaped(
    USER_KEYS,
    {
        "id": st.just("user01HN2NJ9NMRZBXT1H6FT9N7735"),
        "url": url_to("users"),
        "email": st.just("a@example.com"),
        "joined_at": DATETIME,
        "terms_consent_datetime": st.one_of(st.none(), DATETIME),
        "default_location": location_like,
        "vehicles": st.lists(url_to("vehicles"), max_size=2),
        "evses": st.lists(url_to("evses"), max_size=2),
    },
    required=2,
)

MODELS: list[tuple[type[Any], st.SearchStrategy[Any]]] = [
    (User, user_like),
    (Tariff, tariff_like),
    (Supplier, supplier_like),
    (EVSESite, site_like),
    (Price, price_like),
]
model_and_data = st.one_of(
    *[st.tuples(st.just(cls), st.one_of(strategy, json_values)) for cls, strategy in MODELS]
)
any_model_like = st.one_of([strategy for _, strategy in MODELS])

STATUSES = [400, 401, 403, 404, 405, 406, 409, 413, 422, 429, 500, 502, 503, 504]
statuses = st.one_of(st.sampled_from(STATUSES), st.integers(400, 599))
content_types = st.one_of(
    st.sampled_from(
        [
            "application/problem+json",
            "application/json",
            "APPLICATION/PROBLEM+JSON; charset=utf-8",
            "text/html",
            "",
        ]
    ),
    st.text(max_size=30),
)
problem_like = st.fixed_dictionaries(
    {},
    optional={
        "type": json_values,
        "title": json_values,
        "status": json_values,
        "detail": json_values,
        "instance": json_values,
        "field_errors": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(msgspec.json.encode),
    problem_like.map(msgspec.json.encode),
)


def headers_from(pairs: list[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


header_names = st.sampled_from(
    [
        "Retry-After",
        "RetryAfter",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "Link",
        "Content-Type",
    ]
)
header_maps = st.lists(st.tuples(header_names, header_text), max_size=6).map(headers_from)


# --- header values ------------------------------------------------------------------------------


@SETTINGS
@given(link_text)
def test_link_parsing_never_crashes(value):
    try:
        links = _sansio.parse_link_header(value)
    except InvalidResponse:
        return
    assert isinstance(links, list)
    for target, params in links:
        assert isinstance(target, str)
        assert all(isinstance(k, str) and k == k.lower() for k in params)
        assert all(isinstance(val, str) for val in params.values())
    rels = _sansio.links_by_rel(value)
    for rel, url in rels.items():
        assert rel == rel.lower() and rel.strip() == rel and rel
        assert url is None or isinstance(url, str)
        assert url != "about:blank"


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=40),
            st.sampled_from(["next", "previous", "last"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_link_roundtrip(links):
    header = ", ".join(f'<{url}>; rel="{rel}"' for url, rel in links)
    found = _sansio.links_by_rel(header)
    assert set(found) == {rel for _, rel in links}
    for rel in found:
        first = next(url for url, r in links if r == rel).strip()  # the first link of a rel wins
        assert found[rel] == (None if first == "about:blank" else first)


@SETTINGS
@given(header_text)
def test_parse_count_never_crashes(value):
    count = _sansio.parse_count(value)
    assert count is None or (isinstance(count, int) and count >= 0)


@SETTINGS
@given(header_text, st.floats(min_value=0, max_value=4e9))
def test_parse_retry_after_never_crashes(value, now):
    wait = _sansio.parse_retry_after(value, now)
    assert wait is None or (isinstance(wait, float) and math.isfinite(wait) and wait >= 0)


@SETTINGS
@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_parse_retry_after_integers(seconds):
    wait = _sansio.parse_retry_after(str(seconds), NOW)
    assert wait is not None
    if seconds <= 0:
        assert wait == 0.0
    else:
        assert 0 < wait <= float(seconds)
    if 0 <= seconds < 86400:
        assert wait == float(seconds)


@SETTINGS
@given(header_maps, st.sampled_from([200, 429, 503]))
def test_rate_limit_from_headers_never_crashes(headers, status):
    rate = _sansio.rate_limit_from_headers(headers, status, NOW)
    if rate is None:
        return
    assert rate.limit is None or rate.limit >= 0
    assert rate.remaining is None or rate.remaining >= 0
    if rate.limit is not None and rate.remaining is not None:
        assert rate.remaining <= rate.limit
    assert rate.retry_after is None or (math.isfinite(rate.retry_after) and rate.retry_after >= 0)


# --- error bodies -------------------------------------------------------------------------------


@SETTINGS
@given(statuses, content_types, bodies, header_maps)
def test_error_from_response_never_crashes(status, content_type, body, headers):
    headers = headers.copy()
    headers["Content-Type"] = content_type
    exc = _sansio.error_from_response(status, headers, body, NOW)
    assert isinstance(exc, APIError)
    assert type(exc) is status_error(status)
    assert exc.status == status
    for name in ("type", "title", "detail", "instance"):
        assert getattr(exc, name) is None or isinstance(getattr(exc, name), str)
    for key, messages in exc.field_errors.items():
        assert isinstance(key, str)
        assert isinstance(messages, tuple) and messages
        assert all(isinstance(m, str) for m in messages)
    assert str(status) in str(exc)
    assert type(exc).__name__ in repr(exc)


@SETTINGS
@given(json_values)
def test_flatten_field_errors_shape(value):
    flat = _sansio.flatten_field_errors(value)
    assert all(isinstance(k, str) for k in flat)
    assert all(isinstance(m, tuple) and all(isinstance(x, str) for x in m) for m in flat.values())


# --- decoding -----------------------------------------------------------------------------------


def decode(data: Any, cls: type[Any], resolver: Any) -> tuple[Any, list[Ref[Any]]]:
    return _convert.decode(msgspec.json.encode(data), cls, resolver)


def decode_list(data: Any, cls: type[Any], resolver: Any) -> tuple[list[Any], list[Ref[Any]]]:
    return _convert.decode_list(msgspec.json.encode(data), cls, resolver)


def _check_refs(value: Any) -> None:
    for ref in getattr(value, "vehicles", ()) + getattr(value, "evses", ()):
        assert isinstance(ref, Ref) and isinstance(ref.url, str)


@SETTINGS
@given(model_and_data)
def test_decode_gives_model_or_invalid_response(pair):
    cls, data = pair
    try:
        value, expanded = decode(data, cls, None)
    except InvalidResponse:
        return
    assert isinstance(value, cls)
    assert all(isinstance(r, Ref) and r.resolved for r in expanded)
    _check_refs(value)
    if cls is User:
        assert isinstance(value.id, str) and isinstance(value.url, str)
        loc = value.default_location
        assert loc is UNSET or isinstance(loc, Location)


@SETTINGS
@given(
    st.sampled_from([cls for cls, _ in MODELS]),
    st.one_of(json_values, st.lists(st.one_of(any_model_like, json_values), max_size=3)),
)
def test_decode_list_gives_models_or_invalid_response(cls, data):
    try:
        items, expanded = decode_list(data, cls, None)
    except InvalidResponse:
        return
    assert isinstance(data, list)
    assert len(items) == len(data)
    assert all(isinstance(item, cls) for item in items)
    assert all(isinstance(r, Ref) for r in expanded)


@SETTINGS
@given(st.binary(max_size=300))
def test_decode_json_bytes(body):
    try:
        _sansio.decode_json(body)
    except InvalidResponse:
        return
    for cls in (User, Tariff):
        try:
            value, _ = _convert.decode(body, cls, None)
        except InvalidResponse:
            continue
        assert isinstance(value, cls)


# --- request checks -----------------------------------------------------------------------------

text_or_junk = st.one_of(
    st.just(UNSET),
    st.none(),
    st.text(max_size=10),
    st.integers(),
    st.booleans(),
    st.binary(max_size=3),
)
location_args = st.fixed_dictionaries(
    {},
    optional={
        "address_1": text_or_junk,
        "address_2": text_or_junk,
        "city": text_or_junk,
        "state": text_or_junk,
        "postal_code": text_or_junk,
        "country_code": st.one_of(text_or_junk, st.sampled_from(["GB", "US", "XX"])),
        "coordinates": st.one_of(
            st.just(UNSET),
            st.none(),
            st.builds(
                LatLong,
                st.one_of(st.floats(), st.integers(), st.booleans(), st.text(max_size=3)),
                st.one_of(st.floats(), st.integers(), st.booleans(), st.none()),
            ),
            json_values,
        ),
        "tariff": st.one_of(
            st.just(UNSET), st.none(), st.just(Ref(f"{API}/tariffs/x")), json_values
        ),
    },
)


@SETTINGS
@given(location_args)
def test_location_body_valid_or_invalid_request(args):
    try:
        body = b.location_body(Location(**args))
    except InvalidRequest as exc:
        assert isinstance(exc, ValueError)
        assert exc.field.startswith("default_location")
        return
    msgspec.json.encode(body)  # JSON-ready
    assert set(body) <= set(args)
    assert all(args[k] is not UNSET for k in body)
    given_address = [
        k for k, val in body.items() if val is not None and k not in ("tariff", "evse_site")
    ]
    if given_address:
        for k in ("address_1", "city", "postal_code", "country_code"):
            assert isinstance(body.get(k), str)
    b.form_fields(body)


@SETTINGS
@given(json_values)
def test_check_functions_only_raise_invalid_request(value):
    checks = [
        lambda: v.check_id(value, v.USER_ID, "user_id", me=True),
        lambda: v.check_cursor(value, "page_after"),
        lambda: v.check_page_size(value),
        lambda: v.check_page_number(value),
        lambda: v.check_email(value),
        lambda: v.check_bool(value, "valid"),
        lambda: v.check_text(value, "gsp_group"),
    ]
    for check in checks:
        try:
            result = check()
        except InvalidRequest as exc:
            assert isinstance(exc, ValueError)
            continue
        assert result == value  # a check passes its input through unchanged


@SETTINGS
@given(json_values)
def test_check_expand_only_raises_invalid_request(value):
    try:
        result = v.check_expand(value, v.USER_EXPANSIONS)
    except InvalidRequest:
        return
    assert set(result) <= v.USER_EXPANSIONS
