"""`Client`: owns the session, credentials, rate limiter and resolve cache; exposes the collections.

`client.as_user(user_id)` returns a view that shares all of those and sends ``EvEnergy-User``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

import aiohttp
from yarl import URL

from . import _convert, _sansio
from . import _validate as v
from ._auth import ClientCredentials, CredentialsAuth, PostForm, StaticToken, TokenSource
from ._cache import MISSING, TTLCache
from ._ratelimit import RateLimiter, RateLimiterProtocol
from ._session import Response, Session
from .errors import InvalidRequest
from .models import EVSESite, RateLimit, Supplier, Tariff, User
from .refs import Ref
from .resources import EVSESites, Suppliers, Tariffs, Users

__all__ = ["DEFAULT_BASE_URL", "Client"]

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.ev.energy/v2"

# What a resolved URL decodes to, by the collection it names.
_MODELS: dict[str, type[Any]] = {
    "users": User,
    "tariffs": Tariff,
    "suppliers": Supplier,
    "evse_sites": EVSESite,
}


class _Flight:
    """One fetch of a related resource, shared by everyone resolving its URL meanwhile."""

    __slots__ = ("future", "waiters")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.waiters = 0


class _Shared:
    """State shared by a client and its `as_user` views."""

    def __init__(self, session: Session, cache: TTLCache, resolve_concurrency: int) -> None:
        self.session = session
        self.cache = cache
        self.resolving: dict[str, _Flight] = {}
        self.resolve_concurrency = resolve_concurrency


class Client:
    """An ev.energy v2 API client.  Use it as an async context manager, or call `close()`."""

    def __init__(
        self,
        token: str | None = None,
        *,
        credentials: ClientCredentials | None = None,
        base_url: str = DEFAULT_BASE_URL,
        acting_user: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        rate_limit_window: float = 3600.0,
        max_rate_limit_wait: float | None = None,
        limiter: RateLimiterProtocol | None = None,
        session: aiohttp.ClientSession | None = None,
        cache_size: int = 4096,
        cache_ttl: float = 600.0,
        resolve_concurrency: int = 8,
    ) -> None:
        base = _check_base_url(base_url)
        if (token is None) == (credentials is None):
            raise InvalidRequest("token", "give either token= or credentials=, not both or neither")
        # The session sends the token requests too, so it builds the auth from its own sender.
        make_auth: Callable[[PostForm], TokenSource]
        if credentials is not None:
            if not isinstance(credentials, ClientCredentials):
                raise InvalidRequest("credentials", "expected an ev.ClientCredentials")
            creds = credentials
            token_url = creds.token_url or str(base.origin() / "o" / "token" / "")

            def make_auth(post_form: PostForm) -> TokenSource:
                return CredentialsAuth(creds, token_url, post_form)

        else:
            static = StaticToken(token)  # type: ignore[arg-type]

            def make_auth(post_form: PostForm) -> TokenSource:
                return static

        v.check_seconds(timeout, "timeout")
        if type(max_retries) is not int or max_retries < 0:
            raise InvalidRequest(
                "max_retries", f"expected a whole number >= 0, got {max_retries!r}"
            )
        v.check_seconds(rate_limit_window, "rate_limit_window")
        if max_rate_limit_wait is not None:
            v.check_seconds(max_rate_limit_wait, "max_rate_limit_wait", zero_ok=True)
        if type(resolve_concurrency) is not int or resolve_concurrency < 1:
            raise InvalidRequest("resolve_concurrency", "expected a whole number >= 1")
        if limiter is None:
            limiter = RateLimiter(rate_limit_window)
        else:
            limiter.configure(window=rate_limit_window)
            # A shared limiter keys its budget by who spends it: a fingerprint, never the secret.
            bind = getattr(limiter, "bind_identity", None)
            if bind is not None:
                bind(credentials.client_id if credentials is not None else token)
        session_obj = Session(
            base_url=base,
            make_auth=make_auth,
            limiter=limiter,
            timeout=timeout,
            max_retries=max_retries,
            max_rate_limit_wait=max_rate_limit_wait,
            http=session,
        )
        shared = _Shared(session_obj, TTLCache(cache_size, cache_ttl), resolve_concurrency)
        self._init_view(shared, _check_acting_user(acting_user), is_view=False)

    def _init_view(self, shared: _Shared, acting_user: str | None, *, is_view: bool) -> None:
        self._shared = shared
        self._is_view = is_view
        self._session = shared.session
        self._base_url = shared.session.base_url
        self._acting_user = acting_user
        self.users = Users(self)
        self.tariffs = Tariffs(self)
        self.suppliers = Suppliers(self)
        self.evse_sites = EVSESites(self)

    # --- lifecycle ---

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if the client made it (a caller's session is left open).
        Closing an `as_user` view does nothing: the client that made it owns the session."""
        if not self._is_view:
            await self._session.close()

    def __repr__(self) -> str:
        acting = f", acting_user={self._acting_user!r}" if self._acting_user else ""
        return f"Client(base_url={str(self._base_url)!r}{acting})"

    # --- views and state ---

    def as_user(self, user_id: str) -> Client:
        """A view acting as `user_id` (``EvEnergy-User``), sharing session, limiter and cache."""
        view = object.__new__(Client)
        view._init_view(self._shared, _check_acting_user(user_id), is_view=True)
        return view

    @property
    def acting_user(self) -> str | None:
        return self._acting_user

    @property
    def base_url(self) -> str:
        return str(self._base_url)

    @property
    def rate_limit(self) -> RateLimit | None:
        """The rate-limit headers of the latest response (any task, any view), or None."""
        return self._session.rate_limit

    @property
    def limiter(self) -> RateLimiterProtocol:
        return self._session.limiter

    async def _request(self, method: str, url: URL, **kwargs: Any) -> Response:
        return await self._session.request(method, url, acting_user=self._acting_user, **kwargs)

    # --- related resources ---

    @overload
    async def resolve(self, ref: Ref[T]) -> T: ...
    @overload
    async def resolve(self, ref: str) -> Any: ...
    async def resolve(self, ref: Ref[Any] | str) -> Any:
        """The resource a Ref (or URL) names: cached, and fetched once however many ask.

        Tariffs, suppliers, EVSE sites and users decode to their models; any other resource
        to plain JSON data.  A URL on another origin than the client's is refused unsent.
        """
        url = ref.url if isinstance(ref, Ref) else ref
        if not isinstance(url, str):
            raise InvalidRequest("ref", f"expected an ev.Ref or a URL string, got {ref!r}")
        target = self._session.check_origin(URL(url), "to resolve")
        key = self._cache_key(url)
        value = self._shared.cache.get(key, asyncio.get_running_loop().time())
        if value is MISSING:
            value = await self._join_fetch(key, url, target)
        if isinstance(ref, Ref):
            ref._set_value(value)
        return value

    def _cache_key(self, url: str) -> str:
        # What a resource shows can depend on who asks (EVSESite.user_connected): views acting
        # as different users neither share cached values nor fetches.
        return f"{self._acting_user or ''} {url}"

    async def _join_fetch(self, key: str, url: str, target: URL) -> Any:
        """Wait for the one fetch of `key`, starting it if needed; the last waiter to leave
        (cancelled) cancels it, so nobody's budget is spent on a resource nobody wants."""
        resolving = self._shared.resolving
        flight = resolving.get(key)
        if flight is None:
            flight = resolving[key] = _Flight(
                asyncio.ensure_future(self._fetch_related(key, target))
            )
            flight.future.add_done_callback(lambda f: _flight_done(resolving, key, f))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.future)
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.future.done():
                flight.future.cancel()

    async def _fetch_related(self, key: str, target: URL) -> Any:
        response = await self._request("GET", target)
        model = _MODELS.get(_collection(target, self._base_url))
        if model is None:
            value = _sansio.decode_json(response.body)
        else:
            value, expanded = _convert.decode(response.body, model, self)
            self._remember(expanded)
        self._shared.cache.put(key, value, asyncio.get_running_loop().time())
        return value

    def _remember(self, expanded: Sequence[Ref[Any]]) -> None:
        """Prime the resolve cache with relations that arrived expanded."""
        if not expanded:
            return
        now = asyncio.get_running_loop().time()
        cache = self._shared.cache
        for ref in expanded:
            cache.put(self._cache_key(ref.url), ref.value, now)

    async def _resolve_paths(self, users: Iterable[User], paths: Sequence[str]) -> None:
        """Resolve the named relations of `users`, each distinct URL once, a few at a time."""
        semaphore = asyncio.Semaphore(self._shared.resolve_concurrency)

        async def resolve_all(refs: list[Ref[Any]]) -> None:
            by_url: dict[str, list[Ref[Any]]] = {}
            for ref in refs:
                if not ref.resolved:
                    by_url.setdefault(ref.url, []).append(ref)

            async def one(url: str, same: list[Ref[Any]]) -> None:
                async with semaphore:
                    value = await self.resolve(same[0])
                for ref in same[1:]:
                    ref._set_value(value)

            await _gather(one(url, same) for url, same in by_url.items())

        users = list(users)
        for depth in (1, 2):  # "default_location.tariff.supplier" needs the tariff first
            refs: list[Ref[Any]] = []
            for path in paths:
                parts = path.split(".")
                if len(parts) <= depth:
                    continue
                for user in users:
                    ref = _walk(user, parts[: depth + 1])
                    if ref is not None:
                        refs.append(ref)
            await resolve_all(refs)


