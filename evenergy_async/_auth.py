"""Credentials: a static bearer token, or OAuth2 client credentials fetched and refreshed.

Client credentials (RFC 6749 section 4.4): POST ``grant_type=client_credentials`` to the token
URL with HTTP Basic client authentication; the answer's ``expires_in`` (36000 s at
ev.energy) says when to fetch again.  One fetch at a time: concurrent callers share it, a
cancelled caller does not cancel it for the others, and a failed fetch is not remembered.

The token endpoint's answers: 200 with a token (anything but a plain header-safe token is
`InvalidResponse`); 5xx is `ServerError` and no answer `TransportError`, both retried by the
session like any request; any other status is `Unauthorized`.

Secrets never appear in a repr, a log line, an exception message or an exception's
cause/context chain.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs
import msgspec

from ._policy import SendError
from .errors import (
    EvEnergyError,
    InvalidRequest,
    InvalidResponse,
    ServerError,
    TransportError,
    Unauthorized,
    raise_unchained,
)

__all__ = ["ClientCredentials", "CredentialsAuth", "StaticToken", "TokenSource"]

# (url, form fields, headers) -> (status, response headers, body); raises SendError
PostForm = Callable[
    [str, dict[str, str], dict[str, str]], Awaitable[tuple[int, Mapping[str, str], bytes]]
]

# What may follow "Bearer " in a header: visible ASCII, no space (RFC 6750's b64token and
# the opaque tokens servers hand out in practice); above all no CR, LF or NUL.
_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")


def is_header_safe_token(token: object) -> bool:
    return isinstance(token, str) and _TOKEN.fullmatch(token) is not None


@attrs.frozen(repr=False)
class ClientCredentials:
    """An OAuth2 client's id and secret; the token URL defaults to ``<API origin>/o/token/``."""

    client_id: str
    client_secret: str
    token_url: str | None = None
    scope: str | None = None

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r}, client_secret='***')"


class TokenSource(Protocol):
    async def token(self) -> str: ...

    def invalidate(self, token: str) -> bool:
        """Forget `token` after a 401; True if a fresh one can be fetched."""
        ...

    def cancel(self) -> None:
        """Stop a fetch in flight (the client is closing)."""
        ...


class StaticToken:
    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token.strip():
            raise InvalidRequest("token", "expected a non-empty string")
        if not is_header_safe_token(token):
            # The message leaves the token out: it is a secret, however malformed.
            raise InvalidRequest(
                "token", "expected visible ASCII characters only (no spaces, CR or LF)"
            )
        self._token = token

    async def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> bool:
        return False

    def cancel(self) -> None:
        pass

    def __repr__(self) -> str:
        return "StaticToken('***')"


class CredentialsAuth:
    """Client-credentials tokens, fetched on first use and before they expire."""

    #: Fetch a new token this many seconds before the current one expires (capped at a tenth
    #: of its lifetime), so no request goes out with a token about to lapse.
    refresh_margin = 60.0

    def __init__(self, credentials: ClientCredentials, token_url: str, post_form: PostForm) -> None:
        self._credentials = credentials
        self._token_url = token_url
        self._post_form = post_form
        self._token: str | None = None
        self._refresh_at = 0.0
        self._fetch: asyncio.Future[str] | None = None
        self.fetches = 0

    def __repr__(self) -> str:
        return f"CredentialsAuth({self._credentials!r}, token_url={self._token_url!r})"

    async def token(self) -> str:
        loop = asyncio.get_running_loop()
        if self._token is not None and loop.time() < self._refresh_at:
            return self._token
        if self._fetch is None:
            self._fetch = asyncio.ensure_future(self._fetch_token())
            self._fetch.add_done_callback(self._fetch_done)
        # shield: one caller's cancellation must not cancel the fetch the others wait on
        return await asyncio.shield(self._fetch)

    def _fetch_done(self, future: asyncio.Future[str]) -> None:
        self._fetch = None
        if not future.cancelled():
            future.exception()  # retrieved here, so an unawaited failure is not logged as lost

    def cancel(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()

    def invalidate(self, token: str) -> bool:
        if token == self._token:
            self._token = None
        return True

    async def _fetch_token(self) -> str:
        creds = self._credentials
        basic = base64.b64encode(f"{creds.client_id}:{creds.client_secret}".encode()).decode()
        form = {"grant_type": "client_credentials"}
        if creds.scope:
            form["scope"] = creds.scope
        self.fetches += 1
        try:
            status, headers, body = await self._post_form(
                self._token_url, form, {"Authorization": f"Basic {basic}"}
            )
        except SendError as exc:
            failure: EvEnergyError = TransportError(
                f"token request to {self._token_url} failed: {exc}"
            )
        else:
            return self._accept(status, headers, body)
        # Outside the handler, with no context: nothing holding the Basic credentials.
        raise_unchained(failure)

    def _accept(self, status: int, headers: Mapping[str, str], body: bytes) -> str:
        payload = _json_object(body)
        if status >= 500:
            raise ServerError(status, title="Token request failed", headers=headers)
        if status != 200:
            error = payload.get("error_description") or payload.get("error") or "refused"
            raise Unauthorized(status, title="Token request refused", detail=str(error)[:500])
        token = payload.get("access_token")
        lifetime = payload.get("expires_in", 36000)
        if not is_header_safe_token(token):
            raise InvalidResponse("token response without a usable access_token")
        assert isinstance(token, str)
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int | float)
            or not 0 < lifetime < 10 * 365 * 86400
        ):
            raise InvalidResponse(f"token response with a bad expires_in: {lifetime!r}")
        margin = min(self.refresh_margin, lifetime / 10)
        self._token = token
        self._refresh_at = asyncio.get_running_loop().time() + lifetime - margin
        return token


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return {}
    return payload if isinstance(payload, dict) else {}
