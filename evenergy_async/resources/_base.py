"""What every collection shares: fetching one resource, and streaming pages along `Link`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Protocol, TypeVar

from yarl import URL

from .. import _sansio
from .._convert import Codec
from .._session import Response, merge_params, query_pairs
from ..errors import EvEnergyError, InvalidResponse
from ..models import Page, User
from ..refs import Ref

T = TypeVar("T")

__all__ = ["MAX_PAGE_SIZE", "Collection", "Position", "Requester", "resumable"]

# Where a page is: the Link URL's own say, never carried over from the first request.
_POSITION = frozenset({"page", "page_after", "page_before"})
# The API's largest page (the spec's page_size maximum): what a page asked without one may hold.
MAX_PAGE_SIZE = 100
# Empty pages in a row that still link onward before a stream gives up: a cursor cannot move
# past items that are not there, and `list()` hands nothing to its consumer meanwhile.
MAX_EMPTY_PAGES = 16


class Requester(Protocol):
    """All a collection needs of its client (one per client or `as_user` view)."""

    @property
    def base_url(self) -> URL: ...

    @property
    def max_retries(self) -> int: ...

    async def request(self, method: str, url: URL, **kwargs: Any) -> Response:
        """Send as the view's acting user; ClientClosed once the client is closed."""

    async def write(
        self, method: str, url: URL, *, landed: Callable[[], Awaitable[bool]], **kwargs: Any
    ) -> Response | None:
        """A write not safe to repeat: `landed()` is asked before it is sent again; None when
        it found the write landed."""

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run work ahead of the caller (a prefetch) as a task the client's close cancels."""
        ...

    def check_link(self, reference: str, base: URL) -> URL:
        """A URL the server gave, if the client may follow it; InvalidResponse if not."""
        ...

    def remember(self, expanded: Sequence[Ref[Any]]) -> None:
        """Prime the resolve cache with relations that arrived expanded."""

    async def resolve(self, ref: Ref[Any] | str, field: str | None = None) -> Any:
        """What decoded Refs resolve through."""

    async def resolve_paths(self, users: Iterable[User], paths: Sequence[str]) -> None:
        """Resolve the named relations of `users`."""


class Position:
    """Where a stream stands: the ``page_after`` that continues it, nothing lost or repeated."""

    __slots__ = ("cursor",)

    def __init__(self, cursor: str | None) -> None:
        self.cursor = cursor


@contextlib.contextmanager
def resumable(position: Position) -> Iterator[None]:
    """Around a stream: the error that ends it carries ``resume_cursor``, where it stood.

    The one place ``resume_cursor`` is set; an outer stream (users with relations resolved)
    knows better than an inner one (its pages), so the outermost says last."""
    try:
        yield
    except EvEnergyError as exc:
        exc.resume_cursor = position.cursor
        raise


