"""`client.users`: list, stream pages of, get, create and update users."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from typing import Any, Literal

from .. import _validate as v
from .._convert import Codec
from .._session import OutcomeUnknown, Response, merge_params
from ..errors import BadRequest, EvEnergyError, InvalidRequest
from ..models import UNSET, Location, Page, UnsetType, User, UserPath
from ._base import Collection

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
        async for page in self._pages(self._url(), User, params, page_after):
            yield page

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
        client = self._client
        last_id = page_after
        if paths:
            resolved = self._resolved(params, page_after, paths)
            try:
                async for user in resolved:
                    yield user
                    last_id = user.id
            except EvEnergyError as exc:
                exc.resume_cursor = last_id
                raise
            finally:
                await resolved.aclose()
            return
        # The hot path of every bulk sync, so one generator deep, and each page decoded in one
        # call (in C) straight from its body.
        decoder = Codec(client)  # one Ref per URL across the stream's pages
        pages = self._raw_pages(self._url(), params, page_after)
        try:
            async for page in pages:
                users, expanded = decoder.decode_list(page.body, User)
                client._remember(expanded)
                for user in users:
                    yield user
                    last_id = user.id
        except EvEnergyError as exc:
            exc.resume_cursor = last_id
            raise
        finally:
            await pages.aclose()

    async def _resolved(
        self, params: dict[str, Any], cursor: str | None, paths: tuple[str, ...]
    ) -> AsyncGenerator[User, None]:
        """Users with `paths` resolved: a page's relations are fetched while the consumer takes
        the page before it, so at most two pages are held."""
        pending: tuple[list[User], asyncio.Task[None]] | None = None
        pages = self._pages(self._url(), User, params, cursor)
        try:
            async for page in pages:
                task = asyncio.ensure_future(self._client._resolve_paths(page.items, paths))
                if pending is not None:
                    for user in await _once_resolved(pending):
                        yield user
                pending = (page.items, task)
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
        return await self._get(self._url(user_id), User, {"expand": expansions})

    async def create(
        self,
        *,
        email: str,
        default_location: Location | UnsetType = UNSET,
        encoding: Encoding = "json",
    ) -> User:
        """Create a user; ``default_location=None`` is refused (the API has no null location).

        The API has no idempotency key: when the response is lost, the user is looked up by
        email before the request is sent again, so there are no duplicates."""
        body = v.user_body(email=email, default_location=default_location)
        url = self._url()
        attempts = 0
        while True:
            try:
                response = await self._send_body("POST", url, body, encoding, repeatable=False)
                return self._decode(response, User)
            except OutcomeUnknown:
                attempts += 1
                existing = await self._find_by_email(email)
                if existing is not None:
                    return existing
                if attempts > self._client._session.max_retries:
                    raise
            except BadRequest as exc:
                # A create that landed but whose answer was lost now reads "email taken".
                if attempts and "email" in exc.field_errors:
                    existing = await self._find_by_email(email)
                    if existing is not None:
                        return existing
                raise

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
        body = v.user_body(
            email=email, default_location=default_location, none_clears_location=True
        )
        url = merge_params(self._url(user_id), {"expand": expansions})
        # PATCH sets fields, so sending it twice is harmless: retried like a GET.
        response = await self._send_body("PATCH", url, body, encoding, repeatable=True)
        return self._decode(response, User)

    async def _send_body(
        self, method: str, url: Any, body: dict[str, Any], encoding: str, *, repeatable: bool
    ) -> Response:
        if encoding not in _ENCODINGS:
            raise InvalidRequest("encoding", f"expected one of {', '.join(_ENCODINGS)}")
        request = self._client._request
        if encoding == "json":
            return await request(method, url, json=body, repeatable=repeatable)
        fields = v.form_fields(body)
        if encoding == "form":
            return await request(method, url, form=fields, repeatable=repeatable)
        return await request(method, url, multipart=fields, repeatable=repeatable)

    async def _find_by_email(self, email: str) -> User | None:
        async for user in self.list(email=email, page_size=1):
            if isinstance(user.email, str) and user.email.lower() == email.lower():
                return user
        return None


async def _once_resolved(pending: tuple[list[User], asyncio.Task[None]]) -> list[User]:
    """A page's users, once the task resolving their relations is done."""
    users, task = pending
    await task
    return users
