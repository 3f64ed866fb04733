"""Decoding responses into models, encoding requests, and the input checks of `_validate`."""

from __future__ import annotations

import asyncio
import copy
import gc
import math
from datetime import date, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from evenergy_async import _bodies as b
from evenergy_async import _convert
from evenergy_async import _validate as v
from evenergy_async._convert import to_wire
from evenergy_async.errors import EvEnergyError, InvalidRequest, InvalidResponse
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
from evenergy_async.refs import Ref, ref_to

API = "https://api.ev.energy/v2"
UID = "user01HN2NJ9NMRZBXT1H6FT9N7735"
TID = "tari01HN2NJ9NMRZBXT1H6FT9N7735"
TID2 = "tari01HN2NJ9NMRZBXT1H6FT9N7835"
SID = "supl01HN2NJ9NMRZBXT1H6FT9N7735"
SITE = "site01JX2SZ0WAFTDYVYY0JRAYREY7"


def user_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": UID,
        "url": f"{API}/users/{UID}",
        "email": "frodo@example.com",
        "full_name": "Frodo Baggins",
        "joined_at": "2023-06-15T10:00:00Z",
        "terms_consent_datetime": None,
        "default_location": {
            "address_1": "Bag End",
            "address_2": None,
            "postal_code": "HB1 1AA",
            "country_code": "GB",
            "coordinates": {"latitude": 51.52576576674041, "longitude": -0.08366433371722264},
            "tariff": f"{API}/tariffs/{TID}",
            "city": "Hobbiton",
            "state": None,
            "evse_site": None,
        },
        "vehicles": [f"{API}/vehicles/vhcl01HRFF3SEVSCRAV9B3CHVDFN0H"],
        "evses": [],
    }
    data.update(overrides)
    return data


def supplier_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": SID,
        "url": f"{API}/suppliers/{SID}",
        "name": "Rivendell Renewables",
        "icon": "https://cdn.example.com/rivendell.jpg",
        "highlighted": True,
    }
    data.update(overrides)
    return data


def tariff_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": TID,
        "url": f"{API}/tariffs/{TID}",
        "supplier": f"{API}/suppliers/{SID}",
        "name": "Fangorn Biomass",
        "currency": "GBP",
        "highlighted": False,
        "type": "DUAL_RATE",
        "gsp_group": "_C",
        "valid_from": "2026-03-17",
        "valid_until": "2027-03-17",
        "timezone_name": "Europe/London",
        "price_chart_url": None,
        "daily_prices": {
            "peak": {"price": "0.30", "times": [{"start": "18:00:00", "end": "00:00:00"}]},
        },
        "scheduler_tariff": f"{API}/tariffs/{TID2}",
    }
    data.update(overrides)
    return data


def site_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": SITE,
        "url": f"{API}/evse_sites/{SITE}",
        "evses": [f"{API}/evses/evse01HSH04KDEWF6Z4DB2J77J74K5"],
        "cpms_connection": "CHARGEPOINT",
        "cpms_connection_display_name": "ChargePoint",
        "user_connected": None,
    }
    data.update(overrides)
    return data


def decode(data: Any, cls: type[Any], resolver: Any) -> tuple[Any, list[Ref[Any]]]:
    """`_convert.decode` of `data` as a response body."""
    return _convert.decode(msgspec.json.encode(data), cls, resolver)


def decode_list(data: Any, cls: type[Any], resolver: Any) -> tuple[list[Any], list[Ref[Any]]]:
    return _convert.decode_list(msgspec.json.encode(data), cls, resolver)


class FakeResolver:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(self, ref: Ref[Any] | str) -> Any:
        url = ref.url if isinstance(ref, Ref) else ref
        self.asked.append(url)
        return {"resolved": url}


# --- User ---------------------------------------------------------------------------------------


def test_decode_user_list_form():
    user, expanded = decode(user_json(), User, None)
    assert expanded == []
    assert user.id == UID
    assert user.url == f"{API}/users/{UID}"
    assert user.email == "frodo@example.com"
    assert user.full_name == "Frodo Baggins"
    assert user.joined_at == datetime(2023, 6, 15, 10, tzinfo=timezone.utc)
    assert user.terms_consent_datetime is None
    loc = user.default_location
    assert isinstance(loc, Location)
    assert loc.address_1 == "Bag End"
    assert loc.address_2 is None
    assert loc.country_code == "GB"
    assert loc.coordinates == LatLong(51.52576576674041, -0.08366433371722264)
    assert isinstance(loc.tariff, Ref)
    assert loc.tariff.url == f"{API}/tariffs/{TID}"
    assert loc.tariff.id == TID
    assert not loc.tariff.resolved
    assert loc.evse_site is None
    assert loc.current_carbon_intensity_grams_per_kilowatt_hour is UNSET
    assert [r.id for r in user.vehicles] == ["vhcl01HRFF3SEVSCRAV9B3CHVDFN0H"]
    assert user.evses == ()


def test_decode_user_detail_form():
    data = user_json(terms_consent_datetime="2023-06-15T10:00:00+01:00")
    data["default_location"]["current_carbon_intensity_grams_per_kilowatt_hour"] = 300
    user, _ = decode(data, User, None)
    assert user.default_location.current_carbon_intensity_grams_per_kilowatt_hour == 300
    assert user.terms_consent_datetime == datetime(
        2023, 6, 15, 10, tzinfo=timezone(timedelta(hours=1))
    )


def test_decode_user_detail_carbon_null():
    data = user_json()
    data["default_location"]["current_carbon_intensity_grams_per_kilowatt_hour"] = None
    user, _ = decode(data, User, None)
    assert user.default_location.current_carbon_intensity_grams_per_kilowatt_hour is None


def test_decode_user_minimal_fields_are_unset():
    user, _ = decode({"id": UID, "url": f"{API}/users/{UID}"}, User, None)
    assert user.email is UNSET
    assert user.full_name is UNSET
    assert user.joined_at is UNSET
    assert user.terms_consent_datetime is UNSET
    assert user.default_location is UNSET
    assert user.vehicles == ()


def test_decode_user_cleared_location():
    location = dict.fromkeys(
        [
            *("address_1", "address_2", "postal_code", "country_code", "coordinates", "tariff"),
            *("city", "state", "evse_site"),
        ]
    )
    user, _ = decode(user_json(default_location=location), User, None)
    assert user.default_location == Location(**location)


