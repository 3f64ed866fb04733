"""Input to the collections and to the client is checked before anything is sent: every
refusal is an `InvalidRequest` naming the argument, never a bare ValueError or TypeError."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_hostile_client import TOKEN, client_for, cycle_server, drain, serve, uid

import evenergy_async as ev


@pytest.mark.parametrize(
    "base_url",
    [
        "http://user:secret@127.0.0.1:8080/v2",
        "http://127.0.0.1:99999/v2",
        "http://[::1/v2",
        "ftp://127.0.0.1/v2",
    ],
)
def test_a_malformed_base_url_is_an_invalid_request(base_url):
    with pytest.raises(ev.InvalidRequest) as info:
        ev.Client(token=TOKEN, base_url=base_url)
    assert info.value.field == "base_url"


BAD_CALLS: dict[str, Callable[[ev.Client], Awaitable[Any]]] = {
    "users.get id": lambda c: c.users.get("nope"),
    "users.get id type": lambda c: c.users.get(42),  # type: ignore[arg-type]
    "users.get expand": lambda c: c.users.get(uid(1), expand=("vehicles",)),
    "users.list page_size 0": lambda c: drain(c.users.list(page_size=0)),
    "users.list page_size 101": lambda c: drain(c.users.list(page_size=101)),
    "users.list page_size bool": lambda c: drain(c.users.list(page_size=True)),
    "users.list page_size str": lambda c: drain(c.users.list(page_size="5")),  # type: ignore[arg-type]
    "users.list page_after": lambda c: drain(c.users.list(page_after="../../etc")),
    "users.list email": lambda c: drain(c.users.list(email="not-an-email")),
    "users.pages page_before": lambda c: drain(c.users.pages(page_before="x")),
    "users.update id": lambda c: c.users.update("user/../x", email="a@example.com"),
    "users.create email": lambda c: c.users.create(email="a@b"),
    "users.create encoding": lambda c: c.users.create(email="a@example.com", encoding="xml"),  # type: ignore[arg-type]
    "tariffs.get id": lambda c: c.tariffs.get(uid(1)),
    "tariffs.pages page": lambda c: drain(c.tariffs.pages(page=0)),
    "tariffs.list supplier": lambda c: drain(c.tariffs.list(supplier="x")),
    "suppliers.get id": lambda c: c.suppliers.get(""),
    "suppliers.list page_size": lambda c: drain(c.suppliers.list(page_size=-1)),
    "evse_sites.get id": lambda c: c.evse_sites.get("site"),
    "as_user id": lambda c: c.as_user("me").users.get("me"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
async def test_bad_input_to_a_collection_is_an_invalid_request_unsent(name):
    async with serve(cycle_server(lambda base, request: None)) as server:
        async with client_for(server) as client:
            with pytest.raises(ev.InvalidRequest):
                await BAD_CALLS[name](client)
        assert server.requests == []
