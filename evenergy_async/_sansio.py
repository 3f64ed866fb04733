"""Pure protocol logic: what to send, and what a (status, headers, body) response means.

Nothing here does I/O or imports aiohttp, so every rule can be tested without an event loop.
Header mappings passed in must look names up case-insensitively (a multidict `CIMultiDict`
or aiohttp's response headers).
"""

from __future__ import annotations

import email.utils
import http
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec
from multidict import CIMultiDict, CIMultiDictProxy, istr

from .errors import APIError, InvalidResponse, RateLimited, status_error
from .models import RateLimit

API_VERSION = "2"
USER_AGENT = "evenergy-async/0.1.0"
ABOUT_BLANK = "about:blank"

JSON_CONTENT_TYPES = ("application/json", "application/problem+json")


def request_headers(
    token: str | None, acting_user: str | None, *, content_type: str | None = None
) -> dict[str, str]:
    """The headers every API request carries: auth, pinned version, acting user."""
    headers = {
        "Accept": "application/json",
        "EvEnergy-Version": API_VERSION,
        "User-Agent": USER_AGENT,
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if acting_user is not None:
        headers["EvEnergy-User"] = acting_user
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


# --- Link header (RFC 8288, section 3) -------------------------------------------------------
#   Link       = #link-value
#   link-value = "<" URI-Reference ">" *( OWS ";" OWS link-param )
#   link-param = token BWS [ "=" BWS ( token / quoted-string ) ]
# A URI may hold commas and semicolons, a quoted-string may hold anything but an unescaped
# quote, so the header is scanned, not split.

_OWS = " \t"


def parse_link_header(value: str) -> list[tuple[str, dict[str, str]]]:
    """Every link-value of a Link header as (target, params); param names lower-cased.

    Raises InvalidResponse when the header is not a Link header at all.
    """
    links: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(value)
    while True:
        while i < n and (value[i] in _OWS or value[i] == ","):
            i += 1
        if i >= n:
            return links
        if value[i] != "<":
            raise InvalidResponse(f"malformed Link header: expected '<' at {i}: {value!r}")
        end = value.find(">", i + 1)
        if end < 0:
            raise InvalidResponse(f"malformed Link header: unclosed '<': {value!r}")
        target = value[i + 1 : end].strip()
        params: dict[str, str] = {}
        i = end + 1
        while True:
            while i < n and value[i] in _OWS:
                i += 1
            if i >= n or value[i] == ",":
                break
            if value[i] != ";":
                raise InvalidResponse(f"malformed Link header: expected ';' at {i}: {value!r}")
            i += 1
            name, param, i = _link_param(value, i)
            if name and name not in params:  # RFC 8288: occurrences after the first are ignored
                params[name] = param
        links.append((target, params))


# One link-param from its name on: name, then ``=`` and a quoted-string or a token.  A quote
# left open makes the quoted alternative fail, so the token one starts with the quote.
_LINK_PARAM = re.compile(r'([^=;,]*)(?:=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^;,]*)))?', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


def _link_param(value: str, i: int) -> tuple[str, str, int]:
    # A regular expression, not a loop over characters: this runs for every page of a stream.
    match = _LINK_PARAM.match(value, i)
    assert match is not None  # every part of the pattern may be empty
    name = match[1].strip().lower()
    quoted, token = match[2], match[3]
    if quoted is not None:
        return name, _QUOTED_PAIR.sub(r"\1", quoted) if "\\" in quoted else quoted, match.end()
    if token is None:
        return name, "", match.end()
    if token.startswith('"'):
        raise InvalidResponse(f"malformed Link header: unclosed quoted string: {value!r}")
    return name, token.strip(), match.end()


def links_by_rel(value: str | None) -> dict[str, str | None]:
    """Relation type (lower-cased) to target; ``about:blank`` (no such page) maps to None."""
    if not value:
        return {}
    found: dict[str, str | None] = {}
    for target, params in parse_link_header(value):
        url = None if target == ABOUT_BLANK else target
        for rel in params.get("rel", "").lower().split():
            found.setdefault(rel, url)
    return found


# --- header values ---------------------------------------------------------------------------


def parse_count(value: str | None) -> int | None:
    """A non-negative whole number from a header (``"1000"``, ``"1000.0"``); None if garbage."""
    if value is None:
        return None
    if len(value) <= 15 and value.isascii() and value.isdigit():
        # What every response carries, read without a float: at most 15 digits, which a
        # float holds exactly, so the answer is the one the general path below gives.
        return int(value)
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0 or number != int(number):
        return None
    return int(number)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (RFC 9110 section 10.2.3); None if garbage.

    Accepts delay-seconds (also fractional, which some servers send) and an HTTP-date, read
    against `now` (seconds since the epoch). A date in the past or a negative delay is 0.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), 86400.0 * 365)


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Retry-After under either of the spec's spellings (``Retry-After``, ``RetryAfter``)."""
    value = headers.get("Retry-After")
    if value is None:
        value = headers.get("RetryAfter")
    return parse_retry_after(value, now)


