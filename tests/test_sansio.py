"""Pure tests of `_sansio`: no event loop, no network.  Every rule is a function of its input."""

from __future__ import annotations

import http
import math

import msgspec
import pytest
from multidict import CIMultiDict

from evenergy_async import _sansio
from evenergy_async._sansio import (
    error_from_response,
    flatten_field_errors,
    links_by_rel,
    parse_count,
    parse_link_header,
    parse_retry_after,
    rate_limit_from_headers,
    request_headers,
    retry_after,
)
from evenergy_async.errors import (
    APIError,
    BadRequest,
    Conflict,
    EvEnergyError,
    Forbidden,
    InvalidResponse,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    status_error,
)
from evenergy_async.models import RateLimit

B = "https://api.example.test/v2"
NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
PROBLEM = "application/problem+json"


# --- request headers ----------------------------------------------------------------------------


def test_request_headers_with_token_and_acting_user():
    headers = request_headers("secret-token", "user01HN2NJ9NMRZBXT1H6FT9N7735")
    assert headers["Authorization"] == "Bearer secret-token"
    assert headers["EvEnergy-Version"] == "2"
    assert headers["EvEnergy-User"] == "user01HN2NJ9NMRZBXT1H6FT9N7735"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith("evenergy-async/")
    assert "Content-Type" not in headers


def test_request_headers_without_token_or_user():
    headers = request_headers(None, None)
    assert "Authorization" not in headers
    assert "EvEnergy-User" not in headers
    assert headers["EvEnergy-Version"] == "2"


def test_request_headers_content_type():
    headers = request_headers("t", None, content_type="application/json")
    assert headers["Content-Type"] == "application/json"


def test_request_headers_returns_fresh_dict():
    first = request_headers("t", None)
    first["X"] = "y"
    assert "X" not in request_headers("t", None)


# --- Link (RFC 8288) ----------------------------------------------------------------------------


def test_links_previous_and_next():
    header = f'<{B}/users?page_before=a>; rel="previous", <{B}/users?page_after=b>; rel="next"'
    assert links_by_rel(header) == {
        "previous": f"{B}/users?page_before=a",
        "next": f"{B}/users?page_after=b",
    }


def test_links_about_blank_is_none():
    header = f'<about:blank>; rel="previous", <{B}/users?page_after=b>; rel="next"'
    links = links_by_rel(header)
    assert links["previous"] is None
    assert links["next"] == f"{B}/users?page_after=b"


def test_links_last_page_next_about_blank():
    assert links_by_rel('<about:blank>; rel="next"') == {"next": None}


@pytest.mark.parametrize("rel", ["next", '"next"', "NEXT", '"Next"'])
def test_links_quoted_and_unquoted_rel(rel):
    assert links_by_rel(f"<{B}/x>; rel={rel}") == {"next": f"{B}/x"}


def test_links_multiple_rels_in_one_value():
    links = links_by_rel(f'<{B}/x>; rel="next last"')
    assert links == {"next": f"{B}/x", "last": f"{B}/x"}


def test_links_multiple_rels_extra_whitespace():
    links = links_by_rel(f'<{B}/x>; rel="  next \t last "')
    assert set(links) == {"next", "last"}


def test_links_several_links():
    header = (
        f'<{B}/1>; rel="first", <{B}/2>; rel="previous", <{B}/3>; rel="next", <{B}/9>; rel=last'
    )
    assert links_by_rel(header) == {
        "first": f"{B}/1",
        "previous": f"{B}/2",
        "next": f"{B}/3",
        "last": f"{B}/9",
    }


def test_links_first_occurrence_of_a_rel_wins():
    header = f'<{B}/a>; rel="next", <{B}/b>; rel="next"'
    assert links_by_rel(header)["next"] == f"{B}/a"


def test_links_commas_and_semicolons_inside_url():
    url = f"{B}/users?expand=a,b;c=d&page_after=x"
    header = f'<{url}>; rel="next", <about:blank>; rel="previous"'
    assert links_by_rel(header) == {"next": url, "previous": None}


