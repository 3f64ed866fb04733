"""`AiohttpTransport` itself, over a loopback server: what it sends, what it owns, how it fails."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from servers import serve_app
from yarl import URL

import evenergy_async as ev
from evenergy_async._policy import Request, SendError
from evenergy_async._session import encode_body
from evenergy_async._transport import AiohttpTransport

seen: list[dict[str, object]] = []


async def echo(request: web.Request) -> web.StreamResponse:
    fields: dict[str, str] = {}
    body = b""
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        fields = {k: str(v) for k, v in (await request.post()).items()}
    else:
        body = await request.read()
    seen.append({"headers": dict(request.headers), "body": body, "fields": fields})
    return web.json_response({"ok": True}, headers={"X-RateLimit-Limit": "10"})


async def redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/elsewhere")


@contextlib.asynccontextmanager
async def server() -> AsyncIterator[URL]:
    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/redirect", redirect)
    async with serve_app(app) as origin:
        yield URL(origin)


def request(method: str, url: URL, body: bytes | None = None, **headers: str) -> Request:
    return Request(method, url, {"Authorization": "Bearer t", **headers}, body, 5.0, 2**20)


async def test_sends_headers_and_body_and_reads_the_response():
    seen.clear()
    async with server() as base:
        transport = AiohttpTransport()
        response = await transport.send(
            request("POST", base / "echo", b'{"a": 1}', **{"Content-Type": "application/json"})
        )
        await transport.aclose()
    assert response.status == 200
    assert response.headers["X-RateLimit-Limit"] == "10"
    assert response.body == b'{"ok": true}'
    [got] = seen
    assert got["body"] == b'{"a": 1}'
    assert got["headers"]["Authorization"] == "Bearer t"  # type: ignore[index]


@pytest.mark.parametrize("kind", ["form", "multipart"])
async def test_form_and_multipart_bodies_are_read_by_aiohttp(kind):
    seen.clear()
    pairs = [("email", "a@example.com"), ("default_location.city", 'Lon"don\r\n')]
    body, content_type = encode_body(None, *((pairs, None) if kind == "form" else (None, pairs)))
    assert content_type is not None
    async with server() as base:
        transport = AiohttpTransport()
        await transport.send(request("POST", base / "echo", body, **{"Content-Type": content_type}))
        await transport.aclose()
    assert seen[0]["fields"] == dict(pairs)


async def test_redirects_are_not_followed():
    async with server() as base:
        transport = AiohttpTransport()
        response = await transport.send(request("GET", base / "redirect"))
        await transport.aclose()
    assert response.status == 302


async def test_a_refused_connection_was_not_sent():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = AiohttpTransport()
    with pytest.raises(SendError) as info:
        await transport.send(request("POST", URL(f"http://127.0.0.1:{port}/x")))
    await transport.aclose()
    assert info.value.sent is False
    assert info.value.__context__ is None and info.value.__cause__ is None


async def test_a_timeout_may_have_been_sent():
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(10)

    srv = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    transport = AiohttpTransport()
    try:
        slow = Request("GET", URL(f"http://127.0.0.1:{port}/"), {}, None, 0.1, 1024)
        with pytest.raises(SendError) as info:
            await transport.send(slow)
    finally:
        await transport.aclose()
        srv.close()
    assert info.value.sent and info.value.timed_out


async def test_a_callers_session_is_left_open_and_its_own_is_closed():
    async with server() as base, aiohttp.ClientSession() as http:
        async with ev.Client("t", base_url=str(base / "v2"), session=http) as c:
            assert c._session.http is http
        assert not http.closed
        own = ev.Client("t", base_url=str(base / "v2"))
        await own._session.transport.send(request("GET", base / "echo"))
        made = own._session.http
        await own.close()
        assert made.closed


async def test_a_closed_callers_session_is_client_closed():
    http = aiohttp.ClientSession()
    await http.close()
    async with ev.Client("t", base_url="http://127.0.0.1:9/v2", session=http) as c:
        with pytest.raises(ev.ClientClosed):
            await c.users.get("me")


def test_session_and_transport_together_are_refused():
    with pytest.raises(ev.InvalidRequest):
        ev.Client("t", session=object(), transport=object())  # type: ignore[arg-type]
