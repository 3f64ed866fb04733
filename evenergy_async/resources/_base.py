"""What every collection shares: fetching one resource, and streaming pages along `Link`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from yarl import URL

from .. import _sansio
from .._convert import decode, decode_list
from .._session import Response, merge_params, query_pairs
from ..errors import EvEnergyError
from ..models import Page

if TYPE_CHECKING:
    from ..client import Client

T = TypeVar("T")

__all__ = ["Collection"]

# Where a page is: the Link URL's own say, never carried over from the first request.
_POSITION = frozenset({"page", "page_after", "page_before"})


class RawPage(NamedTuple):
    """A page as it came: the JSON body (an array), and where the neighbouring pages are."""

    body: bytes
    next_url: str | None
    next_cursor: str | None
    previous_url: str | None


class Collection:
    """Base of `client.users`, `client.tariffs`, ...: bound to one client (or view)."""

    path = ""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._collection_url = client._base_url / self.path

    def _url(self, *segments: str) -> URL:
        url = self._collection_url
        for segment in segments:
            url = url / segment
        return url

    async def _get(self, url: URL, cls: type[T], params: Mapping[str, Any] | None = None) -> T:
        response = await self._client._request("GET", merge_params(url, params or {}))
        return self._decode(response, cls)

    def _decode(self, response: Response, cls: type[T]) -> T:
        client = self._client
        value, expanded = decode(response.body, cls, client)
        client._remember(expanded)
        return value

    async def _pages(
        self, url: URL, cls: type[T], params: Mapping[str, Any], cursor: str | None = None
    ) -> AsyncGenerator[Page[T], None]:
        """Every page from `url` on, decoded as `cls`; see `_raw_pages`."""
        client = self._client
        pages = self._raw_pages(url, params, cursor)
        try:
            async for raw in pages:
                try:
                    items, expanded = decode_list(raw.body, cls, client)
                except EvEnergyError as exc:
                    exc.resume_cursor = cursor
                    raise
                client._remember(expanded)
                yield Page(items, raw.next_url, raw.next_cursor, raw.previous_url)
                cursor = raw.next_cursor or cursor
        finally:
            await pages.aclose()

    async def _raw_pages(
        self, url: URL, params: Mapping[str, Any], cursor: str | None = None
    ) -> AsyncGenerator[RawPage, None]:
        """Every page from `url` on, its body undecoded, following ``Link: rel="next"`` (RFC 8288).

        The next page's request is sent before the current page is handed over, so the network
        and the decoder work at the same time; at most one page is fetched ahead.  A failure
        that ends the stream carries ``resume_cursor``: the ``page_after`` to continue from.
        """
        client = self._client
        next_url: URL | None = merge_params(url, params)
        fetch: asyncio.Task[Response] | None = None
        try:
            while next_url is not None:
                if fetch is None:
                    fetch = asyncio.ensure_future(client._request("GET", next_url))
                try:
                    response = await fetch
                except EvEnergyError as exc:
                    exc.resume_cursor = cursor
                    raise
                fetch = None
                links = _sansio.links_by_rel(response.headers.get("Link"))
                following = links.get("next")
                next_url = None
                if following is not None:
                    next_url = client._session.check_origin(
                        response.url.join(URL(following)), "Link URL"
                    )
                    next_url = _keep_filters(next_url, params)
                    fetch = asyncio.ensure_future(client._request("GET", next_url))
                    await asyncio.sleep(0)  # let it be sent before decoding this page
                next_cursor = next_url.query.get("page_after") if next_url is not None else None
                previous = links.get("previous")
                following_url = str(next_url) if next_url else None
                yield RawPage(response.body, following_url, next_cursor, previous)
                if next_cursor is not None:
                    cursor = next_cursor
        except EvEnergyError as exc:
            if exc.resume_cursor is None:
                exc.resume_cursor = cursor
            raise
        finally:
            if fetch is not None:
                fetch.cancel()
                with contextlib.suppress(BaseException):
                    await fetch


def _keep_filters(url: URL, params: Mapping[str, Any]) -> URL:
    """`url` with any of the stream's filters (page size, email, expand, ...) its server left
    out put back, so every page answers the same question as the first."""
    missing = {k: v for k, v in params.items() if k not in _POSITION and k not in url.query}
    return url.update_query(query_pairs(missing)) if missing else url