def test_decode_user_unknown_fields_ignored():
    data = user_json(shoe_size=9, nested={"x": [1, 2]})
    data["default_location"]["elevation"] = 123
    user, _ = decode(data, User, None)
    assert user.id == UID
    assert not hasattr(user, "shoe_size")


def test_decode_user_expanded_tariff_supplier_and_site():
    tariff = tariff_json(supplier=supplier_json())
    data = user_json()
    data["default_location"]["tariff"] = tariff
    data["default_location"]["evse_site"] = site_json()
    user, expanded = decode(data, User, None)
    ref = user.default_location.tariff
    assert ref.resolved
    assert ref.url == tariff["url"]
    assert isinstance(ref.value, Tariff)
    assert ref.value.name == "Fangorn Biomass"
    supplier_ref = ref.value.supplier
    assert supplier_ref.resolved
    assert isinstance(supplier_ref.value, Supplier)
    assert supplier_ref.value.name == "Rivendell Renewables"
    site_ref = user.default_location.evse_site
    assert site_ref.resolved
    assert isinstance(site_ref.value, EVSESite)
    assert site_ref.value.cpms_connection == "CHARGEPOINT"
    assert {r.url for r in expanded} == {tariff["url"], supplier_json()["url"], site_json()["url"]}
    assert all(r.resolved for r in expanded)
    # the scheduler tariff was not expanded: an unresolved Ref, not reported
    assert not ref.value.scheduler_tariff.resolved
    assert ref.value.scheduler_tariff.url not in {r.url for r in expanded}


def test_decode_list_reports_expansions_of_every_item():
    items = []
    for i in range(3):
        data = user_json(id=f"user{i:026d}", url=f"{API}/users/user{i:026d}")
        data["default_location"]["tariff"] = tariff_json(
            id=f"tari{i:026d}", url=f"{API}/tariffs/tari{i:026d}"
        )
        items.append(data)
    users, expanded = decode_list(items, User, None)
    assert [u.id for u in users] == [f"user{i:026d}" for i in range(3)]
    assert [r.url for r in expanded] == [f"{API}/tariffs/tari{i:026d}" for i in range(3)]


async def test_decoded_refs_resolve_through_the_resolver():
    resolver = FakeResolver()
    user, _ = decode(user_json(), User, resolver)
    tariff_ref = user.default_location.tariff
    value = await tariff_ref.resolve()
    assert value == {"resolved": f"{API}/tariffs/{TID}"}
    assert tariff_ref.resolved
    assert await tariff_ref.resolve() is value
    assert resolver.asked == [f"{API}/tariffs/{TID}"]  # once


async def test_a_decoded_vehicle_ref_is_the_ref_its_constructor_makes():
    # The decoder builds these Refs without Ref.__init__: every slot must match.
    resolver = FakeResolver()
    data = user_json()
    data["vehicles"] = [f"{API}/vehicles/vhcl{0:026d}"]
    user, _ = decode(data, User, resolver)
    (decoded,) = user.vehicles
    made = ref_to(Any)(data["vehicles"][0], resolver=resolver)
    assert type(decoded) is type(made)
    for slot in Ref.__slots__:
        assert getattr(decoded, slot) == getattr(made, slot), slot
    assert not decoded.resolved
    assert await decoded == {"resolved": data["vehicles"][0]}
    assert resolver.asked == [data["vehicles"][0]]


async def test_await_ref_is_resolve():
    resolver = FakeResolver()
    user, _ = decode(user_json(), User, resolver)
    value = await user.default_location.tariff
    assert value == {"resolved": f"{API}/tariffs/{TID}"}
    assert await user.default_location.tariff is value
    assert resolver.asked == [f"{API}/tariffs/{TID}"]


async def test_ref_without_resolver():
    user, _ = decode(user_json(), User, None)
    with pytest.raises(EvEnergyError):
        await user.default_location.tariff.resolve()
    with pytest.raises(EvEnergyError):
        _ = user.default_location.tariff.value


def test_ref_equality_and_id():
    a = Ref(f"{API}/tariffs/{TID}/")
    b = Ref(f"{API}/tariffs/{TID}/", value=1)
    assert a == b
    assert hash(a) == hash(b)
    assert a.id == TID
    assert Ref(f"{API}/tariffs/{TID}?expand=x#f").id == TID


# --- Tariff / Supplier / EVSESite / Price -------------------------------------------------------


def test_decode_tariff():
    tariff, expanded = decode(tariff_json(), Tariff, None)
    assert expanded == []
    assert tariff.id == TID
    assert tariff.supplier.url == f"{API}/suppliers/{SID}"
    assert not tariff.supplier.resolved
    assert tariff.type == "DUAL_RATE"
    assert tariff.valid_from == date(2026, 3, 17)
    assert tariff.valid_until == date(2027, 3, 17)
    assert tariff.price_chart_url is None
    assert tariff.daily_prices["peak"]["price"] == "0.30"
    assert tariff.scheduler_tariff.id == TID2
    assert tariff.current_price is UNSET
    assert tariff.prices is UNSET


def test_decode_tariff_minimal():
    data = {k: tariff_json()[k] for k in ("id", "url", "supplier", "name", "currency")}
    tariff, _ = decode(data, Tariff, None)
    assert tariff.type is UNSET
    assert tariff.valid_from is UNSET
    assert tariff.scheduler_tariff is UNSET


def test_decode_tariff_detail_with_prices_url():
    data = tariff_json(current_price=10, prices=f"{API}/tariffs/{TID}/prices", valid_until=None)
    tariff, expanded = decode(data, Tariff, None)
    assert tariff.current_price == 10
    assert isinstance(tariff.prices, Ref)
    assert tariff.prices.url.endswith("/prices")
    assert tariff.valid_until is None
    assert expanded == []


