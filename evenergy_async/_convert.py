"""The one cattrs converter: API JSON to models and models to API JSON.

Decoding is strict about what the spec fixes (types, required fields, enums, country codes)
and ignores fields it does not know, so a server that adds fields never breaks a client.
Anything else raises InvalidResponse: no KeyError or TypeError escapes.

User, Location and LatLong, decoded once per user of every stream, have hooks written by
hand; the rarer models use hooks cattrs generates without detailed validation.

Refs are bound to the client that decodes them: `decode` sets the resolver in a context
variable for the duration of one (synchronous) conversion, and collects every expanded
relation so the client can prime its resolve cache.
"""

from __future__ import annotations

import contextvars
import enum
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime, timedelta
from typing import Any, TypeVar, Union, get_args, get_origin

import attrs
import cattrs
import cattrs.errors
from cattrs.gen import make_dict_structure_fn
from cattrs.preconf.orjson import make_converter

from ._countries import COUNTRY_CODES
from .errors import InvalidRequest, InvalidResponse
from .models import (
    UNSET,
    EVSESite,
    LatLong,
    Location,
    Price,
    Supplier,
    Tariff,
    UnsetType,
    User,
)
from .refs import _MISSING, Ref, Resolver

T = TypeVar("T")

__all__ = ["UserDecoder", "decode", "decode_list", "to_api", "to_wire"]


class _DecodeContext:
    __slots__ = ("expanded", "resolver", "shared")

    def __init__(self, resolver: Resolver | None) -> None:
        self.resolver = resolver
        self.expanded: list[Ref[Any]] = []
        # Thousands of users share a few tariffs and sites: one Ref per URL, so resolving one
        # user's tariff resolves it for all of them, and decoding allocates less.
        self.shared: dict[str, Ref[Any]] = {}


_MAX_SHARED_REFS = 1024


def _shared_ref(url: str, ctx: _DecodeContext) -> Ref[Any]:
    ref = ctx.shared.get(url)
    if ref is None:
        if len(ctx.shared) >= _MAX_SHARED_REFS:
            ctx.shared.clear()
        ref = ctx.shared[url] = Ref(url, _MISSING, ctx.resolver)
    return ref


_context: contextvars.ContextVar[_DecodeContext] = contextvars.ContextVar("evenergy_decode")


class _Invalid(Exception):
    """Raised inside hooks; `decode` turns it into InvalidResponse with the model's name."""


def _fail(what: str, value: object) -> _Invalid:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return _Invalid(f"{what}: unexpected {shown}")


# --- primitives ------------------------------------------------------------------------------


def _str(value: Any, _: Any = None) -> str:
    if type(value) is not str:
        raise _fail("expected a string", value)
    return value


def _int(value: Any, _: Any = None) -> int:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    raise _fail("expected an integer", value)


def _float(value: Any, _: Any = None) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _fail("expected a number", value)


def _bool(value: Any, _: Any = None) -> bool:
    if type(value) is not bool:
        raise _fail("expected a boolean", value)
    return value


if sys.version_info >= (3, 11):

    def _datetime(value: Any, _: Any = None) -> datetime:
        try:
            parsed = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise _fail("expected an ISO 8601 date-time", value) from None
        if parsed.tzinfo is None:  # RFC 3339 date-times carry an offset
            raise _fail("expected a date-time with a UTC offset", value)
        return parsed

else:  # 3.10's fromisoformat does not read a trailing "Z"

    def _datetime(value: Any, _: Any = None) -> datetime:
        try:
            if value[-1:] == "Z":
                value = value[:-1] + "+00:00"
            parsed = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise _fail("expected an ISO 8601 date-time", value) from None
        if parsed.tzinfo is None:  # RFC 3339 date-times carry an offset
            raise _fail("expected a date-time with a UTC offset", value)
        return parsed


def _date(value: Any, _: Any = None) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise _fail("expected an ISO 8601 date", value) from None


def _mapping(value: Any, _: Any = None) -> Mapping[str, Any]:
    if type(value) is not dict:
        raise _fail("expected an object", value)
    return value


# --- refs ------------------------------------------------------------------------------------


def _ref(value: Any, target: Any, ctx: _DecodeContext) -> Ref[Any]:
    """A URL, or an expanded object (with its own `url`) decoded as `target`."""
    if type(value) is str:
        return Ref(value, _MISSING, ctx.resolver)
    if type(value) is dict:
        url = value.get("url")
        if type(url) is not str:
            raise _fail("expanded relation without a url", value)
        if target is Any:
            decoded = value
        else:  # models cattrs decodes find the context in the context variable
            token = _context.set(ctx)
            try:
                decoded = converter.structure(value, target)
            finally:
                _context.reset(token)
        ref: Ref[Any] = Ref(url, decoded, ctx.resolver)
        ctx.expanded.append(ref)
        return ref
    raise _fail("expected a URL or an expanded object", value)


