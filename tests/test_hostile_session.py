"""The session against small misbehaving servers on 127.0.0.1 (issue "Bounded under failure").

Each test reproduces one way a server or network can hurt a caller and checks the call ends
with a public error.  Assertions are on counts and order; where a time bound is the point,
it is generous (it holds at a 4x slowdown), and memory is measured in a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import payloads
import pytest
from aiohttp import web
from leaks import assert_no_secret
from servers import serve_app

import evenergy_async as ev

TOKEN = "tok-SECRET-abc123"
UID = "user01HN2NJ9NMRZBXT1H6FT9N7735"


def user_json(base: str, email: str = "a@example.com") -> dict[str, object]:
    return payloads.user_json(f"{base}/users", email)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(routes: dict[tuple[str, str], Handler]) -> AsyncIterator[str]:
    """An aiohttp server answering `routes` ((method, path) -> handler); yields its base URL."""
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    async with serve_app(app) as origin:
        yield f"{origin}/v2"


@contextlib.asynccontextmanager
async def serve_raw(answer: bytes) -> AsyncIterator[str]:
    """A server that reads a request's head and writes `answer` as is, then hangs up."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v2"
    finally:
        for writer in writers:
            writer.close()
        server.close()


def fast(client: ev.Client) -> ev.Client:
    client._session.tune(backoff_base=0.001, backoff_cap=0.01)
    return client


# --- row 2: a response-size cap -----------------------------------------------------------------

_MEMORY_SCRIPT = r"""
import asyncio, gzip, json, resource, sys, zlib
from aiohttp import web
import evenergy_async as ev

BIG = 200 * 2**20
CHUNK = b"x" * 2**16

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def gzip_bomb():
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zero = bytes(2**20)
    return b"".join([*(z.compress(zero) for _ in range(BIG // 2**20)), z.flush()])

async def main():
    bomb = gzip_bomb()

    async def big(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = BIG
        await resp.prepare(request)
        for _ in range(BIG // len(CHUNK)):
            await resp.write(CHUNK)
        return resp

    async def endless(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        while True:
            await resp.write(CHUNK)

    async def bombed(request):
        return web.Response(body=bomb, headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/v2/users/big", big)
    app.router.add_get("/v2/users/endless", endless)
    app.router.add_get("/v2/users/bomb", bombed)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}/v2"
    outcomes = {}
    baseline = rss_mb()
    async with ev.Client("t", base_url=base, max_response_bytes=2**20, max_retries=0) as c:
        for name in ("big", "endless", "bomb"):
            try:
                await asyncio.wait_for(c.resolve(f"{base}/users/{name}"), 60)
                outcomes[name] = "no error"
            except Exception as exc:
                outcomes[name] = type(exc).__name__
    peak = rss_mb()
    await runner.cleanup()
    print(json.dumps({"outcomes": outcomes, "baseline_mb": baseline, "peak_mb": peak}))

asyncio.run(main())
"""


def test_huge_endless_and_compressed_bodies_are_refused_in_bounded_memory(tmp_path: Path):
    script = tmp_path / "memory.py"
    script.write_text(_MEMORY_SCRIPT)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcomes"] == dict.fromkeys(("big", "endless", "bomb"), "InvalidResponse")
    # 200 MB offered three ways; a 1 MB cap keeps the client's growth far below that.
    assert result["peak_mb"] - result["baseline_mb"] < 64, result


async def test_declared_length_over_the_cap_is_refused_unread():
    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"[" + b" " * 4096 + b"]", content_type="application/json")

    async with serve({("GET", "/v2/users/" + UID): big}) as base:
        async with ev.Client(TOKEN, base_url=base, max_response_bytes=1024) as c:
            with pytest.raises(ev.InvalidResponse, match="max_response_bytes"):
                await c.users.get(UID)
            assert c.stats.requests == 1  # not retried


# --- row 6: one token fetch for every waiting task ----------------------------------------------