class Collection:
    """Base of `client.users`, `client.tariffs`, ...: bound to one client (or view)."""

    path = ""

    def __init__(self, ctx: Requester) -> None:
        self._ctx = ctx
        self._collection_url = ctx.base_url / self.path
        self._resource_prefix = f"{self._collection_url}/"
        # One codec for the collection's single resources (each decode has Refs of its own).
        self._codec = Codec(ctx)

    def _url(self, *ids: str) -> URL:
        """The collection's URL, or a resource's under it: `ids` are checked ids (letters
        and digits, or "me"), which need no encoding: the URL is made from a string, as yarl's
        ``/`` (which encodes each segment) costs several times as much on every get."""
        if not ids:
            return self._collection_url
        return URL(self._resource_prefix + "/".join(ids), encoded=True)

    async def _get(self, url: URL, cls: type[T], params: Mapping[str, Any] | None = None) -> T:
        if params:
            url = merge_params(url, params)
        response = await self._ctx.request("GET", url)
        return self._decode(response, cls)

    def _decode(self, response: Response, cls: type[T]) -> T:
        value, expanded = self._codec.decode(response.body, cls)
        self._ctx.remember(expanded)
        return value

    async def _pages(
        self, url: URL, cls: type[T], params: Mapping[str, Any], cursor: str | None = None
    ) -> AsyncGenerator[Page[T], None]:
        """Every page from `url` on, decoded as `cls`; see `_raw_pages`."""
        position = Position(cursor)
        pages = self._raw_pages(url, params, self._page_decoder(cls))
        try:
            with resumable(position):
                async for page in pages:
                    yield page
                    position.cursor = page.next_cursor or position.cursor
        finally:
            await pages.aclose()

    def _page_decoder(self, cls: type[T]) -> Callable[[bytes], list[T]]:
        """A page body as `cls` items, in one call (msgspec, in C); relations that arrived
        expanded prime the resolve cache.  One codec per stream: one Ref per URL across it."""
        codec = Codec(self._ctx)
        remember = self._ctx.remember

        def decode_page(body: bytes) -> list[T]:
            items, expanded = codec.decode_list(body, cls)
            remember(expanded)
            return items

        return decode_page

    async def _raw_pages(
        self, url: URL, params: Mapping[str, Any], decode_page: Callable[[bytes], list[T]]
    ) -> AsyncGenerator[Page[T], None]:
        """Every page from `url` on, its body read by `decode_page` (a JSON array that does not
        fit raises InvalidResponse), following ``Link: rel="next"`` (RFC 8288).

        The next page's request is sent before the current page is handed over, so the network
        and the decoder work at the same time; at most one page is fetched ahead.  The stream
        ends with InvalidResponse when the server's links go round in a circle (a URL or a
        cursor seen before), keep leading on from empty pages, or a page holds more items than
        its page size.
        """
        ctx = self._ctx
        max_items = params.get("page_size", MAX_PAGE_SIZE)
        first = merge_params(url, params)
        # The filters every page must carry, worked out once for the whole stream.
        filters = [(k, v) for k, v in params.items() if k not in _POSITION]
        trail = _Trail()
        trail.follow(first)
        next_url: URL | None = first
        fetch: asyncio.Task[Response] | None = None
        empty_run = 0
        try:
            while next_url is not None:
                if fetch is None:
                    fetch = ctx.spawn(ctx.request("GET", next_url))
                response = await fetch
                fetch = None
                links = _sansio.links_by_rel(response.headers.get("Link"))
                following = links.get("next")
                next_url = None
                if following is not None:
                    next_url = _keep_filters(ctx.check_link(following, response.url), filters)
                    trail.follow(next_url)
                    fetch = ctx.spawn(ctx.request("GET", next_url))
                    await asyncio.sleep(0)  # let it be sent before decoding this page
                items = decode_page(response.body)
                if len(items) > max_items:
                    raise InvalidResponse(
                        f"a page of {len(items)} items, asked for at most {max_items}"
                    )
                empty_run = 0 if items else empty_run + 1
                if empty_run > MAX_EMPTY_PAGES and next_url is not None:
                    raise InvalidResponse(f"{empty_run} empty pages in a row, still linking on")
                next_cursor = next_url.query.get("page_after") if next_url is not None else None
                previous = links.get("previous")
                yield Page(items, str(next_url) if next_url else None, next_cursor, previous)
        finally:
            if fetch is not None:
                fetch.cancel()
                with contextlib.suppress(BaseException):
                    await fetch


class _Trail:
    """The pages a stream has asked for, in O(1) memory however long the stream.

    A page asked for twice means the server's links go round in a circle (A -> B -> A, a
    page linking to itself, a cursor that does not move): the stream would never end, so it
    is refused.  A page is known by its position (``page_after``, ``page_before``, ``page``)
    when its URL has one, else by its URL with the query sorted.

    Two checks, neither growing with the stream: the last `RECENT` keys, exactly, end a short
    cycle at its first repeat; and one checkpoint key, moved to the latest page whenever the
    count of pages since it reaches the next power of two (Brent's cycle detection), ends
    any longer cycle: once the checkpoint lies on a cycle of length L and the power reached
    is at least L, the checkpoint comes round again within L pages.  A cycle that starts
    after page M and is L pages long so ends within about 2 * max(M, L) + L pages.
    """

    RECENT = 64

    __slots__ = ("_checkpoint", "_order", "_power", "_recent", "_since")

    def __init__(self) -> None:
        self._recent: set[object] = set()
        self._order: collections.deque[object] = collections.deque()
        self._checkpoint: object = None
        self._power = 1
        self._since = 0

    def follow(self, url: URL) -> None:
        key = _page_key(url)
        if key in self._recent or key == self._checkpoint:
            raise InvalidResponse(f"the server's Link leads back to a page already read: {url}")
        recent, order = self._recent, self._order
        if len(order) >= self.RECENT:
            recent.discard(order.popleft())
        order.append(key)
        recent.add(key)
        self._since += 1
        if self._since >= self._power:
            self._checkpoint = key
            self._power *= 2
            self._since = 0

    def __len__(self) -> int:
        """How many keys it holds (the recent ones and the checkpoint): at most RECENT + 1."""
        return len(self._recent) + (self._checkpoint is not None)


def _page_key(url: URL) -> object:
    query = url.query
    position = tuple(sorted((k, v) for k, v in query.items() if k in _POSITION))
    if position:
        return position
    return (url.raw_path, tuple(sorted(query.items())))


def _keep_filters(url: URL, filters: list[tuple[str, Any]]) -> URL:
    """`url` with any of the stream's filters (page size, email, expand, ...) its server left
    out put back, so every page answers the same question as the first."""
    query = url.query
    missing = {k: v for k, v in filters if k not in query}
    return url.update_query(query_pairs(missing)) if missing else url
