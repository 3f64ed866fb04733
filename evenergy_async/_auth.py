"""Credentials: a static bearer token, or OAuth2 client credentials fetched and refreshed.

Client credentials (RFC 6749 section 4.4): POST ``grant_type=client_credentials`` to the token
URL with HTTP Basic client authentication; the answer's ``expires_in`` (36000 s at
ev.energy) says when to fetch again.  One fetch at a time: concurrent callers share it, a
cancelled caller does not cancel it for the others, and a failed fetch is not remembered.

Secrets never appear in a repr, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import msgspec

from .errors import InvalidRequest, InvalidResponse, TransportError, Unauthorized

__all__ = ["ClientCredentials", "CredentialsAuth", "StaticToken", "TokenSource"]

# (url, form fields, headers) -> (status, body)
PostForm = Callable[[str, dict[str, str], dict[str, str]], Awaitable[tuple[int, bytes]]]


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


class StaticToken:
    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token.strip():
            raise InvalidRequest("token", "expected a non-empty string")
        self._token = token

    async def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> bool:
        return False

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
            status, body = await self._post_form(
                self._token_url, form, {"Authorization": f"Basic {basic}"}
            )
        except TransportError as exc:
            raise TransportError(f"token request to {self._token_url} failed: {exc}") from None
        payload = _json_object(body)
        if status != 200:
            error = payload.get("error_description") or payload.get("error") or "refused"
            raise Unauthorized(status, title="Token request refused", detail=str(error))
        token = payload.get("access_token")
        lifetime = payload.get("expires_in", 36000)
        if not isinstance(token, str) or not token:
            raise InvalidResponse("token response without an access_token")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
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