def _ref_tuple(value: Any, ctx: _DecodeContext) -> tuple[Ref[Any], ...]:
    if type(value) is not list:
        raise _fail("expected an array of URLs", value)
    resolver = ctx.resolver
    refs: list[Ref[Any]] = []
    for url in value:
        if type(url) is not str:
            raise _fail("expected a URL", url)
        refs.append(Ref(url, _MISSING, resolver))
    return tuple(refs)


# --- hot models, by hand ---------------------------------------------------------------------
# Decoded once per user of every stream, so written for speed: instances are filled through
# their slots' descriptors (a frozen attrs __init__ goes through object.__setattr__ once per
# field, twice as slow), and optional strings are checked with one set lookup each.  The
# result is the same object __init__ would build.


def _slot_setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    return tuple(cls.__dict__[field.name].__set__ for field in attrs.fields(cls))


_new = object.__new__
_U_ID, _U_URL, _U_EMAIL, _U_NAME, _U_JOINED, _U_CONSENT, _U_LOC, _U_VEH, _U_EVSES = _slot_setters(
    User
)
_L_A1, _L_A2, _L_POSTAL, _L_COUNTRY, _L_COORDS, _L_TARIFF, _L_CITY, _L_STATE, _L_SITE, _L_CO2 = (
    _slot_setters(Location)
)
_LL_LAT, _LL_LON = _slot_setters(LatLong)
_OPTIONAL_STR = frozenset({str, type(None), UnsetType})
_LOCATION_TEXT = ("address_1", "address_2", "postal_code", "city", "state")


def _lat_long(value: Any, _: Any = None) -> LatLong:
    if type(value) is not dict:
        raise _fail("coordinates: expected an object", value)
    try:
        latitude = value["latitude"]
        longitude = value["longitude"]
    except KeyError as exc:
        raise _Invalid(f"coordinates: missing {exc}") from None
    point = _new(LatLong)
    _LL_LAT(point, latitude if type(latitude) is float else _float(latitude))
    _LL_LON(point, longitude if type(longitude) is float else _float(longitude))
    return point


def _location(data: Any, ctx: _DecodeContext) -> Location:
    if type(data) is not dict:
        raise _fail("default_location: expected an object", data)
    get = data.get
    address_1 = get("address_1", UNSET)
    address_2 = get("address_2", UNSET)
    postal_code = get("postal_code", UNSET)
    city = get("city", UNSET)
    state = get("state", UNSET)
    if not (
        type(address_1) in _OPTIONAL_STR
        and type(address_2) in _OPTIONAL_STR
        and type(postal_code) in _OPTIONAL_STR
        and type(city) in _OPTIONAL_STR
        and type(state) in _OPTIONAL_STR
    ):
        bad = next(k for k in _LOCATION_TEXT if type(get(k, UNSET)) not in _OPTIONAL_STR)
        raise _fail(f"{bad}: expected a string or null", get(bad))
    country = get("country_code", UNSET)
    if country is not UNSET and country is not None and country not in COUNTRY_CODES:
        raise _fail("expected an ISO 3166-1 alpha-2 country code", country)
    coordinates = get("coordinates", UNSET)
    if coordinates is not UNSET and coordinates is not None:
        coordinates = _lat_long(coordinates)
    tariff = get("tariff", UNSET)
    if tariff is not UNSET and tariff is not None:
        tariff = _shared_ref(tariff, ctx) if type(tariff) is str else _ref(tariff, Tariff, ctx)
    site = get("evse_site", UNSET)
    if site is not UNSET and site is not None:
        site = _shared_ref(site, ctx) if type(site) is str else _ref(site, EVSESite, ctx)
    carbon = get("current_carbon_intensity_grams_per_kilowatt_hour", UNSET)
    if carbon is not UNSET and carbon is not None:
        carbon = _int(carbon)
    location = _new(Location)
    _L_A1(location, address_1)
    _L_A2(location, address_2)
    _L_POSTAL(location, postal_code)
    _L_COUNTRY(location, country)
    _L_COORDS(location, coordinates)
    _L_TARIFF(location, tariff)
    _L_CITY(location, city)
    _L_STATE(location, state)
    _L_SITE(location, site)
    _L_CO2(location, carbon)
    return location


