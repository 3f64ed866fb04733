"""`client.users`: list, stream pages of, get, create and update users."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

from .. import _bodies as b
from .. import _sync
from .. import _validate as v
from .._session import Response, merge_params
from ..errors import BadRequest, InvalidRequest
from ..models import UNSET, Location, Page, SyncOutcome, UnsetType, User, UserPath
from ._base import Collection, Position, resumable

__all__ = ["Encoding", "Users"]

Encoding = Literal["json", "form", "multipart"]
_ENCODINGS = ("json", "form", "multipart")


class Users(Collection):
    path = "users"

    def _list_params(
        self,
        page_size: int,
        email: str | None,
        expand: UserPath | Iterable[UserPath],
        page_after: str | None,
        page_before: str | None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"page_size": v.check_page_size(page_size)}
        if email is not None:
            params["email"] = v.check_email(email)
        expansions = v.check_expand(expand, v.USER_EXPANSIONS)
        if expansions:
            params["expand"] = expansions
        if page_after is not None:
            params["page_after"] = v.check_cursor(page_after, "page_after")
        elif page_before is not None:  # the API ignores page_before when page_after is given
            params["page_before"] = v.check_cursor(page_before, "page_before")
        return params

    async def pages(
        self,
        *,
        page_size: int = 100,
        email: str | None = None,
        expand: UserPath | Iterable[UserPath] = (),
        page_after: str | None = None,
        page_before: str | None = None,
    ) -> AsyncGenerator[Page[User], None]:
        """Every page of users from the cursor on; `Page.next_cursor` resumes a later stream."""
        params = self._list_params(page_size, email, expand, page_after, page_before)
        pages = self._pages(self._url(), User, params, page_after)
        try:
            async for page in pages:
                yield page
        finally:
            await pages.aclose()  # now: the page fetched ahead is cancelled with the stream

    async def list(
        self,
        *,
        page_size: int = 100,
        email: str | None = None,
        expand: UserPath | Iterable[UserPath] = (),
        page_after: str | None = None,
        page_before: str | None = None,
        resolve: UserPath | Iterable[UserPath] = (),
    ) -> AsyncGenerator[User, None]:
        """Every user, page after page, following the API's ``Link`` header.

        `resolve` names relations (``"default_location.tariff"``, ...) to fetch client-side:
        each distinct URL once, concurrently, while earlier users are consumed.  On a failure
        that ends the stream, the error's ``resume_cursor`` is the ``page_after`` to continue
        from, with no user lost or repeated.
        """
        params = self._list_params(page_size, email, expand, page_after, page_before)
        paths = v.check_expand(resolve, v.USER_EXPANSIONS, "resolve")
        position = Position(page_after)  # the id of the last user handed over
        # The hot path of every bulk sync, so one generator deep, each page decoded in one call
        # (in C) straight from its body.
        stream: AsyncGenerator[Any, None] = (
            self._resolved(params, page_after, paths)
            if paths
            else self._raw_pages(self._url(), params, self._page_decoder(User))
        )
        try:
            with resumable(position):
                if paths:
                    async for user in stream:
                        yield user
                        position.cursor = user.id
                    return
                async for page in stream:
                    for user in page.items:
                        yield user
                        position.cursor = user.id
        finally:
            await stream.aclose()

    async def _resolved(
        self, params: dict[str, Any], cursor: str | None, paths: tuple[str, ...]
    ) -> AsyncGenerator[User, None]:
        """Users with `paths` resolved: a page's relations are fetched while the consumer takes
        the page before it, so at most two pages are held."""
        pending: tuple[list[User], asyncio.Task[None]] | None = None
        ctx = self._ctx
        pages = self._pages(self._url(), User, params, cursor)
        try:
            async for page in pages:
                previous = pending
                pending = (page.items, ctx.spawn(ctx.resolve_paths(page.items, paths)))
                if previous is not None:
                    for user in await _once_resolved(previous):
                        yield user
            if pending is not None:
                users, pending = await _once_resolved(pending), None
                for user in users:
                    yield user
        finally:
            if pending is not None:
                pending[1].cancel()
            await pages.aclose()

    async def get(self, user_id: str, *, expand: UserPath | Iterable[UserPath] = ()) -> User:
        """One user (with LocationDetail); ``"me"`` is the authenticated or acting user."""
        user_id = v.check_id(user_id, v.USER_ID, "user_id", me=True)
        expansions = v.check_expand(expand, v.USER_EXPANSIONS)
        return await self._get(
            self._url(user_id), User, {"expand": expansions} if expansions else None
        )

    async def create(
        self,
        *,
        email: str,
        default_location: Location | UnsetType = UNSET,
        encoding: Encoding = "json",
    ) -> User:
        """Create a user; ``default_location=None`` is refused (the API has no null location).

        The API has no idempotency key: when the outcome of the request is unknown (a lost
        response, a 502/503/504), the session backs off as for any retry, then the user is
        looked up by email before the request is sent again, so there are no duplicates.  If
        that look-up fails too, `OutcomeUnknown` is raised."""
        body = b.user_body(email=email, default_location=default_location)
        found: list[User] = []
        asked = False

        async def landed() -> bool:
            nonlocal asked
            asked = True
            existing = await self._find_by_email(email)
            if existing is not None:
                found.append(existing)
            return existing is not None

        try:
            response = await self._send_body("POST", self._url(), body, encoding, landed=landed)
        except BadRequest as exc:
            # A create that landed but whose answer was lost reads "email taken" when resent.
            if "email" in exc.field_errors and asked:
                existing = await self._find_by_email(email)
                if existing is not None:
                    return existing
            raise
        if response is None:
            return found[0]
        return self._decode(response, User)

    async def update(
        self,
        user_id: str,
        *,
        email: str | UnsetType = UNSET,
        default_location: Location | UnsetType | None = UNSET,
        expand: UserPath | Iterable[UserPath] = (),
        encoding: Encoding = "json",
    ) -> User:
        """Change only what is given: `UNSET` (the default) leaves a field alone, `None` inside
        a Location clears that field, and ``default_location=None`` clears the whole location
        (sent as every field null: the API has no null location)."""
        user_id = v.check_id(user_id, v.USER_ID, "user_id", me=True)
        expansions = v.check_expand(expand, v.USER_EXPANSIONS)
        body = b.user_body(
            email=email, default_location=default_location, none_clears_location=True
        )
        url = merge_params(self._url(user_id), {"expand": expansions})
        # PATCH sets fields, so sending it twice is harmless: retried like a GET.
        response = await self._send_body("PATCH", url, body, encoding)
        assert response is not None  # only a write with a look-up ends in None
        return self._decode(response, User)

    async def sync(
        self,
        records: Iterable[Mapping[str, Any] | User] | AsyncIterable[Mapping[str, Any] | User],
        *,
        dry_run: bool = False,
        concurrency: int = 8,
        shard: tuple[int, int] | None = None,
        lookup: _sync.Lookup = "auto",
        on_plan: Callable[[_sync.SyncPlan], object] | None = None,
    ) -> AsyncGenerator[SyncOutcome, None]:
        """Make the server's users match `records`; one `ev.SyncOutcome` per record.

        A record is a user in the API's JSON shape (what ``evenergy users export`` writes) or
        an `ev.User`; it is matched by ``id`` when it has one, else by email (any case).  Each
        is checked as `create`/`update` check their input before anything is sent; an invalid
        record, or a second record for the same user, fails and the others go on.  Only what
        differs is written: a PATCH carries the changed fields (and the address fields the
        API's address rule needs beside them).  Running the same records again writes nothing;
        a run cut off anywhere and run again ends in the same state (see README "Bulk sync").

        `dry_run` sends no write and yields what a real run would.  `concurrency` bounds the
        records in flight.  `shard=(k, n)` takes only the records whose key hashes to `k`
        of `n` (`_sync.shard_of`), so `n` processes split one input.  `lookup` is ``"auto"``
        (list users while that is cheaper than looking each record up, `_sync.keep_listing`),
        ``"list"`` or ``"each"``.  `on_plan` is called once with the `SyncPlan`, after the
        first look-up answered and before the first write.  The input is read whole first
        (a record that failed to read is reported then); memory holds one small record per
        input record, and none of the server's users beyond a page.
        """
        from ._sync_run import SyncRun

        v.check_bool(dry_run, "dry_run")
        concurrency = _sync.check_concurrency(concurrency)
        checked_shard = _sync.check_shard(shard)
        lookup = _sync.check_lookup(lookup)
        if on_plan is not None and not callable(on_plan):
            raise InvalidRequest("on_plan", f"expected a callable, got {on_plan!r}")
        batch = _sync.Batch(checked_shard)
        read = refused = 0
        async for raw in _each_record(records):
            result = batch.add(raw, read)
            read += 1
            if result is not None:
                refused += 1
                yield result
            if read % 1000 == 0:
                await asyncio.sleep(0)  # a long input read from a plain iterable shares the loop
        plan = _sync.SyncPlan.build(read, refused, len(batch), lookup, dry_run)
        outcomes = SyncRun(self, batch, plan, concurrency=concurrency, on_plan=on_plan).outcomes()
        try:
            async for outcome in outcomes:
                yield outcome
        finally:
            await outcomes.aclose()

    async def _send_body(
        self,
        method: str,
        url: Any,
        body: dict[str, Any],
        encoding: str,
        *,
        landed: Callable[[], Awaitable[bool]] | None = None,
    ) -> Response | None:
        """Send `body`; a write with `landed` (not safe to repeat) may end in None: found."""
        if encoding not in _ENCODINGS:
            raise InvalidRequest("encoding", f"expected one of {', '.join(_ENCODINGS)}")
        kwargs: dict[str, Any]
        if encoding == "json":
            kwargs = {"json": body}
        elif encoding == "form":
            kwargs = {"form": b.form_fields(body)}
        else:
            kwargs = {"multipart": b.form_fields(body)}
        if landed is None:
            return await self._ctx.request(method, url, **kwargs)
        return await self._ctx.write(method, url, landed=landed, **kwargs)

    async def _find_by_email(self, email: str) -> User | None:
        async for user in self.list(email=email, page_size=1):
            if isinstance(user.email, str) and user.email.lower() == email.lower():
                return user
        return None


async def _each_record(records: object) -> AsyncGenerator[object, None]:
    if isinstance(records, AsyncIterable):
        async for raw in records:
            yield raw
    elif isinstance(records, Iterable) and not isinstance(records, str | bytes | Mapping):
        for raw in records:
            yield raw
    else:
        raise InvalidRequest(
            "records", f"expected an iterable of records, got {type(records).__name__}"
        )


async def _once_resolved(pending: tuple[list[User], asyncio.Task[None]]) -> list[User]:
    """A page's users, once the task resolving their relations is done."""
    users, task = pending
    await task
    return users
