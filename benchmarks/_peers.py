"""What the contenders share: pydantic v2 models and msgspec Structs of the same shape, our
own models with some relations as plain strings (to measure what the Refs cost), a minimal
Link parser, and the request headers every contender sends (auth and version, as the
library does)."""

from __future__ import annotations

import re
import typing
from datetime import datetime
from typing import Any

import attrs
import msgspec
from msgspec import UNSET, UnsetType
from pydantic import BaseModel, ConfigDict, TypeAdapter

from evenergy_async import Location, User
from evenergy_async.models import preset_unset_on_decode

__all__ = [
    "MsUser",
    "PlainLocation",
    "PlainUser",
    "PydLatLong",
    "PydLocation",
    "PydUser",
    "UrlListUser",
    "headers",
    "ms_users",
    "next_link",
    "pyd_users",
]


# --- pydantic v2 models: User / Location / LatLong, relations as plain URL strings ------------


class PydLatLong(BaseModel):
    model_config = ConfigDict(frozen=True)
    latitude: float
    longitude: float


class PydLocation(BaseModel):
    model_config = ConfigDict(frozen=True)
    address_1: str | None = None
    address_2: str | None = None
    postal_code: str | None = None
    country_code: str | None = None
    coordinates: PydLatLong | None = None
    tariff: str | None = None
    city: str | None = None
    state: str | None = None
    evse_site: str | None = None
    current_carbon_intensity_grams_per_kilowatt_hour: int | None = None


class PydUser(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    url: str
    email: str | None = None
    full_name: str | None = None
    joined_at: datetime | None = None
    terms_consent_datetime: datetime | None = None
    default_location: PydLocation | None = None
    vehicles: tuple[str, ...] = ()
    evses: tuple[str, ...] = ()


pyd_users: TypeAdapter[list[PydUser]] = TypeAdapter(list[PydUser])


# --- msgspec Structs: the compiled ceiling (a Struct is not an attrs class: not our public type)


class MsLatLong(msgspec.Struct, frozen=True):
    latitude: float
    longitude: float


class MsLocation(msgspec.Struct, frozen=True):
    address_1: str | UnsetType | None = UNSET
    address_2: str | UnsetType | None = UNSET
    postal_code: str | UnsetType | None = UNSET
    country_code: str | UnsetType | None = UNSET
    coordinates: MsLatLong | UnsetType | None = UNSET
    tariff: str | UnsetType | None = UNSET
    city: str | UnsetType | None = UNSET
    state: str | UnsetType | None = UNSET
    evse_site: str | UnsetType | None = UNSET
    current_carbon_intensity_grams_per_kilowatt_hour: int | UnsetType | None = UNSET


class MsUser(msgspec.Struct, frozen=True):
    id: str
    url: str
    email: str | UnsetType = UNSET
    full_name: str | UnsetType = UNSET
    joined_at: datetime | UnsetType = UNSET
    terms_consent_datetime: datetime | UnsetType | None = UNSET
    default_location: MsLocation | UnsetType = UNSET
    vehicles: tuple[str, ...] = ()
    evses: tuple[str, ...] = ()


ms_users = msgspec.json.Decoder(list[MsUser])


# --- RFC 8288 Link, minimally but correctly ----------------------------------------------------

# link-value = "<" URI-Reference ">" *( OWS ";" OWS link-param ); params may be quoted strings.
_LINK = re.compile(r'<([^>]*)>((?:\s*;\s*[^;,=\s]+\s*(?:=\s*(?:"(?:[^"\\]|\\.)*"|[^;,]*))?)*)')
_PARAM = re.compile(r'\s*;\s*([^;,=\s]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^;,]*)))?')


def next_link(value: str | None) -> str | None:
    """The target of ``rel="next"`` (rel may list several types), or None; ``<about:blank>``
    is the API's "no such page"."""
    if not value:
        return None
    for match in _LINK.finditer(value):
        for param in _PARAM.finditer(match.group(2)):
            if param.group(1).lower() != "rel":
                continue
            rel = param.group(2) if param.group(2) is not None else param.group(3) or ""
            if "next" in rel.lower().split():
                target = match.group(1).strip()
                return None if target == "about:blank" else target
            break  # only the first rel parameter counts (RFC 8288 section 3.3)
    return None


def headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "EvEnergy-Version": "2",
    }


def _self_test() -> None:
    base = "http://h/v2/users?page_size=100"
    assert next_link(f'<about:blank>; rel="previous", <{base}&page_after=x>; rel="next"') == (
        f"{base}&page_after=x"
    )
    assert next_link(f'<{base}>; rel="previous", <about:blank>; rel="next"') is None
    assert next_link(f"<{base}>; rel=next") == base
    assert next_link(f'<{base}>; title="a, b; rel=next"; rel="prev next"') == base
    assert next_link(f'<{base}>; rel="previous"') is None
    assert next_link(None) is None


_self_test()


# --- our models, some relations as plain URL strings -----------------------------------------


def variant(cls: type[Any], name: str, **types: Any) -> type[Any]:
    """`cls` with the types of some fields replaced: the same fields, defaults and checks
    otherwise, so decoding it measures only what the replaced types cost."""
    hints = typing.get_type_hints(cls, include_extras=True) | types
    fields = {f.name: attrs.field(default=f.default, kw_only=True) for f in attrs.fields(cls)}
    model: type[Any] = attrs.make_class(name, fields, frozen=True, slots=True)
    model.__annotations__ = {field: hints[field] for field in fields}  # msgspec reads these
    return model


PlainLocation = variant(
    Location, "PlainLocation", tariff=str | UnsetType | None, evse_site=str | UnsetType | None
)
# Preset for msgspec as `Location` is.
preset_unset_on_decode(PlainLocation, "current_carbon_intensity_grams_per_kilowatt_hour")
# Every relation a plain string: what decoding into attrs costs before any Ref is made.
PlainUser = variant(
    User,
    "PlainUser",
    default_location=PlainLocation | UnsetType,
    vehicles=tuple[str, ...],
    evses=tuple[str, ...],
)
# The Refs of a user's own vehicles and EVSEs left out (its location's tariff is still a Ref).
UrlListUser = variant(User, "UrlListUser", vehicles=tuple[str, ...], evses=tuple[str, ...])