def _user(data: Any, ctx: _DecodeContext) -> User:
    if type(data) is not dict:
        raise _fail("expected a User object", data)
    get = data.get
    user_id = get("id")
    url = get("url")
    if type(user_id) is not str or type(url) is not str:
        if user_id is None or url is None:
            raise _Invalid(f"User without {'id' if user_id is None else 'url'}")
        raise _fail("User id and url must be strings", (user_id, url))
    email = get("email", UNSET)
    if email is not UNSET and type(email) is not str:
        raise _fail("email: expected a string", email)
    full_name = get("full_name", UNSET)
    if full_name is not UNSET and type(full_name) is not str:
        raise _fail("full_name: expected a string", full_name)
    joined_at = get("joined_at", UNSET)
    if joined_at is not UNSET:
        joined_at = _datetime(joined_at)
    consent = get("terms_consent_datetime", UNSET)
    if consent is not UNSET and consent is not None:
        consent = _datetime(consent)
    location = get("default_location", UNSET)
    if location is not UNSET:
        location = _location(location, ctx)
    vehicles = get("vehicles")
    evses = get("evses")
    user = _new(User)
    _U_ID(user, user_id)
    _U_URL(user, url)
    _U_EMAIL(user, email)
    _U_NAME(user, full_name)
    _U_JOINED(user, joined_at)
    _U_CONSENT(user, consent)
    _U_LOC(user, location)
    _U_VEH(user, () if vehicles is None or vehicles == [] else _ref_tuple(vehicles, ctx))
    _U_EVSES(user, () if evses is None or evses == [] else _ref_tuple(evses, ctx))
    return user


# --- the converter ---------------------------------------------------------------------------

converter = make_converter(detailed_validation=False, forbid_extra_keys=False)

for _type, _hook in (
    (str, _str),
    (int, _int),
    (float, _float),
    (bool, _bool),
    (datetime, _datetime),
    (date, _date),
    (LatLong, _lat_long),
):
    converter.register_structure_hook(_type, _hook)
# Through the converter (nested in a model cattrs decodes), the hot hooks find their context
# in the context variable `decode` sets.
converter.register_structure_hook(Location, lambda value, _: _location(value, _context.get()))
converter.register_structure_hook(User, lambda value, _: _user(value, _context.get()))
converter.register_structure_hook_func(
    lambda t: t is Mapping[str, Any] or t == typing.Mapping[str, Any], _mapping
)


def _is_ref(t: Any) -> bool:
    return get_origin(t) is Ref or t is Ref


converter.register_structure_hook_func(
    _is_ref, lambda value, t: _ref(value, (get_args(t) or (Any,))[0], _context.get())
)
converter.register_structure_hook_func(
    lambda t: t == tuple[Ref[Any], ...], lambda value, _: _ref_tuple(value, _context.get())
)


def _prices(value: Any, _: Any) -> Ref[Any] | tuple[Price, ...]:
    """TariffDetail.prices: the price list's URL, or the prices themselves when expanded."""
    if type(value) is str:
        return _ref(value, Any, _context.get())
    if type(value) is list:
        return tuple([converter.structure(item, Price) for item in value])
    raise _fail("prices: expected a URL or an array", value)


def _is_union(t: Any) -> bool:
    return get_origin(t) in (Union, types.UnionType)


def _union_hook(t: Any) -> Any:
    """Optional fields: UNSET never comes off the wire and None passes as the API's null."""
    members = [a for a in get_args(t) if a is not UnsetType and a is not type(None)]
    nullable = type(None) in get_args(t)
    if len(members) == 1:
        inner = converter.get_structure_hook(members[0])
        target = members[0]

        def structure(value: Any, _: Any) -> Any:
            if value is None:
                if nullable:
                    return None
                raise _fail("unexpected null", value)
            return inner(value, target)

        return structure
    if set(members) == {Ref[Any], tuple[Price, ...]}:
        return lambda value, _: None if value is None else _prices(value, t)
    raise TypeError(f"no structure hook for {t}")  # a model field nobody taught us to read


converter.register_structure_hook_factory(_is_union, _union_hook)

for _model in (Supplier, Price, Tariff, EVSESite):
    converter.register_structure_hook(
        _model, make_dict_structure_fn(_model, converter, _cattrs_detailed_validation=False)
    )


# What a hook may raise on data it cannot read; `decode` reports each as InvalidResponse.
_DECODE_ERRORS = (
    _Invalid,
    cattrs.errors.CattrsError,
    cattrs.BaseValidationError,
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    RecursionError,  # expansions nested deeper than any the API makes
)


