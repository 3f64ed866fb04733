"""Request bodies of ``POST /users`` and ``PATCH /users/{user_id}``: decoding and validation.

Encodings: ``application/json``, ``application/x-www-form-urlencoded`` and ``multipart/form-data``.
In the two form encodings nested fields use dotted keys as Django REST framework does
(``default_location.address_1=1 High St``, ``default_location.coordinates.latitude=51.5``), an
empty value means null, and numbers arrive as text. An empty body is an empty object.

Validation answers 400 with ``field_errors`` (dotted field path -> messages):

- ``email`` is required on create, must look like an email, and is unique case-insensitively
  (a clash is a 400 on ``email``: "user with this email already exists.", never a 409);
- unknown fields are refused; read-only fields (``id``, ``url``, ``full_name``, ``joined_at``,
  ``terms_consent_datetime``, ``vehicles``, ``evses``, and a location's
  ``current_carbon_intensity_grams_per_kilowatt_hour``) are ignored;
- ``default_location`` may be absent but never null; inside it a key that is absent is left
  alone and a key sent as null is cleared (merge semantics on PATCH);
- the address rule (the Location schema's ``dependentSchemas``): when any of ``address_1``,
  ``address_2``, ``city``, ``state``, ``postal_code``, ``country_code`` or ``coordinates`` is
  non-null in the location object as sent, ``address_1``, ``city``, ``postal_code`` and
  ``country_code`` must all be sent non-null;
- ``tariff`` and ``evse_site`` are null or the URL of a tariff / site of this fake.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from email.message import Message
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl

import attrs
import msgspec

from evenergy_async.testing._data import COUNTRY_CODES, LocationRecord, UserRecord

FieldErrors = dict[str, list[str]]

READ_ONLY_USER_FIELDS = frozenset(
    {"id", "url", "full_name", "joined_at", "terms_consent_datetime", "vehicles", "evses"}
)
READ_ONLY_LOCATION_FIELDS = frozenset({"current_carbon_intensity_grams_per_kilowatt_hour"})
TEXT_FIELDS = ("address_1", "address_2", "postal_code", "city", "state")
ADDRESS_FIELDS = (*TEXT_FIELDS, "country_code", "coordinates")
REQUIRED_WITH_ADDRESS = ("address_1", "city", "postal_code", "country_code")
LOCATION_FIELDS = frozenset({*ADDRESS_FIELDS, "tariff", "evse_site"})
MAX_TEXT = 255
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")


class BodyError(Exception):
    """A body that cannot be decoded at all (400 or 415-like, answered as 400)."""

    def __init__(self, slug: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.slug = slug
        self.title = title
        self.detail = detail


class ValidationFailed(Exception):
    def __init__(self, errors: FieldErrors) -> None:
        super().__init__(", ".join(errors))
        self.errors = errors


# --- decoding --------------------------------------------------------------------------------


def decode_body(content_type: str, body: bytes) -> tuple[dict[str, object], bool]:
    """The body as a dict and whether it came from a form (values are then text)."""
    mime = content_type.partition(";")[0].strip().lower()
    if not body.strip():
        return {}, mime != "application/json"
    if mime == "application/json" or mime.endswith("+json"):
        return _decode_json(body), False
    if mime == "application/x-www-form-urlencoded":
        return unflatten(_urlencoded_pairs(body)), True
    if mime == "multipart/form-data":
        return unflatten(_multipart_pairs(content_type, body)), True
    raise BodyError(
        "unsupported-media-type",
        "Unsupported media type",
        f'Unsupported media type "{mime}" in request.',
    )


def _decode_json(body: bytes) -> dict[str, object]:
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as error:
        detail = f"JSON parse error - {error}"
        raise BodyError("malformed-request", "Malformed request", detail) from None
    if not isinstance(data, dict):
        raise BodyError(
            "malformed-request",
            "Malformed request",
            f"Invalid data. Expected a dictionary, but got {type(data).__name__}.",
        )
    return data


def _urlencoded_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError) as error:
        detail = f"Form parse error - {error}"
        raise BodyError("malformed-request", "Malformed request", detail) from None


def _multipart_pairs(content_type: str, body: bytes) -> list[tuple[str, str]]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser().parsebytes(head + body)
    parts = message.get_payload()
    if not message.is_multipart() or not isinstance(parts, list):
        raise BodyError("malformed-request", "Malformed request", "Multipart form parse error.")
    return [_form_part(part) for part in parts if isinstance(part, Message)]


def _form_part(part: Message) -> tuple[str, str]:
    name = part.get_param("name", header="content-disposition")
    if not isinstance(name, str):
        raise BodyError("malformed-request", "Malformed request", "A form part has no name.")
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    return name, data.decode("utf-8", errors="replace")


def unflatten(pairs: Iterable[tuple[str, str]]) -> dict[str, object]:
    """DRF-style dotted form keys to nested dicts; an empty value is null; the last value wins."""
    result: dict[str, object] = {}
    for key, text in pairs:
        value: object = text if text != "" else None
        *parents, leaf = key.split(".")
        node = result
        for depth, parent in enumerate(parents):
            child = node.get(parent)
            if child is None:
                child = node[parent] = {}
            if not isinstance(child, dict):
                raise ValidationFailed(
                    {".".join(parents[: depth + 1]): ["Conflicting form fields."]}
                )
            node = child
        if isinstance(node.get(leaf), dict):
            raise ValidationFailed({key: ["Conflicting form fields."]})
        node[leaf] = value
    return result


# --- validation ------------------------------------------------------------------------------


@attrs.frozen
class UserChanges:
    """A validated write: ``email`` None means unchanged; ``location`` holds only the keys sent."""

    email: str | None
    location: dict[str, Any]


Resolve = Callable[[str], "int | None"]


@attrs.frozen
class Validator:
    """Validates user writes against the fake's data (hyperlinks resolve through callables)."""

    resolve_tariff: Resolve
    resolve_site: Resolve

    def user(self, payload: dict[str, object], *, creating: bool, form: bool) -> UserChanges:
        errors: FieldErrors = {}
        for key in payload:
            if key not in READ_ONLY_USER_FIELDS and key not in ("email", "default_location"):
                errors[key] = ["Unknown field."]
        email = self._email(payload, creating, errors)
        location = self._location(payload, form, errors)
        if errors:
            raise ValidationFailed(errors)
        return UserChanges(email, location)

    def _email(self, payload: dict[str, object], creating: bool, errors: FieldErrors) -> str | None:
        if "email" not in payload:
            if creating:
                errors["email"] = ["This field is required."]
            return None
        value = payload["email"]
        if value is None:
            errors["email"] = ["This field may not be null."]
        elif not isinstance(value, str) or not _EMAIL.fullmatch(value) or len(value) > 254:
            errors["email"] = ["Enter a valid email address."]
        else:
            return value
        return None

    def _location(
        self, payload: dict[str, object], form: bool, errors: FieldErrors
    ) -> dict[str, Any]:
        if "default_location" not in payload:
            return {}
        sent = payload["default_location"]
        if sent is None:
            errors["default_location"] = ["This field may not be null."]
            return {}
        if not isinstance(sent, dict):
            kind = type(sent).__name__
            errors["default_location"] = [f"Invalid data. Expected a dictionary, but got {kind}."]
            return {}
        changes: dict[str, Any] = {}
        for key, value in sent.items():
            path = f"default_location.{key}"
            if key in READ_ONLY_LOCATION_FIELDS:
                continue
            if key not in LOCATION_FIELDS:
                errors[path] = ["Unknown field."]
                continue
            message, parsed = self._location_field(key, value, form, errors)
            if message:
                errors[path] = [message]
            else:
                changes[key] = parsed
        self._address_rule(sent, errors)
        return changes

    def _location_field(
        self, key: str, value: object, form: bool, errors: FieldErrors
    ) -> tuple[str | None, object]:
        if value is None:
            return None, None
        if key in TEXT_FIELDS:
            return _text(value)
        if key == "country_code":
            if isinstance(value, str) and value in COUNTRY_CODES:
                return None, value
            return f'"{value}" is not a valid choice.', None
        if key == "coordinates":
            return None, _coordinates(value, form, errors)
        resolve = self.resolve_tariff if key == "tariff" else self.resolve_site
        return _hyperlink(value, resolve)

    @staticmethod
    def _address_rule(sent: dict[str, object], errors: FieldErrors) -> None:
        if all(sent.get(key) is None for key in ADDRESS_FIELDS):
            return
        for key in REQUIRED_WITH_ADDRESS:
            path = f"default_location.{key}"
            if sent.get(key) is None and path not in errors:
                errors[path] = ["This field is required when any address field is given."]