def _flight_done(resolving: dict[str, _Flight], key: str, future: asyncio.Future[Any]) -> None:
    if resolving.get(key) is not None and resolving[key].future is future:
        del resolving[key]
    if not future.cancelled():
        future.exception()  # retrieved: a failure nobody awaits any more is not logged


async def _gather(coroutines: Iterable[Any]) -> None:
    """Run all; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    if not tasks:
        return
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def _walk(user: User, parts: Sequence[str]) -> Ref[Any] | None:
    """The Ref at ``parts`` (e.g. default_location, tariff, supplier), through resolved Refs."""
    node: Any = user
    for name in parts:
        if isinstance(node, Ref):
            if not node.resolved:
                return None
            node = node.value
        node = getattr(node, name, None)  # None for null, and for UNSET (it has no fields)
        if node is None:
            return None
    return node if isinstance(node, Ref) else None


def _collection(url: URL, base: URL) -> str:
    base_parts = [p for p in base.path.split("/") if p]
    parts = [p for p in url.path.split("/") if p]
    if parts[: len(base_parts)] == base_parts and len(parts) == len(base_parts) + 2:
        return parts[len(base_parts)]
    return ""


def _check_base_url(base_url: object) -> URL:
    if not isinstance(base_url, str):
        raise InvalidRequest("base_url", f"expected a URL string, got {base_url!r}")
    try:
        url = URL(base_url)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("base_url", f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequest("base_url", f"expected an absolute http(s) URL, got {base_url!r}")
    if url.query_string or url.fragment:
        raise InvalidRequest("base_url", "must not carry a query or fragment")
    return url.with_path(url.path.rstrip("/") or "/")


def _check_acting_user(user_id: object) -> str | None:
    if user_id is None:
        return None
    return v.check_id(user_id, v.USER_ID, "acting_user")