def test_decode_tariff_detail_with_expanded_prices_and_supplier():
    prices = [
        {"started_at": "2024-01-15T10:00:00Z", "interval_seconds": 1800, "price_minor_units": 10},
        {"started_at": "2024-01-15T10:30:00Z", "interval_seconds": 1800, "price_minor_units": 12},
    ]
    data = tariff_json(supplier=supplier_json(), prices=prices, scheduler_tariff=None)
    tariff, expanded = decode(data, Tariff, None)
    assert tariff.prices == (
        Price(
            started_at=datetime(2024, 1, 15, 10, tzinfo=timezone.utc),
            interval_seconds=1800,
            price_minor_units=10,
        ),
        Price(
            started_at=datetime(2024, 1, 15, 10, 30, tzinfo=timezone.utc),
            interval_seconds=1800,
            price_minor_units=12,
        ),
    )
    assert tariff.supplier.resolved
    assert tariff.scheduler_tariff is None
    assert [r.url for r in expanded] == [supplier_json()["url"]]


def test_decode_tariff_expanded_scheduler_tariff():
    sched = {
        "id": TID2,
        "url": f"{API}/tariffs/{TID2}",
        "supplier": f"{API}/suppliers/{SID}",
        "name": "Sched",
        "currency": "GBP",
        "extra": 1,
    }
    tariff, expanded = decode(tariff_json(scheduler_tariff=sched), Tariff, None)
    assert tariff.scheduler_tariff.resolved
    assert tariff.scheduler_tariff.value.name == "Sched"
    assert [r.url for r in expanded] == [sched["url"]]


@pytest.mark.parametrize(
    "kind", ["FLAT_RATE", "DUAL_RATE", "THREE_RATE", "DYNAMIC", "EXTERNALLY_MANAGED", "OTHER"]
)
def test_decode_tariff_every_type(kind):
    tariff, _ = decode(tariff_json(type=kind), Tariff, None)
    assert tariff.type == kind


def test_decode_supplier():
    supplier, _ = decode(supplier_json(icon=None, unknown="x"), Supplier, None)
    assert supplier == Supplier(
        id=SID,
        url=f"{API}/suppliers/{SID}",
        name="Rivendell Renewables",
        icon=None,
        highlighted=True,
    )


@pytest.mark.parametrize("cpms", ["CHARGEPOINT", "SWTCH", None])
def test_decode_evse_site(cpms):
    site, _ = decode(site_json(cpms_connection=cpms), EVSESite, None)
    assert site.cpms_connection == cpms
    assert [r.id for r in site.evses] == ["evse01HSH04KDEWF6Z4DB2J77J74K5"]
    assert site.cpms_connection_display_name == "ChargePoint"
    assert site.user_connected is None


def test_decode_price():
    price, _ = decode(
        {"started_at": "2024-01-15T10:00:00Z", "interval_seconds": 1800, "price_minor_units": -3},
        Price,
        None,
    )
    assert price.interval_seconds == 1800
    assert type(price.interval_seconds) is int
    assert price.price_minor_units == -3


def test_decode_list_of_each_model():
    suppliers, _ = decode_list(
        [supplier_json(), supplier_json(id="supl" + "B" * 26)], Supplier, None
    )
    assert [s.id for s in suppliers] == [SID, "supl" + "B" * 26]
    tariffs, _ = decode_list([tariff_json()], Tariff, None)
    assert tariffs[0].name == "Fangorn Biomass"
    sites, _ = decode_list([site_json()], EVSESite, None)
    assert sites[0].id == SITE
    assert decode_list([], User, None) == ([], [])


# --- malformed input ----------------------------------------------------------------------------


def _loc(**fields: Any) -> dict[str, Any]:
    data = user_json()
    data["default_location"].update(fields)
    return data


BAD_USERS = {
    "not an object": [user_json()],
    "string": "user",
    "null": None,
    "number": 5,
    "missing id": {k: val for k, val in user_json().items() if k != "id"},
    "missing url": {k: val for k, val in user_json().items() if k != "url"},
    "id not a string": user_json(id=5),
    "url null": user_json(url=None),
    "email number": user_json(email=5),
    "email null": user_json(email=None),
    "full_name list": user_json(full_name=["F"]),
    "joined_at garbage": user_json(joined_at="yesterday"),
    "joined_at number": user_json(joined_at=1700000000),
    "joined_at bad month": user_json(joined_at="2023-13-15T10:00:00Z"),
    "joined_at null": user_json(joined_at=None),
    "consent garbage": user_json(terms_consent_datetime="not a date"),
    "location null": user_json(default_location=None),
    "location list": user_json(default_location=[]),
    "location string": user_json(default_location="Bag End"),
    "address_1 number": _loc(address_1=1),
    "city bool": _loc(city=True),
    "state dict": _loc(state={}),
    "country unknown": _loc(country_code="XX"),
    "country lowercase": _loc(country_code="gb"),
    "country alpha-3": _loc(country_code="GBR"),
    "country list": _loc(country_code=["GB"]),
    "country dict": _loc(country_code={"GB": 1}),
    "country number": _loc(country_code=826),
    "coordinates list": _loc(coordinates=[51.5, -0.1]),
    "coordinates missing longitude": _loc(coordinates={"latitude": 51.5}),
    "coordinates string latitude": _loc(coordinates={"latitude": "51.5", "longitude": 0}),
    "coordinates bool": _loc(coordinates={"latitude": True, "longitude": 0}),
    "tariff number": _loc(tariff=5),
    "tariff list": _loc(tariff=["x"]),
    "tariff object without url": _loc(tariff={"id": TID}),
    "tariff object bad url": _loc(tariff={"url": 5}),
    "tariff expanded missing name": _loc(
        tariff={k: val for k, val in tariff_json().items() if k != "name"}
    ),
    "tariff expanded bad type": _loc(tariff=tariff_json(type="CHEAP")),
    "evse_site number": _loc(evse_site=3),
    "evse_site expanded bad cpms": _loc(evse_site=site_json(cpms_connection="OTHER")),
    "carbon string": _loc(current_carbon_intensity_grams_per_kilowatt_hour="300"),
    "carbon fractional": _loc(current_carbon_intensity_grams_per_kilowatt_hour=300.5),
    "carbon bool": _loc(current_carbon_intensity_grams_per_kilowatt_hour=True),
    "vehicles string": user_json(vehicles="https://x"),
    "vehicles of numbers": user_json(vehicles=[1, 2]),
    "evses of objects": user_json(evses=[{"url": "x"}]),
}