def test_link_escaped_quotes_in_quoted_string():
    header = f'<{B}/x>; title="say \\"hi\\", then; go"; rel="next"'
    [(target, params)] = parse_link_header(header)
    assert target == f"{B}/x"
    assert params["title"] == 'say "hi", then; go'
    assert params["rel"] == "next"


def test_link_extra_params_kept_and_names_lowercased():
    header = f'<{B}/x>; REL="next"; Type="application/json"; hreflang=en; anchor="#a"'
    [(target, params)] = parse_link_header(header)
    assert target == f"{B}/x"
    assert params == {
        "rel": "next",
        "type": "application/json",
        "hreflang": "en",
        "anchor": "#a",
    }
    assert links_by_rel(header) == {"next": f"{B}/x"}


def test_link_repeated_param_first_wins():
    [(_, params)] = parse_link_header(f"<{B}/x>; rel=next; rel=last")
    assert params["rel"] == "next"


def test_link_param_without_value():
    [(_, params)] = parse_link_header(f"<{B}/x>; crossorigin; rel=next")
    assert params == {"crossorigin": "", "rel": "next"}


@pytest.mark.parametrize(
    "header",
    [
        f'<{B}/x>;rel="next"',
        f'<{B}/x> ; rel = "next"',
        f"\t<{B}/x>\t;\trel=next\t",
        f"  <{B}/x>; rel=next ,",
        f", , <{B}/x>; rel=next",
        f"<{B}/x>; rel=next;",
        f"< {B}/x >; rel=next",
    ],
)
def test_links_whitespace_variants(header):
    assert links_by_rel(header) == {"next": f"{B}/x"}


def test_links_no_space_between_links():
    assert links_by_rel(f"<{B}/a>;rel=previous,<{B}/b>;rel=next") == {
        "previous": f"{B}/a",
        "next": f"{B}/b",
    }


@pytest.mark.parametrize("header", [None, "", "   ", ", ,"])
def test_links_empty(header):
    assert links_by_rel(header) == {}


def test_parse_link_header_empty():
    assert parse_link_header("") == []


def test_link_without_rel_is_ignored_by_links_by_rel():
    header = f'<{B}/x>; title="no rel"'
    assert parse_link_header(header) == [(f"{B}/x", {"title": "no rel"})]
    assert links_by_rel(header) == {}


@pytest.mark.parametrize(
    "header",
    [
        "https://api.example.test/v2/x; rel=next",  # no angle brackets
        "<https://api.example.test/v2/x; rel=next",  # unclosed '<'
        '<https://api.example.test/v2/x>; rel="next',  # unclosed quoted string
        "<https://api.example.test/v2/x> rel=next",  # missing ';'
        "<https://api.example.test/v2/x>; rel=next, garbage",  # trailing garbage
        "garbage",
        "rel=next",
    ],
)
def test_malformed_link_headers_raise_invalid_response(header):
    with pytest.raises(InvalidResponse):
        parse_link_header(header)
    with pytest.raises(InvalidResponse):
        links_by_rel(header)


def test_invalid_response_is_an_evenergy_error():
    with pytest.raises(EvEnergyError):
        links_by_rel("nope")


# --- counts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1000", 1000),
        ("0", 0),
        (" 42 ", 42),
        ("1000.0", 1000),
        ("1e3", 1000),
        (None, None),
        ("", None),
        ("-1", None),
        ("1.5", None),
        ("abc", None),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        ("1e400", None),
        ("12 34", None),
    ],
)
def test_parse_count(value, expected):
    assert parse_count(value) == expected


# --- Retry-After (RFC 9110 section 10.2.3) --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0.25", 0.25),
        ("-5", 0.0),
        ("-0.5", 0.0),
        ("-inf", 0.0),
    ],
)
def test_parse_retry_after_seconds(value, expected):
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_http_date_in_future():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", NOW) == pytest.approx(30.0)


def test_parse_retry_after_http_date_against_now():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW - 90) == pytest.approx(90.0)


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 21 Oct 2015 07:27:00 GMT",
        "Mon, 01 Jan 2001 00:00:00 GMT",
        "Mon, 01 Jan 0001 00:00:00 GMT",
    ],
)
def test_parse_retry_after_past_date_is_zero(value):
    assert parse_retry_after(value, NOW) == 0.0