def _text(value: object) -> tuple[str | None, object]:
    if not isinstance(value, str):
        return "Not a valid string.", None
    if len(value) > MAX_TEXT:
        return f"Ensure this field has no more than {MAX_TEXT} characters.", None
    return None, value


def _coordinates(value: object, form: bool, errors: FieldErrors) -> tuple[float, float] | None:
    if not isinstance(value, dict):
        kind = type(value).__name__
        errors["default_location.coordinates"] = [
            f"Invalid data. Expected a dictionary, but got {kind}."
        ]
        return None
    for key in value:
        if key not in ("latitude", "longitude"):
            errors[f"default_location.coordinates.{key}"] = ["Unknown field."]
    latitude = _number(value, "latitude", 90.0, form, errors)
    longitude = _number(value, "longitude", 180.0, form, errors)
    if latitude is None or longitude is None:
        return None
    return latitude, longitude


def _number(
    value: dict[str, object], key: str, bound: float, form: bool, errors: FieldErrors
) -> float | None:
    path = f"default_location.coordinates.{key}"
    raw = value.get(key)
    number: float | None = None
    if raw is None:
        errors[path] = [
            "This field is required." if key not in value else "This field may not be null."
        ]
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        number = float(raw)
    elif form and isinstance(raw, str):
        try:
            number = float(raw)
        except ValueError:
            number = None
    if number is None or number != number:  # NaN is not a number here
        errors[path] = ["A valid number is required."]
        return None
    if not -bound <= number <= bound:
        errors[path] = [f"Ensure this value is between {-bound:g} and {bound:g}."]
        return None
    return number


def _hyperlink(value: object, resolve: Resolve) -> tuple[str | None, object]:
    if not isinstance(value, str):
        return f"Incorrect type. Expected URL string, received {type(value).__name__}.", None
    index = resolve(value)
    if index is None:
        return "Invalid hyperlink - Object does not exist.", None
    return None, index


# --- applying --------------------------------------------------------------------------------


def apply_changes(record: UserRecord, changes: UserChanges) -> UserRecord:
    """A copy of ``record`` with the changes merged in (absent keys untouched, nulls cleared)."""
    location = attrs.evolve(record.location, **changes.location)
    email = record.email if changes.email is None else changes.email
    return attrs.evolve(record, email=email, location=location)


def new_record(changes: UserChanges, joined_at: str) -> UserRecord:
    """The record of a user created with ``changes``."""
    assert changes.email is not None
    return UserRecord(
        email=changes.email,
        full_name="",
        joined_at=joined_at,
        terms_consent_datetime=None,
        location=attrs.evolve(LocationRecord(), **changes.location),
    )