@pytest.mark.parametrize("data", BAD_USERS.values(), ids=BAD_USERS.keys())
def test_decode_bad_user_raises_invalid_response(data):
    with pytest.raises(InvalidResponse) as info:
        decode(data, User, None)
    assert "User" in str(info.value)


@pytest.mark.parametrize("data", BAD_USERS.values(), ids=BAD_USERS.keys())
def test_decode_list_bad_user_raises_invalid_response(data):
    with pytest.raises(InvalidResponse):
        decode_list([user_json(), data], User, None)


@pytest.mark.parametrize("value", [0, "", {}, False])
def test_decode_user_falsy_non_array_vehicles(value):
    with pytest.raises(InvalidResponse):
        decode(user_json(vehicles=value), User, None)


BAD_TARIFFS = {
    "list": [tariff_json()],
    "string": "tariff",
    "null": None,
    "missing id": {k: val for k, val in tariff_json().items() if k != "id"},
    "missing supplier": {k: val for k, val in tariff_json().items() if k != "supplier"},
    "missing currency": {k: val for k, val in tariff_json().items() if k != "currency"},
    "name number": tariff_json(name=5),
    "currency null": tariff_json(currency=None),
    "supplier null": tariff_json(supplier=None),
    "supplier number": tariff_json(supplier=5),
    "supplier expanded missing icon": tariff_json(
        supplier={k: val for k, val in supplier_json().items() if k != "icon"}
    ),
    "type unknown": tariff_json(type="CHEAP"),
    "type list": tariff_json(type=["FLAT_RATE"]),
    "highlighted string": tariff_json(highlighted="yes"),
    "valid_from bad": tariff_json(valid_from="2026-02-30"),
    "valid_from date-time": tariff_json(valid_from="2026-03-17T10:00:00Z"),
    "valid_until number": tariff_json(valid_until=20270317),
    "daily_prices list": tariff_json(daily_prices=[1]),
    "daily_prices string": tariff_json(daily_prices="cheap"),
    "current_price fractional": tariff_json(current_price=10.5),
    "current_price string": tariff_json(current_price="10"),
    "prices number": tariff_json(prices=5),
    "prices of numbers": tariff_json(prices=[1]),
    "prices bad item": tariff_json(
        prices=[{"started_at": "x", "interval_seconds": 1, "price_minor_units": 1}]
    ),
    "prices item missing field": tariff_json(prices=[{"started_at": "2024-01-15T10:00:00Z"}]),
    "scheduler_tariff number": tariff_json(scheduler_tariff=1),
}


@pytest.mark.parametrize("data", BAD_TARIFFS.values(), ids=BAD_TARIFFS.keys())
def test_decode_bad_tariff_raises_invalid_response(data):
    with pytest.raises(InvalidResponse) as info:
        decode(data, Tariff, None)
    assert "Tariff" in str(info.value)


BAD_SUPPLIERS = {
    "list": [],
    "missing icon": {k: val for k, val in supplier_json().items() if k != "icon"},
    "missing name": {k: val for k, val in supplier_json().items() if k != "name"},
    "icon number": supplier_json(icon=5),
    "highlighted null": supplier_json(highlighted=None),
    "id number": supplier_json(id=5),
}


@pytest.mark.parametrize("data", BAD_SUPPLIERS.values(), ids=BAD_SUPPLIERS.keys())
def test_decode_bad_supplier_raises_invalid_response(data):
    with pytest.raises(InvalidResponse):
        decode(data, Supplier, None)


BAD_SITES = {
    "missing evses": {k: val for k, val in site_json().items() if k != "evses"},
    "missing cpms_connection": {k: val for k, val in site_json().items() if k != "cpms_connection"},
    "evses null": site_json(evses=None),
    "evses string": site_json(evses="https://x"),
    "evses of numbers": site_json(evses=[1]),
    "cpms unknown": site_json(cpms_connection="ACME"),
    "user_connected string": site_json(user_connected="yes"),
    "display name number": site_json(cpms_connection_display_name=5),
}


@pytest.mark.parametrize("data", BAD_SITES.values(), ids=BAD_SITES.keys())
def test_decode_bad_site_raises_invalid_response(data):
    with pytest.raises(InvalidResponse):
        decode(data, EVSESite, None)


@pytest.mark.parametrize(
    "data",
    [
        {"started_at": "2024-01-15T10:00:00Z", "interval_seconds": "1800", "price_minor_units": 1},
        {"started_at": None, "interval_seconds": 1800, "price_minor_units": 1},
        {"interval_seconds": 1800, "price_minor_units": 1},
        {"started_at": "2024-01-15T10:00:00Z", "interval_seconds": 1800, "price_minor_units": 1.5},
        # msgspec reads a JSON integer only from integer syntax, as Python's json writes it
        {"started_at": "2024-01-15T10:00:00Z", "interval_seconds": 1800.0, "price_minor_units": 1},
    ],
)
def test_decode_bad_price(data):
    with pytest.raises(InvalidResponse):
        decode(data, Price, None)


@pytest.mark.parametrize("cls", [User, Tariff, Supplier, EVSESite, Price])
@pytest.mark.parametrize("data", [{}, {"a": 1}, [], "x", 0, 1.5, True, None])
def test_decode_junk_for_every_model(cls, data):
    with pytest.raises(InvalidResponse):
        decode(data, cls, None)


@pytest.mark.parametrize("cls", [User, Tariff, Supplier, EVSESite])
@pytest.mark.parametrize("data", [{}, {"items": []}, "[]", None, 5, (1,)])
def test_decode_list_non_array(cls, data):
    with pytest.raises(InvalidResponse) as info:
        decode_list(data, cls, None)
    assert cls.__name__ in str(info.value)


@pytest.mark.parametrize("cls", [User, Tariff, Supplier, EVSESite])
@pytest.mark.parametrize("item", [None, 5, "x", [], {}])
def test_decode_list_bad_item(cls, item):
    with pytest.raises(InvalidResponse):
        decode_list([item], cls, None)


def test_decode_does_not_mutate_input():
    data = user_json()
    data["default_location"]["tariff"] = tariff_json(supplier=supplier_json())
    before = copy.deepcopy(data)
    decode(data, User, None)
    assert data == before


