"""The client against small servers that misbehave, over loopback (issue 11, rows 2, 5, 7, 8).

Each server is a few lines of aiohttp.web on 127.0.0.1.  Nothing here measures time: the
tests count requests and check which error ends a call.  A server that holds a request open
waits on an event the test sets; `HANG` only bounds how long a regression could hang the
suite, it is not a speed the client must reach.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from servers import serve_app

import evenergy_async as ev

TOKEN = "hostile-test-token"
TID = "tari01HN2NJ9NMRZBXT1H6FT9N7735"
HANG = 10.0  # seconds: ends a test that would hang on a regression

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def uid(i: int) -> str:
    return f"user{i:026d}"


def user_json(base: str, user_id: str, tariff: str | None = None) -> dict[str, Any]:
    return {
        "id": user_id,
        "url": f"{base}/users/{user_id}",
        "email": f"{user_id}@example.com",
        "default_location": {"tariff": tariff or f"{base}/tariffs/{TID}"},
        "vehicles": [],
        "evses": [],
    }


def site_json(base: str, i: int) -> dict[str, Any]:
    site_id = f"site{i:026d}"
    return {
        "id": site_id,
        "url": f"{base}/evse_sites/{site_id}",
        "evses": [],
        "cpms_connection": None,
    }


def page(items: list[Any], next_url: str | None = None) -> web.Response:
    headers = {"Content-Type": "application/json"}
    if next_url is not None:
        headers["Link"] = f'<about:blank>; rel="previous", <{next_url}>; rel="next"'
    return web.Response(body=msgspec.json.encode(items), headers=headers)


class Server:
    """One handler on 127.0.0.1 for every path; `requests` logs what reached it."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[str] = []  # path and query of each request
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        return await self.handler(request)


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    async with serve_app(app) as origin:
        server.base = f"{origin}/v2"
        yield server


def client_for(server: Server, **kwargs: Any) -> ev.Client:
    return ev.Client(token=TOKEN, base_url=server.base, max_retries=0, **kwargs)