@pytest.mark.parametrize(
    "value",
    [None, "", "soon", "Wed, 21 Oct", "12 seconds", "Wed, 32 Foo 2015 07:28:00 GMT", "nan", "NaN"],
)
def test_parse_retry_after_garbage_is_none(value):
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e400", "Thu, 01 Jan 9999 00:00:00 GMT"])
def test_parse_retry_after_never_infinite(value):
    wait = parse_retry_after(value, NOW)
    assert wait is None or (math.isfinite(wait) and wait >= 0)


def test_retry_after_both_spellings():
    assert retry_after(CIMultiDict({"Retry-After": "3"}), NOW) == 3.0
    assert retry_after(CIMultiDict({"RetryAfter": "4"}), NOW) == 4.0
    assert retry_after(CIMultiDict({"retry-after": "5"}), NOW) == 5.0
    assert retry_after(CIMultiDict({"RETRYAFTER": "6"}), NOW) == 6.0


def test_retry_after_wire_name_wins_over_alias():
    headers = CIMultiDict({"RetryAfter": "9", "Retry-After": "2"})
    assert retry_after(headers, NOW) == 2.0


def test_retry_after_absent():
    assert retry_after(CIMultiDict({"X-Other": "1"}), NOW) is None


def test_retry_after_http_date_header():
    headers = CIMultiDict({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"})
    assert retry_after(headers, NOW) == pytest.approx(10.0)


# --- RateLimit snapshot -------------------------------------------------------------------------


def test_rate_limit_from_headers():
    headers = CIMultiDict({"x-ratelimit-limit": "1000", "X-RateLimit-Remaining": "998"})
    assert rate_limit_from_headers(headers, 200, NOW) == RateLimit(1000, 998, None)


def test_rate_limit_from_headers_with_retry_after():
    headers = CIMultiDict(
        {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "RetryAfter": "30"}
    )
    assert rate_limit_from_headers(headers, 429, NOW) == RateLimit(10, 0, 30.0)
    assert rate_limit_from_headers(headers, 503, NOW) == RateLimit(10, 0, 30.0)
    # On a success Retry-After means nothing (RFC 9110 section 10.2.3): not read.
    assert rate_limit_from_headers(headers, 200, NOW) == RateLimit(10, 0, None)


def test_rate_limit_from_headers_none_without_headers():
    assert (
        rate_limit_from_headers(CIMultiDict({"Content-Type": "application/json"}), 429, NOW) is None
    )


def test_rate_limit_from_headers_garbage_values():
    headers = CIMultiDict(
        {"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": "-3", "Retry-After": "later"}
    )
    assert rate_limit_from_headers(headers, 429, NOW) is None


def test_rate_limit_from_headers_partially_garbage():
    headers = CIMultiDict({"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": "7"})
    assert rate_limit_from_headers(headers, 200, NOW) == RateLimit(None, 7, None)
    headers = CIMultiDict({"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "1.5"})
    assert rate_limit_from_headers(headers, 200, NOW) == RateLimit(100, None, None)


def test_rate_limit_remaining_clamped_to_limit():
    headers = CIMultiDict({"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "25"})
    assert rate_limit_from_headers(headers, 200, NOW) == RateLimit(10, 10, None)


def test_rate_limit_only_retry_after():
    headers = CIMultiDict({"Retry-After": "2"})
    assert rate_limit_from_headers(headers, 429, NOW) == RateLimit(None, None, 2.0)
    assert rate_limit_from_headers(headers, 200, NOW) is None


# --- problem details (RFC 9457) -----------------------------------------------------------------

ALL_STATUSES = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: APIError,
    406: APIError,
    409: Conflict,
    413: APIError,
    422: BadRequest,
    429: RateLimited,
    500: ServerError,
    502: ServerError,
    503: ServerError,
    504: ServerError,
}

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    # Python 3.13 took RFC 9110's names for these two; the title follows the interpreter's.
    413: http.HTTPStatus(413).phrase,
    422: http.HTTPStatus(422).phrase,
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@pytest.mark.parametrize(("status", "cls"), sorted(ALL_STATUSES.items()))
def test_status_error_mapping(status, cls):
    assert status_error(status) is cls


@pytest.mark.parametrize(("status", "cls"), sorted(ALL_STATUSES.items()))
def test_error_from_problem_json(status, cls):
    problem = {
        "type": f"{B}/problems/some-problem/",
        "title": "Something went wrong",
        "status": status,
        "detail": "Because of reasons.",
        "instance": f"{B}/users/user01HN2NJ9NMRZBXT1H6FT9N7735",
        "field_errors": {"email": ["Enter a valid email address."]},
    }
    headers = CIMultiDict({"Content-Type": PROBLEM, "X-Request-Id": "abc"})
    exc = error_from_response(status, headers, msgspec.json.encode(problem), NOW)
    assert type(exc) is cls
    assert isinstance(exc, APIError)
    assert exc.status == status
    assert exc.type == problem["type"]
    assert exc.title == "Something went wrong"
    assert exc.detail == "Because of reasons."
    assert exc.instance == problem["instance"]
    assert exc.field_errors == {"email": ("Enter a valid email address.",)}
    assert exc.headers["X-Request-Id"] == "abc"
    assert str(status) in str(exc)
    assert "Because of reasons." in str(exc)


@pytest.mark.parametrize("status", [599, 450, 499, 418])
def test_error_from_unknown_statuses(status):
    exc = error_from_response(status, CIMultiDict(), b"", NOW)
    assert isinstance(exc, APIError)
    assert exc.status == status
    assert type(exc) is (ServerError if status >= 500 else APIError)


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/Problem+JSON; charset=utf-8"]
)
def test_error_problem_media_types(content_type):
    body = msgspec.json.encode({"title": "Nope", "detail": "d"})
    exc = error_from_response(404, CIMultiDict({"Content-Type": content_type}), body, NOW)
    assert isinstance(exc, NotFound)
    assert (exc.title, exc.detail) == ("Nope", "d")


NON_PROBLEM_BODIES = [
    ("text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    (PROBLEM, b""),
    ("application/json", b""),
    (PROBLEM, b'["an", "array"]'),
    (PROBLEM, b'"a string"'),
    (PROBLEM, b"42"),
    (PROBLEM, b"null"),
    (PROBLEM, b"{not json"),
    (PROBLEM, b"\xff\xfe\x00garbage"),
    ("text/plain", b'{"title": "ignored: not a JSON media type"}'),
    ("", b'{"title": "ignored"}'),
]


@pytest.mark.parametrize(("status", "cls"), sorted(ALL_STATUSES.items()))
@pytest.mark.parametrize(("content_type", "body"), NON_PROBLEM_BODIES)
def test_error_from_non_problem_body(status, cls, content_type, body):
    headers = CIMultiDict({"Content-Type": content_type} if content_type else {})
    exc = error_from_response(status, headers, body, NOW)
    assert type(exc) is cls
    assert exc.status == status
    assert exc.title == REASONS[status]
    assert exc.detail is None
    assert exc.type is None
    assert exc.instance is None
    assert exc.field_errors == {}


def test_error_problem_fields_of_wrong_type_ignored():
    body = msgspec.json.encode(
        {"type": 5, "title": ["x"], "detail": {"a": 1}, "instance": None, "field_errors": 7}
    )
    exc = error_from_response(400, CIMultiDict({"Content-Type": PROBLEM}), body, NOW)
    assert isinstance(exc, BadRequest)
    assert exc.title == "Bad Request"
    assert (exc.type, exc.detail, exc.instance) == (None, None, None)
    assert exc.field_errors == {}


def test_error_status_from_response_not_body():
    body = msgspec.json.encode({"status": 200, "title": "Liar"})
    exc = error_from_response(409, CIMultiDict({"Content-Type": PROBLEM}), body, NOW)
    assert isinstance(exc, Conflict)
    assert exc.status == 409


def test_rate_limited_from_problem_with_retry_after():
    body = msgspec.json.encode(
        {"type": f"{B}/problems/rate-limit-exceeded/", "title": "Too many", "status": 429}
    )
    headers = CIMultiDict({"Content-Type": PROBLEM, "Retry-After": "17"})
    exc = error_from_response(429, headers, body, NOW)
    assert isinstance(exc, RateLimited)
    assert exc.retry_after == 17.0
    assert exc.type.endswith("/rate-limit-exceeded/")


def test_rate_limited_retry_after_alias_and_missing():
    exc = error_from_response(429, CIMultiDict({"RetryAfter": "3"}), b"", NOW)
    assert isinstance(exc, RateLimited)
    assert exc.retry_after == 3.0
    exc = error_from_response(429, CIMultiDict(), b"", NOW)
    assert exc.retry_after is None


def test_rate_limited_retry_after_http_date():
    headers = CIMultiDict({"Retry-After": "Wed, 21 Oct 2015 07:29:00 GMT"})
    exc = error_from_response(429, headers, b"", NOW)
    assert exc.retry_after == pytest.approx(60.0)


def test_error_headers_kept():
    headers = CIMultiDict({"Content-Type": PROBLEM, "EvEnergy-Version": "2", "X-Trace": "t1"})
    exc = error_from_response(500, headers, b"{}", NOW)
    assert exc.headers["EvEnergy-Version"] == "2"
    assert exc.headers["X-Trace"] == "t1"


def test_error_headers_case_insensitive():
    headers = CIMultiDict({"Retry-After": "5", "X-Trace": "t1"})
    exc = error_from_response(503, headers, b"", NOW)
    assert exc.headers["retry-after"] == "5"
    assert exc.headers["x-trace"] == "t1"


# --- field_errors flattening --------------------------------------------------------------------


def test_field_errors_flat_lists():
    assert flatten_field_errors({"email": ["bad", "taken"]}) == {"email": ("bad", "taken")}


def test_field_errors_nested_dicts_dotted():
    value = {
        "email": ["bad"],
        "default_location": {
            "city": ["required"],
            "coordinates": {"latitude": ["out of range"]},
        },
    }
    assert flatten_field_errors(value) == {
        "email": ("bad",),
        "default_location.city": ("required",),
        "default_location.coordinates.latitude": ("out of range",),
    }


def test_field_errors_string_values():
    assert flatten_field_errors({"email": "bad", "loc": {"city": "required"}}) == {
        "email": ("bad",),
        "loc.city": ("required",),
    }


def test_field_errors_top_level_string_and_list():
    assert flatten_field_errors("broken") == {"non_field_errors": ("broken",)}
    assert flatten_field_errors(["a", "b"]) == {"non_field_errors": ("a", "b")}


def test_field_errors_lists_of_dicts_and_junk():
    value = {"items": [{"name": ["required"]}, 5, None, "also"], "n": [1, 2], "z": None}
    assert flatten_field_errors(value) == {"items": ("also",), "items.name": ("required",)}


@pytest.mark.parametrize("value", [None, 5, 1.5, True, [], {}])
def test_field_errors_empty_or_junk(value):
    assert flatten_field_errors(value) == {}


def test_field_errors_flattened_in_exception():
    body = msgspec.json.encode(
        {
            "title": "Invalid",
            "field_errors": {
                "email": "Enter a valid email address.",
                "default_location": {"postal_code": ["This field is required."]},
            },
        }
    )
    exc = error_from_response(400, CIMultiDict({"Content-Type": PROBLEM}), body, NOW)
    assert exc.field_errors == {
        "email": ("Enter a valid email address.",),
        "default_location.postal_code": ("This field is required.",),
    }
    assert "default_location.postal_code" in str(exc)


@pytest.mark.parametrize("depth", [400, 100_000])
def test_field_errors_deeply_nested_does_not_crash(depth):
    body = ('{"field_errors":' + '{"a":' * depth + '["x"]' + "}" * depth + "}").encode()
    exc = error_from_response(400, CIMultiDict({"Content-Type": PROBLEM}), body, NOW)
    assert isinstance(exc, BadRequest)
    assert exc.field_errors == {}  # deeper than any schema: not followed


# --- bodies -------------------------------------------------------------------------------------


def test_decode_json():
    assert _sansio.decode_json(b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert _sansio.decode_json(b"[]") == []


@pytest.mark.parametrize("body", [b"", b"<html>", b"{", b"\xff", b"NaN"])
def test_decode_json_invalid(body):
    with pytest.raises(InvalidResponse):
        _sansio.decode_json(body)