def test_decode_deeply_nested_expansion_is_invalid_response_not_recursion_error():
    root = tariff_json()
    node = root
    for i in range(300):
        child = tariff_json(id=f"tari{i:026d}", url=f"{API}/tariffs/tari{i:026d}")
        node["scheduler_tariff"] = child
        node = child
    node["scheduler_tariff"] = 5  # invalid at the bottom
    with pytest.raises(InvalidResponse):
        decode(root, Tariff, None)


# --- msgspec specifics: paths, nulls, errata, shared Refs, bodies --------------------------------


@pytest.mark.parametrize(
    ("item", "message", "path"),
    [
        (user_json(email=5), "Expected `str`, got `int`", "$[1].email"),
        (user_json(joined_at="2023-06-15T10:00:00"), "timezone", "$[1].joined_at"),
        (_loc(country_code="XX"), "'XX'", "$[1].default_location.country_code"),
        (_loc(coordinates={"latitude": 1}), "longitude", "$[1].default_location.coordinates"),
        (_loc(tariff=5), "Expected a URL", "$[1].default_location.tariff"),
        (user_json(vehicles=["u", 5]), "Expected a URL", "$[1].vehicles[1]"),
        (
            _loc(tariff=tariff_json(supplier=supplier_json(name=5))),
            "Expected `str`, got `int`",
            "$[1].default_location.tariff.supplier.name",
        ),
        (
            _loc(tariff=tariff_json(prices=[{"started_at": "2024-01-15T10:00:00Z"}])),
            "interval_seconds",
            "$[1].default_location.tariff.prices[0]",
        ),
    ],
)
def test_invalid_response_names_the_json_path(item, message, path):
    with pytest.raises(InvalidResponse) as info:
        decode_list([user_json(), item], User, None)
    text = str(info.value)
    assert message in text
    assert text.endswith(f"at `{path}`")
    assert text.startswith("cannot decode User list:")


def test_not_json_is_invalid_response():
    for body in (b"", b"{", b"\xff", b"[1,]", b"[" * 5000):
        with pytest.raises(InvalidResponse):
            _convert.decode_list(body, User, None)
        with pytest.raises(InvalidResponse):
            _convert.decode(body, User, None)


def test_null_country_code_is_read_as_cleared():
    # Errata: the spec's Location.country_code says both "nullable" and "a CountryCode".
    user, _ = decode(_loc(country_code=None), User, None)
    assert user.default_location.country_code is None


def test_nulls_where_the_api_allows_them_and_only_there():
    user, _ = decode(user_json(terms_consent_datetime=None), User, None)
    assert user.terms_consent_datetime is None
    for field in ("email", "full_name", "joined_at", "default_location", "vehicles"):
        with pytest.raises(InvalidResponse, match=f"at `\\$.{field}`"):
            decode(user_json(**{field: None}), User, None)


def test_unknown_fields_of_every_shape_are_skipped():
    data = user_json(extra={"deep": [{"x": [1, 2.5, None, True]}]}, more=[[[]]], n=1e300)
    data["default_location"]["tariff"] = tariff_json(surprise={"a": 1}, supplier=supplier_json(z=1))
    user, expanded = decode(data, User, None)
    assert user.default_location.tariff.value.supplier.value.name == "Rivendell Renewables"
    assert len(expanded) == 2


def test_one_ref_per_url_in_a_body():
    items = [user_json(id=f"user{i:026d}", url=f"{API}/users/user{i:026d}") for i in range(3)]
    users, _ = decode_list(items, User, None)
    tariffs = {id(u.default_location.tariff) for u in users}
    assert len(tariffs) == 1


def test_a_codec_shares_refs_across_bodies_and_binds_its_resolver():
    resolver = FakeResolver()
    codec = _convert.Codec(resolver)
    first, _ = codec.decode(msgspec.json.encode(user_json()), User)
    second, _ = codec.decode_list(msgspec.json.encode([user_json()]), User)
    assert first.default_location.tariff is second[0].default_location.tariff
    assert first.default_location.tariff._resolver is resolver


def test_expanded_relations_are_reported_once_per_call():
    codec = _convert.Codec(None)
    body = msgspec.json.encode(_loc(tariff=tariff_json()))
    assert len(codec.decode(body, User)[1]) == 1
    assert len(codec.decode(msgspec.json.encode(user_json()), User)[1]) == 0
    with pytest.raises(InvalidResponse):  # a failed decode leaves nothing behind
        codec.decode_list(msgspec.json.encode([_loc(tariff=tariff_json()), 5]), User)
    assert codec.take_expanded() == []


def test_expanded_object_where_only_a_url_may_be():
    with pytest.raises(InvalidResponse, match="Expected a URL, got `object`"):
        decode(user_json(vehicles=[{"url": "x"}]), User, None)


def test_expanded_prices_need_an_array():
    with pytest.raises(InvalidResponse, match="prices"):
        decode(tariff_json(prices={"url": "x"}), Tariff, None)


def test_convert_reads_api_shaped_records():
    record = user_json()["default_location"]
    location = _convert.convert(record, Location)
    assert location.country_code == "GB"
    assert isinstance(location.tariff, Ref)
    assert to_wire(location) == record
    with pytest.raises(InvalidRequest, match="country_code"):
        _convert.convert({**record, "country_code": "XX"}, Location)


def test_to_api_refuses_what_json_cannot_say():
    with pytest.raises(InvalidRequest):
        _convert.to_api({"a": object()})


# --- to_wire ------------------------------------------------------------------------------------


def test_to_wire_location_omits_unset_keeps_none():
    loc = Location(address_1="1 High St", address_2=None, city="London")
    assert to_wire(loc) == {"address_1": "1 High St", "address_2": None, "city": "London"}


def test_to_wire_empty_location():
    assert to_wire(Location()) == {}


def test_to_wire_location_refs_and_coordinates():
    loc = Location(
        coordinates=LatLong(51.5, -0.1),
        tariff=Ref(f"{API}/tariffs/{TID}", value="resolved-value"),
        evse_site=Ref(f"{API}/evse_sites/{SITE}"),
    )
    assert to_wire(loc) == {
        "coordinates": {"latitude": 51.5, "longitude": -0.1},
        "tariff": f"{API}/tariffs/{TID}",
        "evse_site": f"{API}/evse_sites/{SITE}",
    }


