"""``FakeEvEnergy``: a stateful local fake of the ev.energy v2 API on aiohttp.web.

::

    async with FakeEvEnergy(users=1000, tariffs=20, rate_limit=1000, rate_window=3600.0) as fake:
        fake.base_url        # "http://127.0.0.1:<port>/v2"
        fake.token           # static bearer token acting as the first seeded user ("me")
        fake.client_id, fake.client_secret   # client credentials for fake.token_url

Conventions (each detailed in the module that implements it):

- Endpoints: ``/v2/users`` (cursor pages, GET/POST), ``/v2/users/{user_id|me}`` (GET/PATCH),
  ``/v2/tariffs`` and ``/v2/suppliers`` (page-number pages, sorted by name) with their items,
  ``/v2/evse_sites`` (one page) with its items, ``/v2/vehicles`` and ``/v2/evses`` (cursor
  pages of every vehicle or EVSE, or of the ``EvEnergy-User``'s; EVSEs filter by ``cpid``)
  with their items, so every URL a response holds is served (``_devices``), and
  ``POST /o/token/`` (client credentials).
- Ids are a 4-letter prefix and a ULID whose time part encodes the resource's index, so ids are
  deterministic for a seed and sort in creation order (``_ids``, ``_data``).
- Users are generated lazily from their index: a million users cost nothing until served; writes
  go to an overlay. List pages are serialized once with msgspec and cached (bounded LRU keyed by the
  query and the acting user, dropped on every write; ``page_cache`` pages, 512 by default: raise it
  to hold a whole stream); after a users page is served, the page its ``next`` link names is
  rendered in the background, so a streaming client finds it cached.
- Writes accept JSON, urlencoded and multipart bodies (dotted keys for nested fields, empty value =
  null); a duplicate email is a 400 with ``field_errors["email"]``, not a 409 (``_payload``).
- Rate limit: one sliding log for the whole fake (every token and every ``EvEnergy-User`` share
  it). Each ``/v2`` request counts from its arrival for ``rate_window`` seconds, whatever its
  answer, except 429s and injected failures; the token endpoint is not limited. ``Retry-After``
  is the seconds until the oldest counted request leaves the window, rounded up, at least 1
  (``_ratelimit``, ``_app``).
- Faults (``fake.faults``) and statistics (``fake.stats``) are described in ``_faults``.
- ``on_exchange`` receives an :class:`Exchange` for every request; unset, it costs nothing.
- ``clock`` (default ``time.monotonic``) drives the rate-limit window and token expiry, so tests
  can move time by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from evenergy_async.testing._app import CACHE_SIZE, Api, Exchange
from evenergy_async.testing._data import UserStore, build_sites, build_suppliers, build_tariffs
from evenergy_async.testing._faults import FakeStats, Faults
from evenergy_async.testing._ratelimit import SlidingWindowLog
from evenergy_async.testing._render import World

DEFAULT_TOKEN_LIFETIME = 36000.0


class FakeEvEnergy:
    """A local ev.energy v2 API with seeded, mutable data, a rate limit and fault injection."""

    def __init__(
        self,
        *,
        users: int = 1000,
        tariffs: int = 20,
        suppliers: int = 5,
        evse_sites: int = 5,
        rate_limit: int = 1000,
        rate_window: float = 3600.0,
        token_lifetime: float = DEFAULT_TOKEN_LIFETIME,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        on_exchange: Callable[[Exchange], None] | None = None,
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",
        token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        page_cache: int = CACHE_SIZE,
    ) -> None:
        if min(users, tariffs, suppliers, evse_sites, page_cache) < 0:
            raise ValueError("counts must not be negative")
        supplier_records = build_suppliers(seed, suppliers)
        world = World(
            seed=seed,
            suppliers=supplier_records,
            tariffs=build_tariffs(seed, tariffs, supplier_records),
            sites=build_sites(seed, evse_sites),
        )
        self.host = host
        self.port = port
        self.seed = seed
        self.faults = Faults(seed=seed)
        self.stats = FakeStats()
        self._limiter = SlidingWindowLog(rate_limit, rate_window)
        self._store = UserStore(seed, users, tariffs, evse_sites)
        self._api = Api(
            world=world,
            store=self._store,
            limiter=self._limiter,
            faults=self.faults,
            stats=self.stats,
            clock=clock,
            static_token=token or f"fake-static-token-{seed}",
            client_id=client_id,
            client_secret=client_secret,
            token_lifetime=token_lifetime,
            on_exchange=on_exchange,
            page_cache=page_cache,
        )
        self._runner: web.AppRunner | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> FakeEvEnergy:
        """Bind and serve in the background; ``port=0`` picks a free port."""
        if self._runner is not None:
            return self
        runner = web.AppRunner(self._api.application(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self._api.bind(f"http://{_url_host(self.host)}:{self.port}")
        return self

    async def close(self) -> None:
        """Stop serving; open connections are closed."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled, then close."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def __aenter__(self) -> FakeEvEnergy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- addresses and credentials ---------------------------------------------------------

    @property
    def origin(self) -> str:
        """``http://host:port``; only known once started."""
        if not self._api.origin:
            raise RuntimeError("the fake is not started")
        return self._api.origin

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v2"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/o/token/"

    @property
    def token(self) -> str:
        """A static bearer token that never expires and acts as the first seeded user."""
        return self._api.static_token

    @property
    def client_id(self) -> str:
        return self._api.client_id

    @property
    def client_secret(self) -> str:
        return self._api.client_secret

    @property
    def token_lifetime(self) -> float:
        """Lifetime of tokens issued from now on, in seconds."""
        return self._api.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: float) -> None:
        self._api.token_lifetime = seconds

    def issue_token(self) -> str:
        """A client-credentials token, as the token endpoint would issue (counted in stats)."""
        return self._api.issue_token()

    def expire_tokens(self) -> None:
        """Make every issued client-credentials token invalid (the static token stays valid)."""
        self._api.tokens.clear()

    # --- rate limit ------------------------------------------------------------------------

    @property
    def rate_limit(self) -> int:
        return self._limiter.limit

    @rate_limit.setter
    def rate_limit(self, limit: int) -> None:
        self._limiter.limit = limit

    @property
    def rate_window(self) -> float:
        return self._limiter.window

    @rate_window.setter
    def rate_window(self, seconds: float) -> None:
        self._limiter.window = seconds

    def rate_limit_remaining(self) -> int:
        """Requests left in the current window."""
        return self._limiter.remaining(self._api.clock())

    def consume(self, n: int) -> int:
        """Spend ``n`` requests of the shared budget as another client would (no HTTP).

        Like real requests, those beyond the budget are refused and do not count; returns how
        many were counted.
        """
        return self._limiter.consume(n, self._api.clock())

    def reset_rate_limit(self) -> None:
        """Forget every counted request."""
        self._limiter.reset()

    # --- data ------------------------------------------------------------------------------

    @property
    def user_count(self) -> int:
        """Seeded plus created users."""
        return self._store.count

    def user_id(self, index: int) -> str:
        """The id of the ``index``-th user in id order (0 is the static token's "me")."""
        return self._store.id_of(self._index(index))

    def user_email(self, index: int) -> str:
        """The current email of the ``index``-th user."""
        return self._store.get(self._index(index)).email

    def tariff_id(self, index: int) -> str:
        return self._api.world.tariffs[index].id

    def supplier_id(self, index: int) -> str:
        return self._api.world.suppliers[index].id

    def evse_site_id(self, index: int) -> str:
        return self._api.world.sites[index].id

    def _index(self, index: int) -> int:
        if not 0 <= index < self._store.count:
            raise IndexError(index)
        return index


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