def decode(data: Any, cls: type[T], resolver: Resolver | None) -> tuple[T, list[Ref[Any]]]:
    """One resource; also returns the relations that arrived expanded."""
    ctx = _DecodeContext(resolver)
    token = _context.set(ctx)
    try:
        value: Any = _user(data, ctx) if cls is User else converter.structure(data, cls)
        return value, ctx.expanded
    except _DECODE_ERRORS as exc:
        raise InvalidResponse(f"cannot decode {cls.__name__}: {_reason(exc)}") from None
    finally:
        _context.reset(token)


def decode_list(
    data: Any, cls: type[T], resolver: Resolver | None
) -> tuple[list[T], list[Ref[Any]]]:
    """A list body (a JSON array of `cls`); also returns the relations that arrived expanded."""
    if type(data) is not list:
        raise InvalidResponse(f"expected a JSON array of {cls.__name__}, got {type(data).__name__}")
    ctx = _DecodeContext(resolver)
    token = _context.set(ctx)
    try:
        if cls is User:
            items: list[Any] = [_user(item, ctx) for item in data]
        else:
            structure = converter.get_structure_hook(cls)
            items = [structure(item, cls) for item in data]
        return items, ctx.expanded
    except _DECODE_ERRORS as exc:
        raise InvalidResponse(f"cannot decode {cls.__name__} list: {_reason(exc)}") from None
    finally:
        _context.reset(token)


class UserDecoder:
    """Decodes users one at a time, so a stream builds each just before handing it over (a
    page of models built up front outlives the young garbage collection and costs full ones).
    """

    __slots__ = ("_ctx",)

    def __init__(self, resolver: Resolver | None) -> None:
        self._ctx = _DecodeContext(resolver)

    def each(self, items: list[Any]) -> Iterator[User]:
        """Each user of a page, decoded when the consumer asks for it."""
        ctx = self._ctx
        try:
            for item in items:
                yield _user(item, ctx)
        except _DECODE_ERRORS as exc:
            raise InvalidResponse(f"cannot decode User: {_reason(exc)}") from None

    def take_expanded(self) -> list[Ref[Any]]:
        """The relations that arrived expanded since the last call."""
        expanded = self._ctx.expanded
        if expanded:
            self._ctx.expanded = []
        return expanded


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(str(e) for e in exc.exceptions) or str(exc)
    return str(exc)


# --- to the wire (request bodies) ------------------------------------------------------------


def _location_to_wire(location: Location) -> dict[str, Any]:
    """Only the fields that were set: absent means "leave unchanged", None means "clear"."""
    wire: dict[str, Any] = {}
    for field in attrs.fields(Location):
        value = getattr(location, field.name)
        if value is not UNSET:
            wire[field.name] = converter.unstructure(value)
    return wire


converter.register_unstructure_hook(Location, _location_to_wire)
converter.register_unstructure_hook(
    LatLong, lambda c: {"latitude": c.latitude, "longitude": c.longitude}
)
converter.register_unstructure_hook_func(_is_ref, lambda ref: ref.url)
for _model in (Tariff, Supplier, EVSESite):
    converter.register_unstructure_hook(_model, lambda model: model.url)


def to_wire(value: Any) -> Any:
    """A request value (Location, LatLong, Ref, plain data) as JSON-ready data."""
    return converter.unstructure(value)


# --- models back to the API's JSON (the `evenergy` export) ---------------------------------


_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def to_api(value: Any) -> Any:
    """A decoded model (User, Location, Tariff, ...) as the API's JSON data.

    Field names are the API's; `UNSET` fields are left out, None stays null; datetimes are
    ISO 8601 (``Z`` for UTC), dates ISO; a Ref is its URL, or once resolved its resource in
    the same shape (as ``expand=`` would have inlined it).
    """
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    if isinstance(value, Ref):
        return to_api(value.value) if value.resolved else value.url
    if isinstance(value, datetime):
        return _iso_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    cls = type(value)
    names = _FIELDS.get(cls)
    if names is None and attrs.has(cls):
        names = _FIELDS[cls] = tuple(f.name for f in attrs.fields(cls))
    if names is not None:
        data: dict[str, Any] = {}
        for name in names:
            item = getattr(value, name)
            if item is not UNSET:
                data[name] = to_api(item)
        return data
    if isinstance(value, Mapping):
        return {str(k): to_api(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_api(v) for v in value]
    if isinstance(value, enum.Enum):
        return to_api(value.value)
    raise InvalidRequest("value", f"cannot express {type(value).__name__} as API JSON")


def _iso_datetime(value: datetime) -> str:
    text = value.isoformat()
    if value.utcoffset() == timedelta(0) and text.endswith("+00:00"):
        text = text[:-6] + "Z"
    return text