async def drain(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


# --- row 5: Link cycles and cursors that do not move ---------------------------------------------

CAP = 12  # a server answers this many list requests, then ends the list: old code stops too


def cycle_server(links: Callable[[str, web.Request], str | None], empty: bool = False) -> Handler:
    """Pages of two users (none if `empty`) whose next link `links` decides; after CAP
    requests the list ends, so a client that does not notice the cycle ends without an error."""
    count = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        base = str(request.url.origin()) + "/v2"
        after = request.query.get("page_after")
        start = int(after[4:]) + 1 if after else 1
        items = [] if empty else [user_json(base, uid(start)), user_json(base, uid(start + 1))]
        return page(items, links(base, request) if count < CAP else None)

    return handle


def back_to_the_first_page(base: str, request: web.Request) -> str:
    # A -> B -> A
    if "page_after" in request.query:
        return f"{base}/users?page_size=2"
    return f"{base}/users?page_size=2&page_after={uid(2)}"


def a_cursor_that_does_not_advance(base: str, request: web.Request) -> str:
    # the URL changes (the page size), the cursor does not
    size = int(request.query["page_size"])
    return f"{base}/users?page_size={size - 1 or 2}&page_after={uid(2)}"


@pytest.mark.parametrize("links", [back_to_the_first_page, a_cursor_that_does_not_advance])
async def test_a_link_to_a_page_already_read_ends_the_stream(links):
    async with serve(cycle_server(links)) as server, client_for(server) as client:
        seen: list[str] = []
        with pytest.raises(ev.InvalidResponse, match="already read") as info:
            async for user in client.users.list(page_size=2):
                seen.append(user.id)
        # a page whose link is refused is not handed over: resuming asks for it again
        assert seen == [uid(1), uid(2)]
        assert info.value.resume_cursor == uid(2)
        assert len(server.requests) == 2


async def test_a_page_linking_to_itself_ends_the_stream():
    async with (
        serve(cycle_server(lambda base, request: str(request.url))) as server,
        client_for(server) as client,
    ):
        pages = []
        with pytest.raises(ev.InvalidResponse) as info:
            async for p in client.users.pages(page_size=2):
                pages.append(p)
        assert pages == []  # the link is refused before the page is handed over
        assert info.value.resume_cursor is None
        assert len(server.requests) == 1


async def test_an_empty_page_linking_to_itself_ends_the_stream():
    async with (
        serve(cycle_server(lambda base, request: str(request.url), empty=True)) as server,
        client_for(server) as client,
    ):
        with pytest.raises(ev.InvalidResponse):
            await drain(client.users.list(page_size=2, page_after=uid(7)))
        assert len(server.requests) == 1


async def test_a_long_cycle_back_to_the_first_page_ends_the_stream():
    # 200 pages, the last linking back to the first: too long to remember every page cheaply
    pages = 200

    async def handle(request: web.Request) -> web.StreamResponse:
        base = str(request.url.origin()) + "/v2"
        after = request.query.get("page_after")
        n = int(after[4:]) if after else 0  # the page after uid(n) is page n + 1
        following = n + 1 if n + 1 < pages else None
        link = f"{base}/users?page_size=1&page_after={uid(following)}" if following else None
        return page([user_json(base, uid(n + 1))], link or f"{base}/users?page_size=1")

    async with serve(handle) as server, client_for(server) as client:
        seen: list[str] = []
        with pytest.raises(ev.InvalidResponse, match="already read"):
            async for user in client.users.list(page_size=1):
                seen.append(user.id)
        assert seen[:pages] == [uid(i) for i in range(1, pages + 1)]
        # Brent's bound for a cycle of 200 from the first page: within 2 * 201 + 201 pages
        assert pages < len(server.requests) <= 3 * (pages + 1)


async def test_empty_pages_that_keep_linking_on_end_the_stream():
    # every cursor is new, but no page has an item: a list() consumer would never get control
    count = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        base = str(request.url.origin()) + "/v2"
        following = f"{base}/users?page_size=5&page_after={uid(count)}"
        return page([], following if count < 100 else None)

    async with serve(handle) as server, client_for(server) as client:
        with pytest.raises(ev.InvalidResponse, match="empty pages") as info:
            await drain(client.users.list(page_size=5))
        assert info.value.resume_cursor is None
        # it gives up after 16 empty pages in a row (and one fetched ahead), not at the end
        assert 16 < len(server.requests) <= 18


async def test_a_page_number_that_does_not_advance_ends_the_stream():
    count = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        base = str(request.url.origin()) + "/v2"
        tariff = {
            "id": TID,
            "url": f"{base}/tariffs/{TID}",
            "supplier": f"{base}/suppliers/supl01HN2NJ9NMRZBXT1H6FT9N7735",
            "name": "T",
            "currency": "GBP",
        }
        # page 2 links to page 2 again, with the filters in another order
        following = f"{base}/tariffs?valid=true&page=2&page_size={count}"
        return page([tariff], following if count < CAP else None)

    async with serve(handle) as server, client_for(server) as client:
        with pytest.raises(ev.InvalidResponse):
            await drain(client.tariffs.list(page_size=5, valid=True))
        assert len(server.requests) == 2


# --- row 2 (second half): a page far over its page size ------------------------------------------


async def test_a_page_over_its_page_size_is_refused():
    async def handle(request: web.Request) -> web.StreamResponse:
        base = str(request.url.origin()) + "/v2"
        return page([user_json(base, uid(i)) for i in range(1, 51)])

    async with serve(handle) as server, client_for(server) as client:
        assert len(await drain(client.users.list(page_size=50))) == 50  # a full page is fine
        with pytest.raises(ev.InvalidResponse, match="50 items"):
            await drain(client.users.list(page_size=2))
        with pytest.raises(ev.InvalidResponse, match="50 items"):
            await drain(client.users.pages(page_size=2))


async def test_a_page_over_the_api_maximum_is_refused_without_a_page_size():
    async def handle(request: web.Request) -> web.StreamResponse:
        base = str(request.url.origin()) + "/v2"
        return page([site_json(base, i) for i in range(101)])

    async with serve(handle) as server, client_for(server) as client:
        with pytest.raises(ev.InvalidResponse, match="101 items"):
            await drain(client.evse_sites.list())


# --- row 8: malformed URLs from the server and from the caller -----------------------------------

BAD_LINKS = {
    "userinfo": "http://user:secret@{host}/v2/users?page_after={cursor}",
    "bad port": "http://127.0.0.1:99999/v2/users?page_after={cursor}",
    "port not a number": "http://127.0.0.1:port/v2/users?page_after={cursor}",
    "broken IPv6": "http://[::1/v2/users?page_after={cursor}",
    "ftp scheme": "ftp://{host}/v2/users?page_after={cursor}",
    "javascript": "javascript:alert(1)",
}


@pytest.mark.parametrize("kind", sorted(BAD_LINKS))
async def test_a_malformed_link_is_an_invalid_response(kind):
    async def handle(request: web.Request) -> web.StreamResponse:
        base = str(request.url.origin()) + "/v2"
        target = BAD_LINKS[kind].format(host=request.host, cursor=uid(1))
        return page([user_json(base, uid(1))], target)

    async with serve(handle) as server, client_for(server) as client:
        seen: list[str] = []
        with pytest.raises(ev.InvalidResponse, match="refusing") as info:
            async for user in client.users.list(page_size=1):
                seen.append(user.id)
        assert seen == []  # refused before the page is handed over
        assert info.value.resume_cursor is None
        assert server.requests == ["/v2/users?page_size=1"]
        assert "secret" not in server.requests[0]


BAD_REFS = [
    "http://user:secret@{host}/v2/tariffs/" + TID,
    "http://127.0.0.1:99999/v2/tariffs/" + TID,
    "http://[::1/v2/tariffs/" + TID,
    "ftp://{host}/v2/tariffs/" + TID,
]


@pytest.mark.parametrize("template", BAD_REFS)
async def test_a_malformed_ref_from_the_server_is_an_invalid_response(template):
    async def handle(request: web.Request) -> web.StreamResponse:
        base = str(request.url.origin()) + "/v2"
        data = user_json(base, uid(1), tariff=template.format(host=request.host))
        return web.json_response(data)

    async with serve(handle) as server, client_for(server) as client:
        user = await client.users.get(uid(1))
        ref = user.default_location.tariff
        with pytest.raises(ev.InvalidResponse, match="refusing"):
            await ref.resolve()
        with pytest.raises(ev.InvalidResponse, match="refusing"):
            await client.resolve(ref)
        assert len(server.requests) == 1  # the user only


@pytest.mark.parametrize("template", [*BAD_REFS, "/v2/tariffs/" + TID])
async def test_a_malformed_url_from_the_caller_is_an_invalid_request(template):
    async with serve(cycle_server(lambda base, request: None)) as server:
        async with client_for(server) as client:
            url = template.format(host=server.base.split("/")[2])
            with pytest.raises(ev.InvalidRequest, match="refusing") as info:
                await client.resolve(url)
            assert info.value.field == "ref"
        assert server.requests == []


# --- row 7: closing is final ---------------------------------------------------------------------


@pytest.fixture
def sessions_made(monkeypatch: pytest.MonkeyPatch) -> list[aiohttp.ClientSession]:
    """Every aiohttp.ClientSession made while the test runs."""
    made: list[aiohttp.ClientSession] = []
    original = aiohttp.ClientSession.__init__

    def init(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "__init__", init)
    return made


def users_server() -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        base = str(request.url.origin()) + "/v2"
        if request.path.startswith("/v2/tariffs/"):
            return web.json_response(
                {
                    "id": TID,
                    "url": f"{base}/tariffs/{TID}",
                    "supplier": f"{base}/suppliers/supl01HN2NJ9NMRZBXT1H6FT9N7735",
                    "name": "T",
                    "currency": "GBP",
                }
            )
        if request.path == "/v2/users":
            return page([user_json(base, uid(1))])
        return web.json_response(user_json(base, uid(1)))

    return handle


AFTER_CLOSE: dict[str, Callable[[SimpleNamespace], Awaitable[Any]]] = {
    "get": lambda s: s.client.users.get(uid(1)),
    "list": lambda s: drain(s.client.users.list()),
    "list resolving": lambda s: drain(s.client.users.list(resolve=("default_location.tariff",))),
    "pages": lambda s: drain(s.client.users.pages()),
    "create": lambda s: s.client.users.create(email="a@example.com"),
    "update": lambda s: s.client.users.update(uid(1), email="a@example.com"),
    "tariffs.list": lambda s: drain(s.client.tariffs.list()),
    "suppliers.get": lambda s: s.client.suppliers.get("supl01HN2NJ9NMRZBXT1H6FT9N7735"),
    "evse_sites.list": lambda s: drain(s.client.evse_sites.list()),
    "client.resolve url": lambda s: s.client.resolve(s.user.default_location.tariff.url),
    "client.resolve ref": lambda s: s.client.resolve(s.user.default_location.tariff),
    "ref.resolve": lambda s: s.user.default_location.tariff.resolve(),
    "view get": lambda s: s.view.users.get("me"),
    "view list": lambda s: drain(s.view.users.list()),
    "view ref.resolve": lambda s: s.view_user.default_location.tariff.resolve(),
    "as_user after close": lambda s: s.client.as_user(uid(2)).users.get("me"),
}


@pytest.mark.parametrize("name", sorted(AFTER_CLOSE))
async def test_every_call_after_close_raises_client_closed(name, sessions_made):
    async with serve(users_server()) as server:
        async with client_for(server) as client:
            user = await client.users.get(uid(1))  # the first call opens the one session
            view = client.as_user(uid(1))
            view_user = await view.users.get("me")
        before = len(server.requests)
        state = SimpleNamespace(client=client, user=user, view=view, view_user=view_user)
        with pytest.raises(ev.ClientClosed):
            await AFTER_CLOSE[name](state)
        assert len(server.requests) == before  # nothing sent
        assert len(sessions_made) == 1  # and no session opened again
        assert sessions_made[0].closed


async def test_close_is_final_and_can_be_repeated(sessions_made):
    async with serve(users_server()) as server:
        client = client_for(server)
        await client.as_user(uid(1)).close()  # a view's close leaves its client open
        await client.users.get(uid(1))
        await client.close()
        await client.close()
        with pytest.raises(ev.ClientClosed):
            await client.users.get(uid(1))
        assert len(server.requests) == 1
        assert len(sessions_made) == 1


def holding_server(hold: str) -> tuple[Handler, asyncio.Event, asyncio.Event]:
    """Serves two pages of users; requests whose path and query contain `hold` are held open
    until `release` is set, and set `arrived` when they come in."""
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        base = str(request.url.origin()) + "/v2"
        if hold in request.path_qs:
            arrived.set()
            await release.wait()
        if request.path != "/v2/users":
            return await users_server()(request)
        if "page_after" in request.query:
            return page([user_json(base, uid(3))])
        return page(
            [user_json(base, uid(1)), user_json(base, uid(2))],
            f"{base}/users?page_size=2&page_after={uid(2)}",
        )

    return handle, arrived, release


async def test_close_cancels_a_prefetched_page(sessions_made):
    handle, arrived, release = holding_server("page_after")
    async with serve(handle) as server:
        client = client_for(server)
        stream = client.users.list(page_size=2)
        try:
            assert (await stream.__anext__()).id == uid(1)  # page 2 is being fetched ahead
            await asyncio.wait_for(arrived.wait(), HANG)
            await asyncio.wait_for(client.close(), HANG)
            with pytest.raises(ev.ClientClosed):
                # the rest of page 1 was handed over already; then the prefetch's end
                async for _ in stream:
                    pass
        finally:
            release.set()
            await stream.aclose()
            await client.close()
        assert server.requests == [
            "/v2/users?page_size=2",
            f"/v2/users?page_size=2&page_after={uid(2)}",
        ]
        assert len(sessions_made) == 1


async def test_close_cancels_a_shared_resolve_in_flight(sessions_made):
    handle, arrived, release = holding_server("/tariffs/")
    async with serve(handle) as server:
        client = client_for(server)
        try:
            user = await client.users.get(uid(1))
            view_user = await client.as_user(uid(1)).users.get(uid(1))
            waiters = [
                asyncio.ensure_future(user.default_location.tariff.resolve()),
                asyncio.ensure_future(client.resolve(user.default_location.tariff.url)),
                asyncio.ensure_future(view_user.default_location.tariff.resolve()),
            ]
            await asyncio.wait_for(arrived.wait(), HANG)
            await asyncio.wait_for(client.close(), HANG)
            _, pending = await asyncio.wait(waiters, timeout=HANG)
            assert not pending
            assert [type(w.exception()) for w in waiters] == [ev.ClientClosed] * 3
            assert not client._shared.resolving
        finally:
            release.set()
            await client.close()
        tariff_requests = [r for r in server.requests if "/tariffs/" in r]
        assert 1 <= len(tariff_requests) <= 2  # one per acting user, never re-sent after close
        assert len(sessions_made) == 1


async def test_close_cancels_relations_being_resolved_for_a_stream(sessions_made):
    handle, arrived, release = holding_server("/tariffs/")
    async with serve(handle) as server:
        client = client_for(server)
        stream = client.users.list(page_size=2, resolve=("default_location.tariff",))
        try:
            first = asyncio.ensure_future(stream.__anext__())
            await asyncio.wait_for(arrived.wait(), HANG)
            await asyncio.wait_for(client.close(), HANG)
            with pytest.raises(ev.ClientClosed):
                await asyncio.wait_for(first, HANG)
        finally:
            release.set()
            await stream.aclose()
            await client.close()
        assert len(sessions_made) == 1


async def test_close_ends_a_call_in_flight_without_a_new_session(sessions_made):
    handle, arrived, release = holding_server(f"/users/{uid(1)}")
    async with serve(handle) as server:
        # retries allowed: a call cut by the close must not be sent again on a new session
        client = ev.Client(token=TOKEN, base_url=server.base, max_retries=3)
        try:
            call = asyncio.ensure_future(client.users.get(uid(1)))
            await asyncio.wait_for(arrived.wait(), HANG)
            await asyncio.wait_for(client.close(), HANG)
            with pytest.raises(ev.ClientClosed):
                await asyncio.wait_for(call, HANG)
        finally:
            release.set()
            await client.close()
        assert server.requests == [f"/v2/users/{uid(1)}"]
        assert len(sessions_made) == 1


def first_items(base: str) -> dict[str, dict[str, Any]]:
    supplier = "supl01HN2NJ9NMRZBXT1H6FT9N7735"
    return {
        "users": user_json(base, uid(1)),
        "tariffs": {
            "id": TID,
            "url": f"{base}/tariffs/{TID}",
            "supplier": f"{base}/suppliers/{supplier}",
            "name": "T",
            "currency": "GBP",
        },
        "suppliers": {
            "id": supplier,
            "url": f"{base}/suppliers/{supplier}",
            "name": "S",
            "icon": None,
        },
        "evse_sites": site_json(base, 1),
    }


STREAMS: dict[str, Callable[[ev.Client], AsyncIterator[Any]]] = {
    "users.list": lambda c: c.users.list(page_size=1),
    "users.pages": lambda c: c.users.pages(page_size=1),
    "tariffs.list": lambda c: c.tariffs.list(page_size=1),
    "tariffs.pages": lambda c: c.tariffs.pages(page_size=1),
    "suppliers.list": lambda c: c.suppliers.list(page_size=1),
    "evse_sites.list": lambda c: c.evse_sites.list(),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
async def test_leaving_a_stream_early_cancels_its_page_fetched_ahead(name):
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        base = str(request.url.origin()) + "/v2"
        collection = request.path.split("/")[2]
        if request.path.count("/") > 2:  # a single resource (a relation being resolved)
            return web.json_response(first_items(base)[collection])
        if "page" in request.query or "page_after" in request.query:
            arrived.set()
            await release.wait()
        following = f"{base}/{collection}?page=2&page_after={uid(1)}"
        return page([first_items(base)[collection]], following)

    async with serve(handle) as server, client_for(server) as client:
        stream = STREAMS[name](client)
        try:
            await stream.__anext__()
            await asyncio.wait_for(arrived.wait(), HANG)
            await stream.aclose()
            assert not client._shared._tasks  # nothing of the stream still running
        finally:
            release.set()
