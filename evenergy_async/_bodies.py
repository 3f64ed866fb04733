"""Request bodies: the wire form of what a caller asks to write, checked before it is sent.

Every refusal is an InvalidRequest naming the argument, raised before a request is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._convert import to_wire
from ._countries import COUNTRY_CODES
from ._validate import check_email
from .errors import InvalidRequest
from .models import UNSET, LatLong, Location, UnsetType
from .refs import Ref

__all__ = [
    "CLEARED_LOCATION",
    "WRITABLE_LOCATION_FIELDS",
    "form_fields",
    "location_body",
    "user_body",
]

# Location fields whose non-null value brings in the spec's address rule, and the fields the
# rule then requires (the Location schema's dependentSchemas).
_ADDRESS_TRIGGERS = ("address_1", "address_2", "city", "state", "postal_code", "country_code")
_ADDRESS_REQUIRED = ("address_1", "city", "postal_code", "country_code")


def location_body(
    location: object, field: str = "default_location", *, address_rule: bool = True
) -> dict[str, Any]:
    """The wire form of a Location as sent: unset fields left out, nulls kept.

    Checks the spec's address rule on the object as sent (unless `address_rule` is False:
    a sync record's location is a wish merged into the server's, checked once merged), the
    country code against the spec's list, coordinates' ranges, and the types of every field.
    """
    if location is None:
        raise InvalidRequest(field, "cannot be null (the API does not allow it); clear its fields")
    if not isinstance(location, Location):
        raise InvalidRequest(field, f"expected an ev.Location, got {type(location).__name__}")
    for name in (*_ADDRESS_TRIGGERS, "state"):
        value = getattr(location, name)
        if not (value is UNSET or value is None or isinstance(value, str)):
            raise InvalidRequest(f"{field}.{name}", f"expected a string or None, got {value!r}")
    country = location.country_code
    if isinstance(country, str) and country not in COUNTRY_CODES:
        raise InvalidRequest(
            f"{field}.country_code", f"not an ISO 3166-1 alpha-2 code: {country!r}"
        )
    _check_coordinates(location.coordinates, f"{field}.coordinates")
    for name in ("tariff", "evse_site"):
        _check_relation(getattr(location, name), f"{field}.{name}")
    wire: dict[str, Any] = to_wire(location)
    wire.pop("current_carbon_intensity_grams_per_kilowatt_hour", None)  # read-only
    if address_rule:
        _check_address_rule(wire, field)
    return wire


def _check_coordinates(value: object, field: str) -> None:
    if value is UNSET or value is None:
        return
    if not isinstance(value, LatLong):
        raise InvalidRequest(field, f"expected an ev.LatLong or None, got {value!r}")
    for name, bound in (("latitude", 90.0), ("longitude", 180.0)):
        number = getattr(value, name)
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not math.isfinite(number)
            or abs(number) > bound
        ):
            raise InvalidRequest(f"{field}.{name}", f"expected a number within ±{bound:g}")


def _check_relation(value: object, field: str) -> None:
    if value is UNSET or value is None or isinstance(value, Ref):
        return
    raise InvalidRequest(field, f"expected an ev.Ref or None, got {value!r}")


def _check_address_rule(wire: Mapping[str, Any], field: str) -> None:
    triggered = [k for k in (*_ADDRESS_TRIGGERS, "coordinates") if wire.get(k) is not None]
    if not triggered:
        return
    missing = [k for k in _ADDRESS_REQUIRED if wire.get(k) is None]
    if missing:
        raise InvalidRequest(
            field,
            f"a partial address: {', '.join(triggered)} given, so "
            f"{', '.join(_ADDRESS_REQUIRED)} must all be given (missing {', '.join(missing)})",
        )


# The API's writable location fields, in the order of `Location`'s (and of a sync record's).
WRITABLE_LOCATION_FIELDS = (
    "address_1",
    "address_2",
    "postal_code",
    "country_code",
    "coordinates",
    "tariff",
    "city",
    "state",
    "evse_site",
)

# What `update(default_location=None)` sends: the API has no null location, so clearing the
# location means clearing each of its writable fields.
CLEARED_LOCATION = Location(**dict.fromkeys(WRITABLE_LOCATION_FIELDS, None))


def user_body(
    *,
    email: str | UnsetType,
    default_location: Location | UnsetType | None,
    none_clears_location: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if email is not UNSET:
        body["email"] = check_email(email)
    if default_location is None and none_clears_location:
        default_location = CLEARED_LOCATION
    if default_location is not UNSET:
        body["default_location"] = location_body(default_location)
    return body


def form_fields(body: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A JSON body as form fields: nested keys dotted (as Django REST framework reads them),
    null as an empty value."""
    fields: list[tuple[str, str]] = []
    for key, value in body.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            fields.extend(form_fields(value, f"{name}."))
        elif value is None:
            fields.append((name, ""))
        elif isinstance(value, bool):
            fields.append((name, "true" if value else "false"))
        else:
            fields.append((name, str(value)))
    return fields