def test_to_wire_all_none():
    names = ["address_1", "address_2", "postal_code", "country_code", "coordinates", "tariff"]
    names += ["city", "state", "evse_site"]
    assert to_wire(Location(**dict.fromkeys(names))) == dict.fromkeys(names)


def test_to_wire_decoded_location_roundtrip():
    user, _ = decode(user_json(), User, None)
    wire = to_wire(user.default_location)
    assert wire == user_json()["default_location"]


# --- _validate: ids, cursors, page sizes, expansions, emails -------------------------------------


@pytest.mark.parametrize(
    ("value", "pattern"),
    [(UID, v.USER_ID), (TID, v.TARIFF_ID), (SID, v.SUPPLIER_ID), (SITE, v.EVSE_SITE_ID)],
)
def test_check_id_accepts(value, pattern):
    assert v.check_id(value, pattern, "x") == value


@pytest.mark.parametrize(
    "value",
    [
        "me",
        "",
        "user",
        UID.lower(),
        UID + "A",
        UID[:-1],
        TID,
        f" {UID}",
        f"{UID}\n",
        "user01HN2NJ9NMRZBXT1H6FT9N77/5",
        "../users",
        None,
        5,
        b"user01HN2NJ9NMRZBXT1H6FT9N7735",
        ["user01HN2NJ9NMRZBXT1H6FT9N7735"],
    ],
)
def test_check_id_refuses(value):
    with pytest.raises(InvalidRequest) as info:
        v.check_id(value, v.USER_ID, "user_id")
    assert info.value.field == "user_id"
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, EvEnergyError)
    assert str(info.value).startswith("user_id:")


def test_check_id_me():
    assert v.check_id("me", v.USER_ID, "user_id", me=True) == "me"
    assert v.check_id(UID, v.USER_ID, "user_id", me=True) == UID
    with pytest.raises(InvalidRequest):
        v.check_id("ME", v.USER_ID, "user_id", me=True)
    with pytest.raises(InvalidRequest):
        v.check_id("me", v.TARIFF_ID, "tariff_id")


def test_check_cursor():
    assert v.check_cursor(UID, "page_after") == UID
    assert v.check_cursor(TID, "page_after") == TID
    for bad in ("x", "", 5, None, "USER01HN2NJ9NMRZBXT1H6FT9N7735"):
        with pytest.raises(InvalidRequest) as info:
            v.check_cursor(bad, "page_after")
        assert info.value.field == "page_after"


@pytest.mark.parametrize("value", [1, 2, 50, 100])
def test_check_page_size_accepts(value):
    assert v.check_page_size(value) == value


@pytest.mark.parametrize("value", [0, -1, 101, 1000, True, False, "5", 5.0, None, [5]])
def test_check_page_size_refuses(value):
    with pytest.raises(InvalidRequest) as info:
        v.check_page_size(value)
    assert info.value.field == "page_size"


def test_check_page_number():
    assert v.check_page_number(1) == 1
    assert v.check_page_number(99) == 99
    for bad in (0, -1, True, "2", 1.0):
        with pytest.raises(InvalidRequest) as info:
            v.check_page_number(bad)
        assert info.value.field == "page"


def test_check_expand_accepts():
    assert v.check_expand((), v.USER_EXPANSIONS) == ()
    assert v.check_expand("default_location.tariff", v.USER_EXPANSIONS) == (
        "default_location.tariff",
    )
    assert v.check_expand(
        ["default_location.evse_site", "default_location.tariff", "default_location.evse_site"],
        v.USER_EXPANSIONS,
    ) == ("default_location.evse_site", "default_location.tariff")
    assert v.check_expand(iter(["supplier", "prices"]), v.TARIFF_EXPANSIONS) == (
        "supplier",
        "prices",
    )


@pytest.mark.parametrize(
    "value",
    [
        "tariff",
        ["default_location.tariff", "default_location"],
        ["DEFAULT_LOCATION.TARIFF"],
        ["supplier"],
        [None],
        [5],
        5,
        None,
        b"default_location.tariff",
    ],
)
def test_check_expand_refuses(value):
    with pytest.raises(InvalidRequest) as info:
        v.check_expand(value, v.USER_EXPANSIONS)
    assert info.value.field == "expand"


def test_check_expand_field_name():
    with pytest.raises(InvalidRequest) as info:
        v.check_expand(["nope"], v.USER_EXPANSIONS, "resolve")
    assert info.value.field == "resolve"
    assert "nope" in str(info.value)


@pytest.mark.parametrize("item", [["default_location.tariff"], {"a": 1}, bytearray(b"x")])
def test_check_expand_unhashable_item(item):
    with pytest.raises(InvalidRequest):
        v.check_expand([item], v.USER_EXPANSIONS)


@pytest.mark.parametrize(
    "value", ["a@example.com", "first.last+tag@sub.example.co.uk", "UPPER@EXAMPLE.COM"]
)
def test_check_email_accepts(value):
    assert v.check_email(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a",
        "a@",
        "@example.com",
        "a@example",
        "a@@example.com",
        "a b@example.com",
        "a@exa mple.com",
        "a@example.",
        "a@.com",
        None,
        5,
        ["a@example.com"],
    ],
)
def test_check_email_refuses(value):
    with pytest.raises(InvalidRequest) as info:
        v.check_email(value)
    assert info.value.field == "email"


def test_check_bool_and_text():
    assert v.check_bool(True, "valid") is True
    for bad in (1, "true", None):
        with pytest.raises(InvalidRequest) as info:
            v.check_bool(bad, "valid")
        assert info.value.field == "valid"
    assert v.check_text("_C", "gsp_group") == "_C"
    for bad in ("", None, 5):
        with pytest.raises(InvalidRequest) as info:
            v.check_text(bad, "gsp_group")
        assert info.value.field == "gsp_group"


# --- _validate: locations -----------------------------------------------------------------------

FULL = {"address_1": "1 High St", "city": "London", "postal_code": "EC1A 1BB", "country_code": "GB"}


def test_location_body_full_address():
    assert b.location_body(Location(**FULL)) == FULL