# Looked up on every response: case-insensitive keys made once (a plain `str` key is folded on
# each lookup).
_LIMIT = istr("X-RateLimit-Limit")
_REMAINING = istr("X-RateLimit-Remaining")


def rate_limit_from_headers(
    headers: Mapping[str, str], status: int, now: float
) -> RateLimit | None:
    """The rate-limit snapshot in a response's headers, or None if it carries none.

    Retry-After is read for an error status only: on a success it means nothing (RFC 9110
    section 10.2.3 gives it for 3xx, 429 and 503).  `now` is seconds since the epoch (for an
    HTTP-date Retry-After).
    """
    limit = parse_count(headers.get(_LIMIT))
    remaining = parse_count(headers.get(_REMAINING))
    wait = retry_after(headers, now) if status >= 400 else None
    if limit is None and remaining is None and wait is None:
        return None
    if limit is not None and remaining is not None and remaining > limit:
        remaining = limit
    return RateLimit(limit, remaining, wait)


# --- bodies ----------------------------------------------------------------------------------


_decode_json = msgspec.json.Decoder().decode
encode_json = msgspec.json.Encoder().encode
"""A request body as JSON bytes (None as null); `UNSET` fields of a model are left out."""


def decode_json(body: bytes) -> Any:
    """The JSON document in a success body; InvalidResponse if it is not JSON."""
    try:
        return _decode_json(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise InvalidResponse(f"response body is not JSON: {exc}") from None


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def error_from_response(
    status: int, headers: Mapping[str, str], body: bytes, now: float
) -> APIError:
    """The exception for an error response (RFC 9457 problem details).

    A body that is not problem+json (a proxy's HTML page, an empty body) still yields the
    class the status calls for, titled by the status's reason phrase.
    """
    problem: dict[str, Any] = {}
    if _media_type(headers) in JSON_CONTENT_TYPES:
        try:
            parsed = _decode_json(body)
        except (msgspec.DecodeError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            problem = parsed
    try:
        reason: str | None = http.HTTPStatus(status).phrase
    except ValueError:
        reason = None
    fields: dict[str, Any] = {
        "type": _text(problem.get("type")),
        "title": _text(problem.get("title")) or reason,
        "detail": _text(problem.get("detail")),
        "instance": _text(problem.get("instance")),
        "field_errors": flatten_field_errors(problem.get("field_errors")),
        "headers": CIMultiDictProxy(CIMultiDict(headers)),
    }
    cls = status_error(status)
    if cls is RateLimited:
        return RateLimited(status, retry_after=retry_after(headers, now), **fields)
    return cls(status, **fields)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


_MAX_FIELD_DEPTH = 16  # deeper than any schema of the API; stops a hostile body's recursion


def flatten_field_errors(
    value: object, prefix: str = "", depth: int = 0
) -> dict[str, tuple[str, ...]]:
    """``field_errors`` as dotted field path -> messages, whatever shape the server nests."""
    flat: dict[str, tuple[str, ...]] = {}
    if depth > _MAX_FIELD_DEPTH:
        return flat
    if isinstance(value, dict):
        for key, inner in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            flat.update(flatten_field_errors(inner, path, depth + 1))
    elif isinstance(value, str):
        flat[prefix or "non_field_errors"] = (value,)
    elif isinstance(value, list):
        messages = tuple(m for m in value if isinstance(m, str))
        if messages:
            flat[prefix or "non_field_errors"] = messages
        for item in value:
            if isinstance(item, dict):
                flat.update(flatten_field_errors(item, prefix, depth + 1))
    return flat
