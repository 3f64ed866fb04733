"""Input checks: ids, cursors, page sizes, expansions, emails, decided before anything is sent.

Every refusal is an InvalidRequest naming the argument, raised before a request is built,
so bad input costs no rate-limit budget and changes nothing on the server.  Request bodies
are built (and checked) by `_bodies`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import get_args

from .errors import InvalidRequest
from .models import TariffPath, UserPath

# The spec's id patterns: a 4-letter collection prefix and a 26-character ULID.
_ID_BODY = r"[A-Z0-9]{26}"
USER_ID = re.compile(rf"user{_ID_BODY}")
TARIFF_ID = re.compile(rf"tari{_ID_BODY}")
SUPPLIER_ID = re.compile(rf"supl{_ID_BODY}")
EVSE_SITE_ID = re.compile(rf"site{_ID_BODY}")
CURSOR = re.compile(rf"[a-z]{{4}}{_ID_BODY}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")

USER_EXPANSIONS: frozenset[str] = frozenset(get_args(UserPath))
TARIFF_EXPANSIONS: frozenset[str] = frozenset(get_args(TariffPath))


def check_id(value: object, pattern: re.Pattern[str], field: str, *, me: bool = False) -> str:
    if isinstance(value, str) and (pattern.fullmatch(value) or (me and value == "me")):
        return value
    expected = f"{pattern.pattern!r}" + (' or "me"' if me else "")
    raise InvalidRequest(field, f"expected an id matching {expected}, got {value!r}")


def check_cursor(value: object, field: str) -> str:
    return check_id(value, CURSOR, field)


def check_page_size(value: object, field: str = "page_size") -> int:
    if type(value) is not int or not 1 <= value <= 100:
        raise InvalidRequest(field, f"expected a whole number from 1 to 100, got {value!r}")
    return value


def check_page_number(value: object, field: str = "page") -> int:
    if type(value) is not int or value < 1:
        raise InvalidRequest(field, f"expected a whole number from 1, got {value!r}")
    return value


def check_expand(value: object, allowed: frozenset[str], field: str = "expand") -> tuple[str, ...]:
    """A tuple of known expansion paths; a single string is one path."""
    values = (value,) if isinstance(value, str) else value
    # The common shapes first: the check against the Iterable ABC is slow, and runs per call.
    if not isinstance(values, tuple | list) and not isinstance(values, Iterable):
        raise InvalidRequest(field, f"expected a sequence of strings, got {value!r}")
    result: list[str] = []
    for item in values:
        if not isinstance(item, str) or item not in allowed:
            raise InvalidRequest(
                field, f"unknown path {item!r}; known: {', '.join(sorted(allowed))}"
            )
        if item not in result:
            result.append(item)
    return tuple(result)


def check_email(value: object, field: str = "email") -> str:
    if not isinstance(value, str) or not _EMAIL.fullmatch(value):
        raise InvalidRequest(field, f"expected an email address, got {value!r}")
    return value


def check_bool(value: object, field: str) -> bool:
    if type(value) is not bool:
        raise InvalidRequest(field, f"expected True or False, got {value!r}")
    return value


def check_text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(field, f"expected a non-empty string, got {value!r}")
    return value