def test_location_body_full_address_with_extras():
    loc = Location(
        **FULL,
        address_2="Flat 2",
        state=None,
        coordinates=LatLong(51.5, -0.1),
        tariff=Ref(f"{API}/tariffs/{TID}"),
        evse_site=None,
    )
    assert b.location_body(loc) == {
        **FULL,
        "address_2": "Flat 2",
        "state": None,
        "coordinates": {"latitude": 51.5, "longitude": -0.1},
        "tariff": f"{API}/tariffs/{TID}",
        "evse_site": None,
    }


def test_location_body_empty_and_relations_only():
    assert b.location_body(Location()) == {}
    loc = Location(tariff=Ref(f"{API}/tariffs/{TID}"), evse_site=None)
    assert b.location_body(loc) == {"tariff": f"{API}/tariffs/{TID}", "evse_site": None}


def test_location_body_explicit_nulls_clear_address():
    names = ["address_1", "address_2", "city", "state", "postal_code", "country_code"]
    names.append("coordinates")
    body = b.location_body(Location(**dict.fromkeys(names)))
    assert body == dict.fromkeys(names)


def test_location_body_drops_read_only_carbon():
    loc = Location(**FULL, current_carbon_intensity_grams_per_kilowatt_hour=300)
    assert "current_carbon_intensity_grams_per_kilowatt_hour" not in b.location_body(loc)


TRIGGERS = {
    "address_1": "1 High St",
    "address_2": "Flat 2",
    "city": "London",
    "state": "Greater London",
    "postal_code": "EC1A 1BB",
    "country_code": "GB",
    "coordinates": LatLong(51.5, -0.1),
}


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_address_rule_every_trigger_alone(trigger):
    with pytest.raises(InvalidRequest) as info:
        b.location_body(Location(**{trigger: TRIGGERS[trigger]}))
    assert info.value.field == "default_location"
    message = str(info.value)
    assert "partial address" in message
    assert trigger in message
    for required in ("address_1", "city", "postal_code", "country_code"):
        if required != trigger:
            assert required in message.split("missing", 1)[1]


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_address_rule_trigger_with_explicit_null_required(trigger):
    fields: dict[str, Any] = dict.fromkeys(("address_1", "city", "postal_code", "country_code"))
    fields[trigger] = TRIGGERS[trigger]
    with pytest.raises(InvalidRequest):
        b.location_body(Location(**fields))


@pytest.mark.parametrize("missing", ["address_1", "city", "postal_code", "country_code"])
def test_address_rule_one_required_missing(missing):
    fields = {k: val for k, val in FULL.items() if k != missing}
    with pytest.raises(InvalidRequest) as info:
        b.location_body(Location(**fields))
    assert missing in str(info.value).split("missing", 1)[1]
    fields[missing] = None
    with pytest.raises(InvalidRequest):
        b.location_body(Location(**fields))


@pytest.mark.parametrize("location", [None])
def test_null_default_location_refused(location):
    with pytest.raises(InvalidRequest) as info:
        b.location_body(location)
    assert info.value.field == "default_location"
    with pytest.raises(InvalidRequest) as info:
        b.user_body(email=UNSET, default_location=location)
    assert info.value.field == "default_location"


@pytest.mark.parametrize("location", [{"city": "London"}, "London", 5, User(id=UID, url="u")])
def test_non_location_refused(location):
    with pytest.raises(InvalidRequest) as info:
        b.location_body(location)
    assert info.value.field == "default_location"


@pytest.mark.parametrize("code", ["XX", "gb", "GBR", "", "UK", " GB"])
def test_bad_country_code(code):
    with pytest.raises(InvalidRequest) as info:
        b.location_body(Location(**{**FULL, "country_code": code}))
    assert info.value.field == "default_location.country_code"


@pytest.mark.parametrize("code", ["GB", "US", "FR", "DE", "AX", "ZW"])
def test_good_country_codes(code):
    assert b.location_body(Location(**{**FULL, "country_code": code}))["country_code"] == code


@pytest.mark.parametrize(
    ("coordinates", "field"),
    [
        (LatLong(90.0001, 0), "latitude"),
        (LatLong(-91, 0), "latitude"),
        (LatLong(0, 180.5), "longitude"),
        (LatLong(0, -181), "longitude"),
        (LatLong(math.nan, 0), "latitude"),
        (LatLong(0, math.nan), "longitude"),
        (LatLong(math.inf, 0), "latitude"),
        (LatLong(0, -math.inf), "longitude"),
        (LatLong(True, 0), "latitude"),
        (LatLong(0, False), "longitude"),
        (LatLong("51.5", 0), "latitude"),
        (LatLong(0, None), "longitude"),
    ],
)
def test_bad_coordinates(coordinates, field):
    with pytest.raises(InvalidRequest) as info:
        b.location_body(Location(**FULL, coordinates=coordinates))
    assert info.value.field == f"default_location.coordinates.{field}"


@pytest.mark.parametrize("coordinates", [LatLong(90, 180), LatLong(-90, -180), LatLong(0, 0)])
def test_edge_coordinates_ok(coordinates):
    body = b.location_body(Location(**FULL, coordinates=coordinates))
    assert body["coordinates"] == {
        "latitude": coordinates.latitude,
        "longitude": coordinates.longitude,
    }


@pytest.mark.parametrize("coordinates", [(51.5, 0.1), {"latitude": 1, "longitude": 2}, "51,0"])
def test_coordinates_not_latlong(coordinates):
    with pytest.raises(InvalidRequest) as info:
        b.location_body(Location(**FULL, coordinates=coordinates))
    assert info.value.field == "default_location.coordinates"


@pytest.mark.parametrize("name", ["address_1", "address_2", "city", "state", "postal_code"])
@pytest.mark.parametrize("value", [5, b"x", ["x"], True])
def test_text_fields_wrong_type(name, value):
    with pytest.raises(InvalidRequest) as info:
        b.location_body(Location(**{**FULL, name: value}))
    assert info.value.field == f"default_location.{name}"


@pytest.mark.parametrize("name", ["tariff", "evse_site"])
@pytest.mark.parametrize("value", [f"{API}/tariffs/{TID}", 5, {"url": "x"}])
def test_relation_fields_must_be_refs(name, value):
    with pytest.raises(InvalidRequest) as info:
        b.location_body(Location(**{name: value}))
    assert info.value.field == f"default_location.{name}"


