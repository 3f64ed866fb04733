"""`AiohttpTransport` against aiohttp's own failures, injected with aioresponses.

The loopback tests (test_transport.py) cover what a real server can make happen; these cover
the aiohttp exceptions a test server cannot easily provoke on demand (a dropped connection
mid-response, a payload error, an SSL failure, ...).  For each: whether the request may have
reached the server (`sent`, which decides if a POST is repeated), whether it timed out, and
that no aiohttp exception, with the request's headers in its repr, is kept on what is raised.
"""

from __future__ import annotations

import asyncio
import traceback

import aiohttp
import pytest
from _aioresponses_compat import install
from aioresponses import aioresponses
from yarl import URL

from evenergy_async._policy import Request, SendError
from evenergy_async._transport import AiohttpTransport

install()

URL_ = URL("http://api.test/v2/users")
SECRET = "Bearer s3cret-token"


def request(method: str = "GET") -> Request:
    return Request(method, URL_, {"Authorization": SECRET}, None, 5.0, 2**20)


def connector_error() -> aiohttp.ClientConnectorError:
    key = aiohttp.client_reqrep.ConnectionKey("api.test", 80, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))


# (what aiohttp raised, may it have reached the server, did it time out)
FAILURES = [
    pytest.param(connector_error(), False, False, id="connection-refused"),
    pytest.param(aiohttp.ServerDisconnectedError(), True, False, id="server-disconnected"),
    pytest.param(aiohttp.ClientPayloadError("cut short"), True, False, id="payload-error"),
    pytest.param(aiohttp.ClientOSError(104, "Connection reset"), True, False, id="reset"),
    pytest.param(asyncio.TimeoutError(), True, True, id="timeout"),
    pytest.param(aiohttp.ServerTimeoutError("read timed out"), True, True, id="server-timeout"),
    pytest.param(
        aiohttp.ClientResponseError(
            aiohttp.RequestInfo(URL_, "GET", {"Authorization": SECRET}, URL_),  # type: ignore[arg-type]
            (),
            status=400,
            message="Got more than 8190 bytes when reading: " + "Authorization: " + SECRET,
        ),
        True,
        False,
        id="bad-response-line",
    ),
]


@pytest.mark.parametrize(("raised", "sent", "timed_out"), FAILURES)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_aiohttp_failures_become_a_send_error_without_the_token(
    raised: BaseException, sent: bool, timed_out: bool, method: str
) -> None:
    transport = AiohttpTransport()
    try:
        with aioresponses() as mocked:
            mocked.add(URL_, method, exception=raised)
            with pytest.raises(SendError) as caught:
                await transport.send(request(method))
    finally:
        await transport.aclose()
    error = caught.value
    assert error.sent is sent
    assert error.timed_out is timed_out
    # Nothing of aiohttp's is kept on the error: its repr would carry the request headers.
    assert error.__cause__ is None
    assert error.__context__ is None
    text = "".join(traceback.format_exception(error)) + repr(error)
    assert "s3cret" not in text


async def test_a_mocked_response_is_read_whole_with_its_headers() -> None:
    transport = AiohttpTransport()
    try:
        with aioresponses() as mocked:
            mocked.get(URL_, status=200, body=b"[1, 2]", headers={"X-RateLimit-Remaining": "7"})
            response = await transport.send(request())
    finally:
        await transport.aclose()
    assert (response.status, response.body) == (200, b"[1, 2]")
    assert response.headers["X-RateLimit-Remaining"] == "7"
