"""`Client`: owns the session, credentials, rate limiter and resolve cache; exposes the collections.

`client.as_user(user_id)` returns a view that shares all of those and sends ``EvEnergy-User``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from yarl import URL

from . import _convert, _sansio
from . import _validate as v
from ._auth import ClientCredentials, CredentialsAuth, PostForm, StaticToken, TokenSource
from ._cache import MISSING, TTLCache
from ._ratelimit import RateLimiter, RateLimiterProtocol
from ._seconds import check_seconds
from ._session import Response, Session
from ._transport import Transport
from ._urls import same_origin
from .errors import ClientClosed, InvalidRequest
from .models import ClientStats, EVSESite, RateLimit, Supplier, Tariff, User
from .refs import Ref
from .resources import EVSESites, Suppliers, Tariffs, Users

if TYPE_CHECKING:  # the session module is the one that talks to aiohttp
    import aiohttp

T = TypeVar("T")

__all__ = ["DEFAULT_BASE_URL", "Client"]

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
    """What a client and its `as_user` views share: the session, the resolve cache, the work
    in flight.  Closing it is final."""

    def __init__(self, session: Session, cache: TTLCache, resolve_concurrency: int) -> None:
        self.session = session
        self.cache = cache
        self.resolving: dict[str, _Flight] = {}
        self.resolve_concurrency = resolve_concurrency
        self.closed = False
        # Work the client started on its own (prefetched pages, shared fetches): until done.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running: set[asyncio.Task[Any]] = set()

    def check_open(self) -> None:
        if self.closed:
            raise ClientClosed("the client is closed")

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `coro` as a task that `close()` cancels; its awaiters then get ClientClosed."""
        if self.closed:
            coro.close()
            raise ClientClosed("the client is closed")
        task = asyncio.ensure_future(self._run(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        if self.closed:  # closed after the task was made, before it ran
            coro.close()
            raise ClientClosed("the client is closed")
        self._running.add(task)
        try:
            return await coro
        except asyncio.CancelledError:
            if self.closed:
                raise ClientClosed("the client was closed while this was in flight") from None
            raise
        finally:
            self._running.discard(task)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            for task in self._running:
                task.cancel()
            # Each ends promptly: cancelled, or (not started yet) refused by `_run`.
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            await self.session.close()


class _Context:
    """What a client (or an `as_user` view) gives its collections, and what its Refs resolve
    through: requests as one acting user, the resolve cache, the URLs it follows."""

    def __init__(self, shared: _Shared, acting_user: str | None) -> None:
        self.shared = shared
        self.session = shared.session
        self.base_url = shared.session.base_url
        self.acting_user = acting_user

    def acting_as(self, user_id: str | None) -> _Context:
        return _Context(self.shared, user_id)

    @property
    def max_retries(self) -> int:
        return self.session.max_retries

    async def request(self, method: str, url: URL, **kwargs: Any) -> Response:
        shared = self.shared
        shared.check_open()
        try:
            return await self.session.request(method, url, acting_user=self.acting_user, **kwargs)
        except Exception:
            if shared.closed:  # whatever the closed session raised under a call in flight
                raise ClientClosed("the client was closed while this was in flight") from None
            raise

    async def write(
        self, method: str, url: URL, *, landed: Callable[[], Awaitable[bool]], **kwargs: Any
    ) -> Response | None:
        """A write not safe to repeat (see `Session.write`); None: `landed()` found it."""
        shared = self.shared
        shared.check_open()
        try:
            return await self.session.write(
                method, url, landed=landed, acting_user=self.acting_user, **kwargs
            )
        except Exception:
            if shared.closed:
                raise ClientClosed("the client was closed while this was in flight") from None
            raise

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        return self.shared.spawn(coro)

    def check_link(self, reference: str, base: URL) -> URL:
        """A URL the server gave (relative to `base`), if the client may follow it."""
        return same_origin(reference, self.session.origin, base=base)

    # --- related resources ---

    async def resolve(self, ref: Ref[Any] | str, field: str | None = None) -> Any:
        """The resource a Ref (or URL) names: cached, and fetched once however many ask.

        `field` names the caller's argument a URL came from (then a bad URL is an
        InvalidRequest); a Ref's URL is the server's word (an InvalidResponse).
        """
        self.shared.check_open()
        url = ref.url if isinstance(ref, Ref) else ref
        if not isinstance(url, str):
            raise InvalidRequest(field or "ref", f"expected an ev.Ref or a URL string, got {ref!r}")
        target = same_origin(
            url, self.session.origin, field=None if isinstance(ref, Ref) else field
        )
        key = self._cache_key(url)
        value = self.shared.cache.get(key, asyncio.get_running_loop().time())
        if value is MISSING:
            value = await self._join_fetch(key, target)
        if isinstance(ref, Ref):
            ref._set_value(value)
        return value

    def _cache_key(self, url: str) -> str:
        # What a resource shows can depend on who asks (EVSESite.user_connected): views acting
        # as different users neither share cached values nor fetches.
        return f"{self.acting_user or ''} {url}"

    async def _join_fetch(self, key: str, target: URL) -> Any:
        """Wait for the one fetch of `key`, starting it if needed; the last waiter to leave
        (cancelled) cancels it, so nobody's budget is spent on a resource nobody wants."""
        resolving = self.shared.resolving
        flight = resolving.get(key)
        if flight is None:
            flight = resolving[key] = _Flight(self.spawn(self._fetch_related(key, target)))
            flight.future.add_done_callback(lambda f: _flight_done(resolving, key, f))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.future)
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.future.done():
                flight.future.cancel()

    async def _fetch_related(self, key: str, target: URL) -> Any:
        response = await self.request("GET", target)
        model = _MODELS.get(_collection(target, self.base_url))
        if model is None:
            value = _sansio.decode_json(response.body)
        else:
            value, expanded = _convert.decode(response.body, model, self)
            self.remember(expanded)
        self.shared.cache.put(key, value, asyncio.get_running_loop().time())
        return value

    def remember(self, expanded: Sequence[Ref[Any]]) -> None:
        """Prime the resolve cache with relations that arrived expanded."""
        if not expanded:
            return
        now = asyncio.get_running_loop().time()
        cache = self.shared.cache
        for ref in expanded:
            cache.put(self._cache_key(ref.url), ref.value, now)

    async def resolve_paths(self, users: Iterable[User], paths: Sequence[str]) -> None:
        """Resolve the named relations of `users`, each distinct URL once, a few at a time."""
        semaphore = asyncio.Semaphore(self.shared.resolve_concurrency)

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


class Client:
    """An ev.energy v2 API client.  Use it as an async context manager, or call `close()`.

    Closing is final: afterwards every call, stream and `Ref.resolve()` of the client and of
    its `as_user` views raises `ClientClosed`.

    `timeout` bounds one attempt (connect, send, read the whole response), in seconds; a call
    makes up to ``1 + max_retries`` attempts, plus waits for budget and backoffs between
    them.  `deadline` (seconds, None: none) bounds all of that together for each call.
    `max_response_bytes` caps a response body (after decompression).  `transport` replaces
    the aiohttp transport (tests use `evenergy_async.testing.MockTransport`).
    """

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
        deadline: float | None = None,
        max_response_bytes: int = 64 * 2**20,
        transport: Transport | None = None,
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

        check_seconds(timeout, "timeout")
        if type(max_retries) is not int or max_retries < 0:
            raise InvalidRequest(
                "max_retries", f"expected a whole number >= 0, got {max_retries!r}"
            )
        check_seconds(rate_limit_window, "rate_limit_window")
        if max_rate_limit_wait is not None:
            check_seconds(max_rate_limit_wait, "max_rate_limit_wait", zero_ok=True)
        if deadline is not None:
            check_seconds(deadline, "deadline")
        if type(max_response_bytes) is not int or max_response_bytes < 1:
            raise InvalidRequest("max_response_bytes", "expected a whole number >= 1")
        if transport is not None and session is not None:
            raise InvalidRequest("transport", "give either session= or transport=, not both")
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
            transport=transport,
            deadline=deadline,
            max_response_bytes=max_response_bytes,
            refreshable=credentials is not None,
        )
        shared = _Shared(session_obj, TTLCache(cache_size, cache_ttl), resolve_concurrency)
        self._bind(_Context(shared, _check_acting_user(acting_user)), owner=True)

    def _bind(self, context: _Context, *, owner: bool) -> None:
        self._ctx = context
        self._owner = owner
        self.users = Users(context)
        self.tariffs = Tariffs(context)
        self.suppliers = Suppliers(context)
        self.evse_sites = EVSESites(context)

    @property
    def _session(self) -> Session:
        return self._ctx.session

    @property
    def _shared(self) -> _Shared:
        return self._ctx.shared

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
        """Close for good: work in flight (prefetched pages, shared fetches) is cancelled and
        the HTTP session closed if the client made it (a caller's session is left open).
        Closing an `as_user` view does nothing: the client that made it owns the session."""
        if self._owner:
            await self._ctx.shared.close()

    def __repr__(self) -> str:
        acting = self._ctx.acting_user
        extra = f", acting_user={acting!r}" if acting else ""
        return f"Client(base_url={str(self._ctx.base_url)!r}{extra})"

    # --- views and state ---

    def as_user(self, user_id: str) -> Client:
        """A view acting as `user_id` (``EvEnergy-User``), sharing session, limiter and cache."""
        context = self._ctx.acting_as(_check_acting_user(user_id))
        context.shared.check_open()
        return _View(context)

    @property
    def acting_user(self) -> str | None:
        return self._ctx.acting_user

    @property
    def base_url(self) -> str:
        return str(self._ctx.base_url)

    @property
    def rate_limit(self) -> RateLimit | None:
        """The rate-limit headers of the latest response (any task, any view), or None."""
        return self._session.rate_limit

    @property
    def limiter(self) -> RateLimiterProtocol:
        return self._session.limiter

    @property
    def stats(self) -> ClientStats:
        """A snapshot of what the client (and its views) did since it was made."""
        counters = self._session.counters
        limiter = self._session.limiter.stats
        cache = self._shared.cache
        return ClientStats(
            requests=counters.requests,
            responses=dict(sorted(counters.by_status.items())),
            transport_errors=counters.transport_errors,
            retries=counters.retries,
            throttled=limiter.throttled,
            limiter_waits=limiter.waits,
            limiter_wait_seconds=limiter.wait_seconds,
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            bytes_read=counters.bytes_read,
        )

    @overload
    async def resolve(self, ref: Ref[T]) -> T: ...
    @overload
    async def resolve(self, ref: str) -> Any: ...
    async def resolve(self, ref: Ref[Any] | str) -> Any:
        """The resource a Ref (or URL) names: cached, and fetched once however many ask.

        Tariffs, suppliers, EVSE sites and users decode to their models; any other resource
        to plain JSON data.  A URL on another origin than the client's is refused unsent.
        """
        return await self._ctx.resolve(ref, "ref")


class _View(Client):
    """`client.as_user(...)`: a Client over a context of its own, sharing everything else."""

    def __init__(self, context: _Context) -> None:
        self._bind(context, owner=False)


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
    if url.raw_user is not None or url.raw_password is not None:
        raise InvalidRequest("base_url", "must not carry userinfo (user:password@)")
    if url.query_string or url.fragment:
        raise InvalidRequest("base_url", "must not carry a query or fragment")
    return url.with_path(url.path.rstrip("/") or "/")


def _check_acting_user(user_id: object) -> str | None:
    if user_id is None:
        return None
    return v.check_id(user_id, v.USER_ID, "acting_user")