def test_location_body_field_prefix():
    with pytest.raises(InvalidRequest) as info:
        b.location_body(Location(city="x"), field="loc")
    assert info.value.field == "loc"


def test_user_body():
    assert b.user_body(email=UNSET, default_location=UNSET) == {}
    assert b.user_body(email="a@example.com", default_location=UNSET) == {"email": "a@example.com"}
    assert b.user_body(email=UNSET, default_location=Location(city=None)) == {
        "default_location": {"city": None}
    }
    with pytest.raises(InvalidRequest) as info:
        b.user_body(email="nope", default_location=Location(**FULL))
    assert info.value.field == "email"
    with pytest.raises(InvalidRequest) as info:
        b.user_body(email=None, default_location=UNSET)
    assert info.value.field == "email"


def test_form_fields():
    body = {
        "email": "a@example.com",
        "default_location": {
            "address_1": "1 High St",
            "address_2": None,
            "coordinates": {"latitude": 51.5, "longitude": -0.1},
        },
        "flag": True,
        "off": False,
        "n": 3,
    }
    assert b.form_fields(body) == [
        ("email", "a@example.com"),
        ("default_location.address_1", "1 High St"),
        ("default_location.address_2", ""),
        ("default_location.coordinates.latitude", "51.5"),
        ("default_location.coordinates.longitude", "-0.1"),
        ("flag", "true"),
        ("off", "false"),
        ("n", "3"),
    ]


def test_form_fields_empty_and_prefix():
    assert b.form_fields({}) == []
    assert b.form_fields({"a": {}}) == []
    assert b.form_fields({"a": 1}, "p.") == [("p.a", "1")]


def test_decoding_leaves_nothing_for_the_garbage_collector():
    # a codec and its hook are no reference cycle: each get's decode is freed as it ends
    expanded_site = user_json()
    expanded_site["default_location"]["evse_site"] = site_json()
    bodies = [msgspec.json.encode(user_json()), msgspec.json.encode(expanded_site)]
    codec = _convert.Codec(None)
    gc.collect()
    gc.disable()
    try:
        for body in bodies:
            _convert.decode(body, User, None)
            _convert.decode_list(b"[" + body + b"]", User, None)
            codec.decode(body, User)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_codec_shares_refs_within_a_body_but_not_across_single_decodes():
    codec = _convert.Codec(None)
    body = msgspec.json.encode(user_json())
    first, _ = codec.decode(body, User)
    second, _ = codec.decode(body, User)
    assert first.default_location.tariff == second.default_location.tariff
    assert first.default_location.tariff is not second.default_location.tariff
    users, _ = codec.decode_list(b"[" + body + b"," + body + b"]", User)
    assert users[0].default_location.tariff is users[1].default_location.tariff


# --- the classes of decoded Refs, the absent-field preset, pickling ---------------------------


def test_a_decoded_relation_is_a_ref_whose_class_names_its_target():
    user, _ = decode(user_json(evses=[f"{API}/evses/e1"]), User, None)
    tariff = user.default_location.tariff
    assert isinstance(tariff, Ref) and type(tariff).target is Tariff  # type: ignore[attr-defined]
    assert type(tariff).__name__ == "Ref[Tariff]" and repr(tariff).startswith("Ref(")
    assert all(isinstance(ref, Ref) for ref in (*user.vehicles, *user.evses))
    # Equal to, and hashed like, a plain Ref of the same URL.
    plain = Ref(tariff.url)
    assert tariff == plain and plain == tariff and hash(tariff) == hash(plain)
    assert {tariff: 1}[plain] == 1


def test_an_expanded_relation_is_resolved_and_of_its_fields_class():
    tariff = tariff_json(supplier=supplier_json())
    user, expanded = decode(_loc(tariff=tariff), User, None)
    ref = user.default_location.tariff
    assert type(ref).target is Tariff and ref.resolved  # type: ignore[attr-defined]
    assert type(ref.value.supplier).target is Supplier and ref.value.supplier.resolved
    assert {r.url for r in expanded} == {ref.url, ref.value.supplier.url}


def test_one_url_in_two_kinds_of_relation_gives_each_field_its_own_class():
    """A server naming one URL as a tariff and as a supplier: each field keeps its type."""
    same = f"{API}/tariffs/{TID}"
    tariff, _ = decode(tariff_json(supplier=same, scheduler_tariff=same), Tariff, None)
    assert type(tariff.supplier).target is Supplier  # type: ignore[attr-defined]
    assert type(tariff.scheduler_tariff).target is Tariff  # type: ignore[attr-defined]


def test_a_list_without_carbon_intensity_leaves_it_unset_and_a_single_user_has_it():
    users, _ = decode_list([user_json(), user_json()], User, None)
    assert all(
        u.default_location.current_carbon_intensity_grams_per_kilowatt_hour is UNSET for u in users
    )
    detail = _loc(current_carbon_intensity_grams_per_kilowatt_hour=212)
    user, _ = decode(detail, User, None)
    assert user.default_location.current_carbon_intensity_grams_per_kilowatt_hour == 212
    # The preset is the decoder's alone: a location built by hand keeps what it was given.
    given = Location(city="Bree", current_carbon_intensity_grams_per_kilowatt_hour=7)
    assert given.current_carbon_intensity_grams_per_kilowatt_hour == 7
    assert Location().current_carbon_intensity_grams_per_kilowatt_hour is UNSET


def test_a_ref_pickles_as_a_plain_ref_without_its_client():
    import pickle

    class Resolver:
        async def resolve(self, ref: Any) -> Any:
            raise AssertionError("not called")

    user, _ = decode(user_json(), User, Resolver())
    ref = user.default_location.tariff
    copied = pickle.loads(pickle.dumps(ref))
    assert type(copied) is Ref and copied == ref and not copied.resolved
    with pytest.raises(EvEnergyError, match="not decoded by a client"):
        asyncio.run(copied.resolve())
    resolved = pickle.loads(pickle.dumps(Ref("u", 5)))
    assert resolved.resolved and resolved.value == 5
    # A copy resolves through the same client into the same cache: it is the Ref itself.
    assert copy.copy(ref) is ref and copy.deepcopy(ref) is ref
    plain_user, _ = decode(user_json(), User, None)
    assert pickle.loads(pickle.dumps(plain_user)) == plain_user
