"""The URL rules as pure functions: which URLs the client follows, and how a stream notices
that the server's links go round in a circle.  No event loop, no network."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

import evenergy_async as ev
from evenergy_async._urls import same_origin
from evenergy_async.resources._base import _Trail

ORIGIN = URL("https://api.example.test")
PAGE = URL("https://api.example.test/v2/users?page_size=2")


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("https://api.example.test/v2/users?page_after=x", "https://api.example.test/v2/users?page_after=x"),
        ("/v2/users?page_after=x", "https://api.example.test/v2/users?page_after=x"),
        ("?page=2", "https://api.example.test/v2/users?page=2"),
        ("https://API.example.test:443/v2/users#top", "https://api.example.test/v2/users"),
    ],
)  # fmt: skip
def test_urls_on_the_origin_are_followed(reference, expected):
    assert str(same_origin(reference, ORIGIN, base=PAGE)) == expected


REFUSED = [
    "https://user:secret@api.example.test/v2/users",
    "https://user@api.example.test/v2/users",
    "https://api.example.test:99999/v2/users",
    "https://api.example.test:port/v2/users",
    "https://[::1/v2/users",
    "http://api.example.test/v2/users",
    "ftp://api.example.test/v2/users",
    "javascript:alert(1)",
    "//evil.example/v2/users",
    "https://evil.example/v2/users",
]


@pytest.mark.parametrize("reference", REFUSED)
def test_a_refused_url_from_the_server_is_an_invalid_response(reference):
    with pytest.raises(ev.InvalidResponse, match="refusing"):
        same_origin(reference, ORIGIN, base=PAGE)


@pytest.mark.parametrize("reference", REFUSED)
def test_a_refused_url_from_the_caller_is_an_invalid_request(reference):
    with pytest.raises(ev.InvalidRequest, match="refusing") as info:
        same_origin(reference, ORIGIN, field="ref")
    assert info.value.field == "ref"


@given(st.text(max_size=80))
def test_any_text_is_followed_or_refused_by_a_library_error(reference):
    try:
        url = same_origin(reference, ORIGIN, base=PAGE)
    except ev.InvalidResponse:
        return
    assert url.origin() == ORIGIN and url.user is None


def test_a_trail_refuses_a_url_asked_for_twice_whatever_the_query_order():
    trail = _Trail()
    trail.follow(URL("https://a.test/v2/users?page_size=2&email=a%40b.c"))
    trail.follow(URL("https://a.test/v2/users?page_size=2&page_after=user1"))
    with pytest.raises(ev.InvalidResponse, match="already read"):
        trail.follow(URL("https://a.test/v2/users?email=a%40b.c&page_size=2"))


@pytest.mark.parametrize("key", ["page_after", "page"])
def test_a_trail_refuses_a_position_asked_for_twice(key):
    trail = _Trail()
    trail.follow(URL(f"https://a.test/v2/x?{key}=2&page_size=5"))
    with pytest.raises(ev.InvalidResponse):
        trail.follow(URL(f"https://a.test/v2/x?{key}=2&page_size=4"))
    trail.follow(URL(f"https://a.test/v2/x?{key}=3&page_size=4"))  # a new position is fine


def cursor_page(i: int) -> URL:
    return URL(f"https://a.test/v2/users?page_size=2&page_after=user{i}")


@pytest.mark.parametrize("length", [1, 2, 63, 64, 65, 200, 1000])
@pytest.mark.parametrize("lead", [0, 5, 300])
def test_a_trail_ends_a_cycle_of_any_length_within_a_bounded_number_of_pages(length, lead):
    # the first page, `lead` more distinct pages, then `length` pages over and over
    pages = [URL("https://a.test/v2/users?page_size=2")]
    pages += [cursor_page(i) for i in range(lead)]
    cycle = [cursor_page(10_000 + i) for i in range(length)]
    distinct = len(pages) + length
    trail = _Trail()
    followed = 0
    with pytest.raises(ev.InvalidResponse, match="already read"):
        for url in itertools.chain(pages, itertools.cycle(cycle)):
            trail.follow(url)
            followed += 1
            assert followed <= 2 * distinct + length  # Brent's bound
    assert followed >= distinct  # no page refused before it came round again
    if length <= _Trail.RECENT:  # a short cycle ends at its first repeat
        assert followed == distinct


def test_a_trail_holds_a_bounded_number_of_keys_however_many_pages_it_follows():
    trail = _Trail()
    trail.follow(URL("https://a.test/v2/users?page_size=100"))
    for i in range(10_000):
        trail.follow(cursor_page(i))
        assert len(trail) <= _Trail.RECENT + 1
    assert len(trail) == _Trail.RECENT + 1