async def test_a_failing_token_endpoint_is_asked_once_for_all_waiting_tasks():
    hits = 0

    async def token(request: web.Request) -> web.StreamResponse:
        nonlocal hits
        hits += 1
        await asyncio.sleep(0.2)  # every task is waiting by now
        return web.Response(status=503)

    async with serve({("POST", "/o/token/"): token}) as base:
        creds = ev.ClientCredentials("id", "secret")
        async with ev.Client(credentials=creds, base_url=base, max_retries=0) as c:
            results = await asyncio.gather(
                *(c.users.get(UID) for _ in range(10)), return_exceptions=True
            )
    assert [type(r) for r in results] == [ev.ServerError] * 10
    assert hits == 1


# --- row 7: closing is final --------------------------------------------------------------------


async def test_after_close_calls_raise_client_closed_and_nothing_is_sent():
    seen = 0

    async def get(request: web.Request) -> web.StreamResponse:
        nonlocal seen
        seen += 1
        return web.json_response(user_json(base))

    async with serve({("GET", f"/v2/users/{UID}"): get}) as base:
        client = ev.Client(TOKEN, base_url=base)
        async with client:
            await client.users.get(UID)
        with pytest.raises(ev.ClientClosed):
            await client.users.get(UID)
        with pytest.raises(ev.ClientClosed):
            await client.as_user(UID).users.get(UID)
    assert seen == 1
    assert client._session.transport._session.closed  # type: ignore[attr-defined]


async def test_close_ends_a_call_waiting_on_a_silent_server():
    arrived = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    async with serve({("GET", f"/v2/users/{UID}"): silent}) as base:
        client = ev.Client(TOKEN, base_url=base, timeout=3600)
        call = asyncio.ensure_future(client.users.get(UID))
        await asyncio.wait_for(arrived.wait(), 10)
        await client.close()
        with pytest.raises(ev.ClientClosed):
            await asyncio.wait_for(call, 10)


# --- row 8: only public errors ------------------------------------------------------------------


def test_token_with_crlf_is_invalid_request():
    with pytest.raises(ev.InvalidRequest):
        ev.Client("abc\r\nX-Injected: 1", base_url="http://127.0.0.1:1/v2")


async def test_token_endpoint_garbage_is_invalid_response():
    async def token(request: web.Request) -> web.StreamResponse:
        return web.json_response({"access_token": "T1\r\nX-Injected: 1", "expires_in": 60})

    async with serve({("POST", "/o/token/"): token}) as base:
        creds = ev.ClientCredentials("id", "secret")
        async with ev.Client(credentials=creds, base_url=base) as c:
            with pytest.raises(ev.InvalidResponse):
                await c.users.get(UID)


async def test_a_dropped_get_raises_a_public_transport_error():
    async with serve_raw(b"") as base:  # reads the request, hangs up without a word
        async with fast(ev.Client(TOKEN, base_url=base, max_retries=1)) as c:
            with pytest.raises(ev.TransportError) as info:
                await c.users.get(UID)
    assert type(info.value) is ev.TransportError
    assert c.stats.requests == 2


# --- row 9: writes back off; a lost write whose look-up fails is OutcomeUnknown -----------------


async def test_create_after_503_honours_retry_after():
    posts: list[str] = []
    pauses: list[float] = []

    async def post(request: web.Request) -> web.StreamResponse:
        posts.append("POST")
        return web.Response(status=503, headers={"Retry-After": "0.3"})

    async def lookup(request: web.Request) -> web.StreamResponse:
        return web.json_response([])

    routes = {("POST", "/v2/users"): post, ("GET", "/v2/users"): lookup}
    async with serve(routes) as base:
        async with ev.Client(TOKEN, base_url=base, max_retries=2) as c:

            async def pause(seconds: float) -> None:  # the session's sleep, recorded, not slept
                pauses.append(seconds)
                posts.append("pause")
                await asyncio.sleep(0)

            c._session.sleep = pause
            with pytest.raises(ev.ServerError):
                await c.users.create(email="a@example.com")
    # Each resend waited the server's Retry-After first (it was sent at once before).
    assert posts == ["POST", "pause", "POST", "pause", "POST"]
    assert pauses == [0.3, 0.3]


