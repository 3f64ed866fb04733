"""`client.users.sync`, the I/O half: find the records' users, then write what differs.

The decisions (what a record means, who matches whom, what to send, when to stop listing)
are `_sync`'s pure functions; this module only calls the collection's public methods
(`pages`, `list`, `get`, `create`, `update`) in the order a run needs:

1. the records are read and checked: an invalid or duplicate record fails at once;
2. users are found by one listing at 100 a page, stopped early by `_sync.keep_listing`, and
   the records it did not settle are looked up one by one (``GET /users/{id}``, then
   ``GET /users?email=``); each found user whose fields differ is PATCHed as soon as it is
   found, with only what differs;
3. once every update is done (an update may free an email a new user takes), the users no
   one found are created.

At most `concurrency` records are in flight at once (look-up plus write); the listing is not
read further while they are all busy, so the server's users are never held beyond a page.
Closing the generator cancels whatever is in flight and waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

from .. import _sync
from .._sync import Batch, Lookup, Record, SyncPlan
from ..errors import (
    APIError,
    EvEnergyError,
    Forbidden,
    InvalidRequest,
    InvalidResponse,
    NotFound,
    OutcomeUnknown,
    RateLimited,
    ServerError,
    Unauthorized,
)
from ..models import Location, Page, SyncOutcome, UnsetType, User

__all__ = ["SyncRun", "bounded"]

Job = SyncOutcome | Coroutine[Any, Any, SyncOutcome]


class Users(Protocol):
    """The methods of `client.users` a run calls (a protocol, so this module does not import
    the collection that imports it)."""

    def pages(self, *, page_size: int = ...) -> AsyncGenerator[Page[User], None]: ...

    def list(
        self, *, page_size: int = ..., email: str | None = ...
    ) -> AsyncGenerator[User, None]: ...

    async def get(self, user_id: str) -> User: ...

    async def create(self, *, email: str, default_location: Location | UnsetType = ...) -> User: ...

    async def update(
        self,
        user_id: str,
        *,
        email: str | UnsetType = ...,
        default_location: Location | UnsetType | None = ...,
    ) -> User: ...


def fails_record(exc: EvEnergyError) -> bool:
    """Whether an error fails only the record at hand (reported; the run goes on) rather than
    the run: the server refused this record's request, or its outcome is unknown.  Refused
    credentials, an exhausted rate-limit wait and a dead network end the run instead: every
    record after would fail the same way, each at the cost of its retries."""
    if isinstance(exc, OutcomeUnknown | InvalidRequest | InvalidResponse | ServerError):
        return True
    if isinstance(exc, Unauthorized | Forbidden | RateLimited):
        return False
    return isinstance(exc, APIError)


class SyncRun:
    """One run over a `Batch` of records; `outcomes()` drives it."""

    def __init__(
        self,
        users: Users,
        batch: Batch,
        plan: SyncPlan,
        *,
        concurrency: int,
        on_plan: Callable[[SyncPlan], object] | None,
    ) -> None:
        self._users = users
        self._batch = batch
        self._plan = plan
        self._dry = plan.dry_run
        self._lookup: Lookup = plan.lookup
        self._concurrency = concurrency
        self._on_plan = on_plan
        self._announced = False
        records = [*batch.by_id.values(), *batch.by_email.values()]
        self._unmatched: dict[int, Record] = {r.index: r for r in records}
        self._to_create: list[Record] = []
        self._to_find_by_email: list[Record] = []

    async def outcomes(self) -> AsyncGenerator[SyncOutcome, None]:
        for phase in (self._find_and_update, self._find_or_create):
            jobs = bounded(phase(), self._concurrency)
            try:
                async for result in jobs:
                    yield result
            finally:
                await jobs.aclose()

    def _announce(self) -> None:
        """Tell the plan once: after the first look-up answered (so the rate limit is known)
        and before the first write."""
        if not self._announced:
            self._announced = True
            if self._on_plan is not None:
                self._on_plan(self._plan)

    # --- phase 1: find every user, update those that differ ------------------------------

    async def _find_and_update(self) -> AsyncGenerator[Job, None]:
        to_match = len(self._unmatched)
        if to_match == 0:
            self._announce()
            return
        complete = False
        if self._lookup != "each":
            pages = 0
            stream = self._users.pages(page_size=_sync.PAGE_SIZE)
            try:
                async for page in stream:
                    pages += 1
                    self._announce()
                    for user in page.items:
                        for record, duplicate in self._batch.match(user.id, user.email):
                            if self._unmatched.pop(record.index, None) is not None:
                                yield duplicate or self._decide(record, user)
                    if page.next_url is None:
                        complete = True
                        break
                    if not _sync.keep_listing(pages, len(self._unmatched), to_match, self._lookup):
                        break
            except EvEnergyError as exc:
                # A sync is resumed by running it again, not from the listing's cursor.
                exc.resume_cursor = None
                raise
            finally:
                await stream.aclose()
        left = sorted(self._unmatched.values(), key=lambda r: r.index)
        self._unmatched.clear()
        for record in left:
            if record.id is None:
                # The listing went through every user: no one has this email.
                (self._to_create if complete else self._to_find_by_email).append(record)
            elif complete:
                error = NotFound(404, title="Not Found", detail=f"no user {record.id}")
                yield _sync.failed(record.index, record.email, error, record.id)
            else:
                yield self._by_id(record)

    async def _by_id(self, record: Record) -> SyncOutcome:
        assert record.id is not None
        try:
            user = await self._users.get(record.id)
        except EvEnergyError as exc:
            self._announce()
            return self._failure(record, exc)
        self._announce()
        for named, duplicate in self._batch.match(user.id, user.email):
            if named is record and duplicate is not None:
                return duplicate
        return await _done(self._decide(record, user))

    def _decide(self, record: Record, user: User) -> Job:
        """The outcome for a found user, or the write that will make it."""
        try:
            update = _sync.plan_update(record, user.email, _sync.server_location(user))
        except InvalidRequest as exc:
            return self._failure(record, exc, user.id)
        if not update.changed:
            return _sync.outcome("unchanged", record, None if self._dry else user, server=user)
        if self._dry:
            return _sync.outcome("updated", record, None, update.changed, server=user)
        return self._patch(record, user, update)

    async def _patch(self, record: Record, user: User, update: _sync.Update) -> SyncOutcome:
        self._announce()
        try:
            new = await self._users.update(
                user.id, email=update.email, default_location=update.location
            )
        except EvEnergyError as exc:
            return self._failure(record, exc, user.id)
        return _sync.outcome("updated", record, new, update.changed)

    # --- phase 2: the users no one found ----------------------------------------------------

    async def _find_or_create(self) -> AsyncGenerator[Job, None]:
        for record in self._to_create:
            yield self._create(record)
        for record in self._to_find_by_email:
            yield self._by_email(record)

    async def _by_email(self, record: Record) -> SyncOutcome:
        assert record.email is not None
        try:
            user = await self._find(record.email)
        except EvEnergyError as exc:
            self._announce()
            return self._failure(record, exc)
        self._announce()
        if user is not None:
            for named, duplicate in self._batch.match(user.id, user.email):
                if named is record:
                    return duplicate or await _done(self._decide(record, user))
            # Otherwise its user is being renamed by the record with its id: a new user.
        return await self._create(record)

    async def _find(self, email: str) -> User | None:
        users = self._users.list(email=email, page_size=1)
        try:
            async for user in users:
                if isinstance(user.email, str) and user.email.lower() == email.lower():
                    return user
        finally:
            await users.aclose()
        return None

    async def _create(self, record: Record) -> SyncOutcome:
        assert record.email is not None
        try:
            changed, location = _sync.create_location(record)
        except InvalidRequest as exc:
            return self._failure(record, exc)
        if self._dry:
            return _sync.outcome("created", record, None, changed)
        self._announce()
        try:
            # `create` reconciles a POST whose answer was lost by looking the email up.
            user = await self._users.create(email=record.email, default_location=location)
        except EvEnergyError as exc:
            return self._failure(record, exc)
        return _sync.outcome("created", record, user, changed)

    def _failure(
        self, record: Record, exc: EvEnergyError, user_id: str | None = None
    ) -> SyncOutcome:
        if not fails_record(exc):
            raise exc
        return _sync.failed(record.index, record.email, exc, user_id or record.id)


async def _done(job: Job) -> SyncOutcome:
    return job if isinstance(job, SyncOutcome) else await job


_END: Any = object()


async def _next(source: AsyncIterator[Job]) -> Job:
    try:
        return await source.__anext__()
    except StopAsyncIteration:
        return _END  # type: ignore[no-any-return]


async def bounded(jobs: AsyncGenerator[Job, None], limit: int) -> AsyncGenerator[SyncOutcome, None]:
    """The outcomes of `jobs` as they finish, at most `limit` running at once.

    The source is asked for its next job only while a slot is free, so a source that finds
    work faster than it is done waits.  An error a job raises ends the run: the other jobs
    are cancelled.  Closing the generator cancels the running jobs and the source, and waits
    for them, so no request outlives the run.
    """
    running: set[asyncio.Future[SyncOutcome]] = set()
    getter: asyncio.Future[Job] | None = None
    exhausted = False
    try:
        while True:
            if getter is None and not exhausted and len(running) < limit:
                getter = asyncio.ensure_future(_next(jobs))
            waiting: set[asyncio.Future[Any]] = set(running)
            if getter is not None:
                waiting.add(getter)
            if not waiting:
                return
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if getter is not None and getter in done:
                job, getter = getter.result(), None
                if job is _END:
                    exhausted = True
                elif isinstance(job, SyncOutcome):
                    yield job
                else:
                    running.add(asyncio.ensure_future(job))
            for task in done:
                if task in running:
                    running.discard(task)
                    yield task.result()
    finally:
        pending: list[asyncio.Future[Any]] = [*running]
        if getter is not None:
            pending.append(getter)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if getter is not None and not getter.cancelled() and getter.exception() is None:
            job = getter.result()
            if isinstance(job, Coroutine):
                job.close()  # handed over as the run ended: never started, nothing sent
        await jobs.aclose()