async def test_create_cut_after_commit_with_failing_look_up_is_outcome_unknown():
    created = 0

    async def post(request: web.Request) -> web.StreamResponse:
        nonlocal created
        await request.read()
        created += 1  # committed; the answer is lost
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=201)

    async def lookup(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503)

    routes = {("POST", "/v2/users"): post, ("GET", "/v2/users"): lookup}
    async with serve(routes) as base:
        async with fast(ev.Client(TOKEN, base_url=base, max_retries=1)) as c:
            with pytest.raises(ev.OutcomeUnknown):
                await c.users.create(email="a@example.com")
    assert created == 1  # never sent twice without knowing


# --- row 10: the token endpoint's failures are retried ------------------------------------------


async def test_token_endpoint_503_then_token_is_retried():
    answers = [web.Response(status=503, headers={"Retry-After": "0"})]

    async def token(request: web.Request) -> web.StreamResponse:
        if answers:
            return answers.pop()
        return web.json_response({"access_token": "T1", "expires_in": 3600})

    async def get(request: web.Request) -> web.StreamResponse:
        assert request.headers["Authorization"] == "Bearer T1"
        return web.json_response(user_json(base))

    routes = {("POST", "/o/token/"): token, ("GET", f"/v2/users/{UID}"): get}
    async with serve(routes) as base:
        creds = ev.ClientCredentials("id", "secret")
        async with fast(ev.Client(credentials=creds, base_url=base)) as c:
            assert (await c.users.get(UID)).id == UID


# --- row 11: a dead limiter fails once ----------------------------------------------------------


async def test_a_dead_limiter_is_not_retried():
    pytest.importorskip("redis")
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    limiter = ev.RedisRateLimiter(f"redis://127.0.0.1:{port}/0", key="k", connect_timeout=0.5)
    acquires = 0
    acquire = limiter.acquire

    async def counted(max_wait: float | None = None) -> int:
        nonlocal acquires
        acquires += 1
        return await acquire(max_wait)

    limiter.acquire = counted  # type: ignore[method-assign]
    async with ev.Client(TOKEN, base_url=f"http://127.0.0.1:{port}/v2", limiter=limiter) as c:
        with pytest.raises(ev.RateLimiterUnavailable):
            await c.users.get(UID)
    assert acquires == 1


# --- row 12: no secret in an exception, its chain, repr or traceback ----------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GARBAGE STATUS LINE\r\n\r\n",
        b"HTTP/1.1 abc Broken\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["header too long", "garbage status line", "bad status code"],
)
async def test_transport_errors_carry_no_token(answer):
    async with serve_raw(answer) as base:
        async with fast(ev.Client(TOKEN, base_url=base, max_retries=1)) as c:
            with pytest.raises(ev.EvEnergyError) as info:
                await c.users.get(UID)
    assert isinstance(info.value, ev.TransportError)
    assert_no_secret(info.value, TOKEN)


async def test_token_endpoint_failure_carries_no_client_secret():
    async with serve_raw(b"GARBAGE STATUS LINE\r\n\r\n") as base:
        creds = ev.ClientCredentials("my-client", "TOP-SECRET-42")
        async with fast(ev.Client(credentials=creds, base_url=base, max_retries=1)) as c:
            with pytest.raises(ev.TransportError) as info:
                await c.users.get(UID)
    basic = base64.b64encode(b"my-client:TOP-SECRET-42").decode()
    assert_no_secret(info.value, "TOP-SECRET-42", basic)


# --- row 13: a deadline bounds the whole call ---------------------------------------------------


async def test_deadline_bounds_retries_of_a_silent_server():
    arrivals = 0

    async def silent(request: web.Request) -> web.StreamResponse:
        nonlocal arrivals
        arrivals += 1
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    async with serve({("GET", f"/v2/users/{UID}"): silent}) as base:
        async with ev.Client(TOKEN, base_url=base, timeout=5, max_retries=2, deadline=0.25) as c:
            with pytest.raises(ev.TransportError, match="timed out"):
                await c.users.get(UID)
    # One attempt used the whole deadline and none followed: without the deadline the first
    # attempt's 5 s timeout would have been followed by two more attempts.
    assert arrivals == 1
