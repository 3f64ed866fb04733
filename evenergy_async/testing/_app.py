"""The fake's HTTP layer: aiohttp.web handlers, the ``/v2`` middleware and the token endpoint.

What happens to a ``/v2`` request, in order:

1. an injected failure (``Faults.fail_next`` / ``Faults.error_rate``) answers at once; it is not
   counted against the rate limit;
2. the rate limit: when the budget is spent the answer is 429 (not counted); otherwise the request
   is counted now, whatever its outcome (401, 400, 404 and 405 answers count too);
3. routing (an unknown path is 404), authentication (401), ``EvEnergy-Version`` (400 unless
   absent or 2), ``Accept`` (406 unless JSON is acceptable), ``EvEnergy-User`` (400 unless it
   names an existing user), the method (405), then the handler;
4. every ``/v2`` answer carries ``EvEnergy-Version: 2``, ``X-RateLimit-Limit`` and
   ``X-RateLimit-Remaining`` (what is left after counting this request).

Errors are RFC 9457 ``application/problem+json``. Token errors follow RFC 6749 section 5.2
(``{"error": "invalid_client"}``), as OAuth servers answer them.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextvars
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from datetime import date, datetime, timezone
from urllib.parse import parse_qsl, unquote_plus, urlencode

import attrs
import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from evenergy_async.testing._data import TariffRecord, UserRecord, UserStore, now_iso
from evenergy_async.testing._devices import EVSE, VEHICLE, Devices, Owner, evse_id_of_cpid, page
from evenergy_async.testing._faults import FakeStats, Faults, InjectedFailure
from evenergy_async.testing._payload import (
    BodyError,
    UserChanges,
    ValidationFailed,
    Validator,
    apply_changes,
    decode_body,
    new_record,
)
from evenergy_async.testing._ratelimit import SlidingWindowLog
from evenergy_async.testing._render import (
    DEVICE_EXPANSIONS,
    TARIFF_EXPANSIONS,
    USER_EXPANSIONS,
    JSONDict,
    Renderer,
    UserExpand,
    World,
)

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
API_VERSION = "2"
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
MAX_PAGE_NUMBER = (
    2**31 - 1
)  # beyond it a page number is malformed (400), below it maybe absent (404)
CACHE_SIZE = 512
SCOPES = "user:read user:write tariff:read tariff:prices:read site:read"
_dumps = msgspec.json.Encoder().encode
_CURSOR = re.compile(r"[a-z]{4}[A-Z0-9]{26}")
_USER_ID = re.compile(r"user[A-Z0-9]{26}")
_VERSION_2 = re.compile(r"0*2(\.0*)?", re.ASCII)
_ACCEPTABLE = frozenset({"*/*", "application/*", JSON, PROBLEM_JSON})
_UNMATCHED = "<unmatched>"


@attrs.frozen
class Exchange:
    """One request and its answer, as handed to ``on_exchange``.

    ``status`` is None when the connection was cut instead of answered. ``fault`` names the
    injected fault that shaped the answer, if any: ``"fail_next"`` or ``"error_rate"`` (an
    injected failure), ``"garbage"`` (a replaced body) or ``"cut"``.
    """

    method: str
    url: str
    request_headers: Mapping[str, str]
    request_body: bytes
    status: int | None
    response_headers: Mapping[str, str]
    response_body: bytes
    fault: str | None = None


class Problem(Exception):
    """An RFC 9457 problem answer; raised by handlers, rendered by the middleware."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: str | None = None,
        instance: str | None = None,
        field_errors: Mapping[str, list[str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.instance = instance
        self.field_errors = field_errors
        self.headers = dict(headers or {})

    def document(self, origin: str) -> JSONDict:
        doc: JSONDict = {}
        if self.slug:
            doc["type"] = f"{origin}/v2/problems/{self.slug}/"
        doc.update(title=self.title, status=self.status, detail=self.detail)
        if self.instance:
            doc["instance"] = self.instance
        if self.field_errors is not None:
            doc["field_errors"] = dict(self.field_errors)
        return doc


def pagination_problem(name: str, message: str) -> Problem:
    return Problem(
        400,
        "Invalid pagination parameter",
        f"Invalid value for pagination parameter: {name}",
        slug="pagination-parameters",
        field_errors={name: [message]},
    )


def query_problem(name: str, message: str) -> Problem:
    return Problem(
        400,
        "Invalid query parameter",
        f"Invalid value for query parameter: {name}",
        slug="invalid-query-parameter",
        field_errors={name: [message]},
    )


def link_header(previous: str | None, next_: str | None) -> str:
    """RFC 8288 Link with both relations; ``about:blank`` where there is no such page."""
    return f'<{previous or "about:blank"}>; rel="previous", <{next_ or "about:blank"}>; rel="next"'


@attrs.frozen
class UserQuery:
    """A users list request, normalised: the cache key of its page."""

    size: int
    expand: tuple[str, ...]
    email: str | None
    after: str | None
    before: str | None
    acting: int | None

    def params(self, before: str | None = None) -> list[tuple[str, object]]:
        """Query parameters of this page's link (or of the page before ``before``)."""
        params: list[tuple[str, object]] = [("page_size", self.size)]
        params += [("expand", name) for name in self.expand]
        if self.email is not None:
            params.append(("email", self.email))
        if before is not None:
            params.append(("page_before", before))
        elif self.after is not None:
            params.append(("page_after", self.after))
        return params


@attrs.define
class RequestState:
    """What the middleware learnt about the request being handled (one per request task)."""

    principal: int | None = None  # the user a token acts for; None for client credentials
    acting: int | None = None  # EvEnergy-User, else the principal
    cut: bool = False  # drop the connection instead of answering
    fault: str | None = None  # the injected fault that shaped the answer


_STATE: contextvars.ContextVar[RequestState] = contextvars.ContextVar("fake_request_state")


def state() -> RequestState:
    return _STATE.get()


@attrs.frozen
class CachedPage:
    body: bytes
    link: str
    next_query: UserQuery | None = None


class Api:
    """State and handlers of one fake server."""

    def __init__(
        self,
        *,
        world: World,
        store: UserStore,
        limiter: SlidingWindowLog,
        faults: Faults,
        stats: FakeStats,
        clock: Callable[[], float],
        static_token: str,
        client_id: str,
        client_secret: str,
        token_lifetime: float,
        on_exchange: Callable[[Exchange], None] | None,
        page_cache: int = CACHE_SIZE,
    ) -> None:
        self.world = world
        self.store = store
        self.limiter = limiter
        self.faults = faults
        self.stats = stats
        self.clock = clock
        self.static_token = static_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.on_exchange = on_exchange
        self.page_cache = page_cache
        self.tokens: dict[str, float] = {}  # client-credentials token -> expiry (clock time)
        self.origin = ""
        self.renderer = Renderer(world, "/v2")
        self._tariff_ids = {t.id: t.index for t in world.tariffs}
        self._supplier_ids = {s.id: s.index for s in world.suppliers}
        self._site_ids = {s.id: s.index for s in world.sites}
        self._tariffs_by_name = sorted(world.tariffs, key=lambda t: (t.name, t.id))
        self._suppliers_by_name = sorted(world.suppliers, key=lambda s: (s.name, s.id))
        self._cache: OrderedDict[Hashable, CachedPage] = OrderedDict()
        self._cache_version = -1
        self.validator = Validator(self._resolve_tariff, self._resolve_site)
        self.vehicles = Devices(store, VEHICLE)
        self.evses = Devices(store, EVSE, world.sites)

    def bind(self, origin: str) -> None:
        """Set the origin (``http://host:port``) every URL is built on."""
        self.origin = origin
        self.renderer = Renderer(self.world, f"{origin}/v2")
        self._cache.clear()

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_post("/o/token/", self.token)
        app.router.add_get("/v2/users", self.list_users)
        app.router.add_post("/v2/users", self.create_user)
        app.router.add_get("/v2/users/{user_id}", self.get_user)
        app.router.add_patch("/v2/users/{user_id}", self.patch_user)
        app.router.add_get("/v2/tariffs", self.list_tariffs)
        app.router.add_get("/v2/tariffs/{tariff_id}", self.get_tariff)
        app.router.add_get("/v2/suppliers", self.list_suppliers)
        app.router.add_get("/v2/suppliers/{supplier_id}", self.get_supplier)
        app.router.add_get("/v2/evse_sites", self.list_sites)
        app.router.add_get("/v2/evse_sites/{evse_site_id}", self.get_site)
        app.router.add_get("/v2/vehicles", self.list_vehicles)
        app.router.add_get("/v2/vehicles/{vehicle_id}", self.get_vehicle)
        app.router.add_get("/v2/evses", self.list_evses)
        app.router.add_get("/v2/evses/{evse_id}", self.get_evse)
        return app

    # --- middleware ------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else _UNMATCHED
        self.stats.requests[(request.method, route)] += 1
        is_api = request.path == "/v2" or request.path.startswith("/v2/")
        current = RequestState()
        _STATE.set(current)
        response = await (self._api(request, handler) if is_api else self._other(request, handler))
        if self.faults.latency > 0:
            self.stats.faults["latency"] += 1
            await asyncio.sleep(self.faults.latency)
        cut = current.cut
        self.stats.statuses[0 if cut else response.status] += 1
        if self.on_exchange is not None:
            await self._record(request, response, current)
        if cut and request.transport is not None:
            request.transport.abort()
        return response

    async def _other(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as error:
            response = self._problem_response(self._http_problem(request, error))
        response.headers["EvEnergy-Version"] = API_VERSION
        return response

    async def _api(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        failure = self.faults.take_failure()
        if failure is not None:
            return self._injected(failure)
        response: web.StreamResponse
        now = self.clock()
        if not self.limiter.try_acquire(now):
            self.stats.rate_limited += 1
            response = self._problem_response(self._rate_limited(now))
            remaining = 0
        else:
            remaining = self.limiter.remaining(now)
            try:
                response = await self._dispatch(request, handler)
            except Problem as problem:
                response = self._problem_response(problem)
            except web.HTTPException as error:
                response = self._problem_response(self._http_problem(request, error))
        self._add_api_headers(response, remaining)
        garbage = self.faults.take_garbage()
        if garbage is not None and isinstance(response, web.Response):
            self.stats.faults["garbage"] += 1
            state().fault = "garbage"
            response.body = garbage.body
            response.content_type = garbage.content_type
        return response

    def _add_api_headers(self, response: web.StreamResponse, remaining: int) -> None:
        headers = response.headers
        headers["EvEnergy-Version"] = API_VERSION
        headers["X-RateLimit-Limit"] = str(self.limiter.limit)
        headers["X-RateLimit-Remaining"] = str(remaining)

    async def _dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        error = request.match_info.http_exception
        if isinstance(error, web.HTTPNotFound):
            raise error
        current = state()
        current.principal = self._authenticate(request)
        self._check_version(request)
        self._check_accept(request)
        current.acting = self._acting_user(request)
        return await handler(request)

    async def _record(
        self, request: web.Request, response: web.StreamResponse, current: RequestState
    ) -> None:
        assert self.on_exchange is not None
        body = response.body if isinstance(response, web.Response) else b""
        self.on_exchange(
            Exchange(
                method=request.method,
                url=str(request.url),
                request_headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                request_body=await request.read() if request.body_exists else b"",
                status=None if current.cut else response.status,
                response_headers=CIMultiDictProxy(CIMultiDict(response.headers)),
                response_body=body if isinstance(body, bytes) else b"",
                fault=current.fault,
            )
        )

    # --- problems --------------------------------------------------------------------------

    def _problem_response(self, problem: Problem) -> web.Response:
        response = web.Response(
            status=problem.status,
            body=_dumps(problem.document(self.origin)),
            content_type=PROBLEM_JSON,
        )
        response.headers.update(problem.headers)
        return response

    def _http_problem(self, request: web.Request, error: web.HTTPException) -> Problem:
        if isinstance(error, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(error.allowed_methods))
            return Problem(
                405,
                "Method Not Allowed",
                f'Method "{request.method}" not allowed.',
                headers={"Allow": allowed},
            )
        if isinstance(error, web.HTTPNotFound):
            return self._not_found(str(request.url))
        if isinstance(error, web.HTTPRequestEntityTooLarge):
            return Problem(413, "Request Entity Too Large", "The request body is too large.")
        return Problem(error.status, error.reason, error.text or error.reason)

    def _not_found(self, instance: str) -> Problem:
        return Problem(
            404, "Not found", "Resource does not exist or cannot be accessed.", instance=instance
        )

    def _rate_limited(self, now: float) -> Problem:
        wait = self.limiter.retry_after(now)
        return Problem(
            429,
            "Too Many Requests",
            f"Request was rate limited. Try again in {wait} seconds",
            slug="rate-limit-exceeded",
            headers={"Retry-After": str(wait)},
        )

    def _injected(self, failure: InjectedFailure) -> web.Response:
        self.stats.faults[failure.kind] += 1
        state().fault = failure.kind
        headers: dict[str, str] = {}
        if failure.retry_after is not None:
            headers["Retry-After"] = _seconds(failure.retry_after)
        if failure.problem:
            response = self._problem_response(
                Problem(
                    failure.status,
                    "Service Unavailable" if failure.status == 503 else "Injected failure",
                    "The service is temporarily unavailable. Try again later.",
                    slug="service-unavailable" if failure.status == 503 else "injected-failure",
                    headers=headers,
                )
            )
        else:
            response = web.Response(
                status=failure.status, text=f"{failure.status} upstream error", headers=headers
            )
        self._add_api_headers(response, self.limiter.remaining(self.clock()))
        return response

    # --- request checks --------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> int | None:
        """The user index the token acts for (None: a client-credentials token)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Problem(
                401,
                "Unauthorized",
                "Authentication credentials were not provided.",
                headers={"WWW-Authenticate": 'Bearer realm="api"'},
            )
        if token == self.static_token:
            return 0
        expiry = self.tokens.get(token)
        if expiry is None or expiry <= self.clock():
            self.tokens.pop(token, None)
            raise Problem(
                401,
                "Unauthorized",
                "Invalid or expired access token.",
                headers={"WWW-Authenticate": 'Bearer realm="api", error="invalid_token"'},
            )
        return None

    def _check_version(self, request: web.Request) -> None:
        version = request.headers.get("EvEnergy-Version")
        if version is None or version.strip() == API_VERSION:
            return
        if not _VERSION_2.fullmatch(version.strip()):  # ASCII only: float() takes "٢" too
            raise Problem(
                400,
                "Unsupported version",
                f"Unsupported version requested: {version}",
                slug="pagination-parameters",  # sic: the spec's ProblemUnsupportedVersion example
            )

    def _check_accept(self, request: web.Request) -> None:
        accept = request.headers.get("Accept", "").strip()
        if not accept:
            return
        ranges = {part.partition(";")[0].strip().lower() for part in accept.split(",")}
        if not ranges & _ACCEPTABLE:
            raise Problem(406, "Not Acceptable", "Could not satisfy the request Accept header.")

    def _acting_user(self, request: web.Request) -> int | None:
        """``EvEnergy-User`` when sent (it must name a user), else the token's own user."""
        header = request.headers.get("EvEnergy-User")
        if header is None:
            return state().principal
        header = header.strip()
        index = self.store.index_of(header) if _USER_ID.fullmatch(header) else None
        if index is None:
            raise Problem(
                400,
                "Invalid EvEnergy-User header",
                f"EvEnergy-User does not name an existing user: {header!r}",
                slug="invalid-user-header",
                field_errors={"EvEnergy-User": ["No such user."]},
            )
        return index

    # --- token endpoint --------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        """OAuth 2 client credentials (RFC 6749 section 4.4); client auth by Basic or form."""
        body = await request.read()
        form = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        client_id, client_secret = _basic_credentials(request.headers.get("Authorization", ""))
        if client_id is None:
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if (client_id, client_secret) != (self.client_id, self.client_secret):
            return _oauth_error(401, "invalid_client", "Client authentication failed.")
        grant = form.get("grant_type")
        if grant is None:
            return _oauth_error(400, "invalid_request", "Missing grant_type.")
        if grant != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", f"Unsupported grant: {grant}.")
        return self._issue_token()

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.clock() + self.token_lifetime
        self.stats.token_fetches += 1
        return token

    def _issue_token(self) -> web.Response:
        token = self.issue_token()
        document = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(self.token_lifetime),
            "scope": SCOPES,
        }
        return web.Response(
            body=_dumps(document),
            content_type=JSON,
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    # --- helpers ---------------------------------------------------------------------------

    def _json(self, document: object, status: int = 200) -> web.Response:
        return web.Response(status=status, body=_dumps(document), content_type=JSON)

    def _page(self, page: CachedPage) -> web.Response:
        return web.Response(body=page.body, content_type=JSON, headers={"Link": page.link})

    def _cached(self, key: Hashable) -> CachedPage | None:
        if self._cache_version != self.store.version:
            self._cache.clear()
            self._cache_version = self.store.version
        page = self._cache.get(key)
        if page is not None:
            self._cache.move_to_end(key)
        return page

    def _remember(self, key: Hashable, page: CachedPage) -> CachedPage:
        self._cache[key] = page
        if len(self._cache) > self.page_cache:
            self._cache.popitem(last=False)
        return page

    def _acting_record(self) -> UserRecord | None:
        acting = state().acting
        return None if acting is None or acting >= self.store.count else self.store.get(acting)

    def _url(self, path: str, params: Sequence[tuple[str, object]]) -> str:
        return f"{self.origin}{path}?{urlencode(params)}"

    def _resolve_tariff(self, url: str) -> int | None:
        prefix = f"{self.renderer.base}/tariffs/"
        return self._tariff_ids.get(url[len(prefix) :]) if url.startswith(prefix) else None

    def _resolve_site(self, url: str) -> int | None:
        prefix = f"{self.renderer.base}/evse_sites/"
        return self._site_ids.get(url[len(prefix) :]) if url.startswith(prefix) else None

    # --- users -----------------------------------------------------------------------------

    async def list_users(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        after = _cursor(query, "page_after")
        email = query.get("email")
        if email is not None and "@" not in email:
            raise query_problem("email", "Enter a valid email address.")
        wanted = UserQuery(
            size=_page_size(query),
            expand=tuple(_expansions(query, USER_EXPANSIONS)),
            email=email,
            after=after,
            before=None if after is not None else _cursor(query, "page_before"),
            acting=state().acting,
        )
        page = self._cached(wanted)
        if page is None:
            page = self._remember(wanted, self._users_page(wanted))
        if page.next_query is not None:
            asyncio.get_running_loop().call_soon(self._prefetch, page.next_query)
        return self._page(page)

    def _prefetch(self, wanted: UserQuery) -> None:
        """Render the page a streaming client will ask for next while it reads this one."""
        if self._cached(wanted) is None:
            self._remember(wanted, self._users_page(wanted))

    def _users_page(self, q: UserQuery) -> CachedPage:
        store = self.store
        indexes: Sequence[int]
        if q.email is None:
            indexes = range(store.count)
            start, end = _cursor_window(
                store.count, store.position_after, store.position_before, q.after, q.before, q.size
            )
        else:
            found = store.find_email(q.email)
            indexes = [] if found is None else [found]
            ids = [store.id_of(i) for i in indexes]
            start, end = _cursor_window(
                len(ids),
                lambda c: bisect.bisect_right(ids, c),
                lambda c: bisect.bisect_left(ids, c),
                q.after,
                q.before,
                q.size,
            )
        chosen = UserExpand.from_names(q.expand)
        acting: UserRecord | None = None  # only an expanded site's user_connected needs it
        if chosen.evse_site and q.acting is not None and q.acting < store.count:
            acting = store.get(q.acting)
        render = self.renderer.user
        users = []
        for index in indexes[start:end]:
            user_id, record = store.entry(index)
            users.append(render(user_id, record, chosen, acting))
        previous = next_ = None
        next_query = None
        if users and start > 0:
            previous = self._url("/v2/users", q.params(before=str(users[0]["id"])))
        if users and end < len(indexes):
            next_query = attrs.evolve(q, after=str(users[-1]["id"]), before=None)
            next_ = self._url("/v2/users", next_query.params())
        return CachedPage(_dumps(users), link_header(previous, next_), next_query)

    def _user_index(self, request: web.Request) -> int:
        user_id = request.match_info["user_id"]
        if user_id == "me":
            acting = state().acting
            if acting is None:
                raise Problem(
                    400,
                    "Missing user",
                    "A client-credentials token must name the user in the EvEnergy-User header.",
                    slug="user-required",
                )
            if acting >= self.store.count:  # users=0: the static token's user does not exist yet
                raise self._not_found(str(request.url.with_query(None)))
            return acting
        index = self.store.index_of(user_id)
        if index is None:
            raise self._not_found(str(request.url.with_query(None)))
        return index

    def _user_response(self, index: int, expand: list[str], status: int = 200) -> web.Response:
        user_id, record = self.store.entry(index)
        now = datetime.now(timezone.utc)
        document = self.renderer.user(
            user_id,
            record,
            UserExpand.from_names(expand),
            self._acting_record(),
            detail=True,
            carbon=self.renderer.carbon_intensity(index, record.location, now),
        )
        return self._json(document, status)

    async def get_user(self, request: web.Request) -> web.Response:
        expand = _expansions(request.rel_url.query, USER_EXPANSIONS)
        return self._user_response(self._user_index(request), expand)

    async def create_user(self, request: web.Request) -> web.Response:
        changes = await self._read_user_changes(request, creating=True)
        self._check_unique(changes, None)
        index = self.store.create(new_record(changes, now_iso()))
        self._maybe_cut()
        response = self._user_response(index, [], status=201)
        response.headers["Location"] = self.renderer.user_url(self.store.id_of(index))
        return response

    async def patch_user(self, request: web.Request) -> web.Response:
        expand = _expansions(request.rel_url.query, USER_EXPANSIONS)
        index = self._user_index(request)
        try:
            changes = await self._read_user_changes(request, creating=False)
            self._check_unique(changes, index)
        except Problem as problem:
            problem.instance = self.renderer.user_url(self.store.id_of(index))
            raise
        self.store.replace(index, apply_changes(self.store.get(index), changes))
        self._maybe_cut()
        return self._user_response(index, expand)

    async def _read_user_changes(self, request: web.Request, *, creating: bool) -> UserChanges:
        body = await request.read()
        try:
            payload, form = decode_body(request.headers.get("Content-Type", ""), body)
            return self.validator.user(payload, creating=creating, form=form)
        except BodyError as error:
            raise Problem(400, error.title, error.detail, slug=error.slug) from None
        except ValidationFailed as failed:
            raise _validation_problem(failed.errors) from None

    def _check_unique(self, changes: UserChanges, index: int | None) -> None:
        if changes.email is None:
            return
        owner = self.store.find_email(changes.email)
        if owner is not None and owner != index:
            raise _validation_problem({"email": ["user with this email already exists."]})

    def _maybe_cut(self) -> None:
        if self.faults.take_cut():
            self.stats.faults["cut"] += 1
            current = state()
            current.cut = True
            current.fault = "cut"

    # --- tariffs and suppliers -------------------------------------------------------------

    async def list_tariffs(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        page_number, size = _page_number(query), _page_size(query)
        expand = _expansions(query, TARIFF_EXPANSIONS)
        include = query.get("include_optional")
        if include is not None and include != "daily_prices":
            raise query_problem("include_optional", f'"{include}" is not a valid choice.')
        today = datetime.now(timezone.utc).date()
        tariffs = self._filter_tariffs(query, today)
        key = ("tariffs", request.query_string, today)
        page = self._cached(key)
        if page is None:
            chosen = set(expand)
            items = [
                self.renderer.tariff(
                    t.index, supplier="supplier" in chosen, scheduler="scheduler_tariff" in chosen
                )
                for t in tariffs
            ]
            kept = _kept_params(
                query, ("expand", "supplier_id", "valid", "gsp_group", "available_for_user_id")
            )
            page = self._remember(key, self._numbered_page(request, items, page_number, size, kept))
        return self._page(page)

    def _filter_tariffs(self, query: MultiMapping[str], today: date) -> list[TariffRecord]:
        tariffs = self._tariffs_by_name
        supplier_id = query.get("supplier_id")
        if supplier_id is not None:
            supplier = self._supplier_ids.get(supplier_id)
            tariffs = [t for t in tariffs if t.supplier == supplier]
        valid = query.get("valid")
        if valid is not None:
            wanted = _boolean(valid, "valid")
            tariffs = [t for t in tariffs if t.is_valid_on(today) is wanted]
        gsp_group = query.get("gsp_group")
        if gsp_group is not None:
            tariffs = [t for t in tariffs if t.gsp_group == gsp_group]
        user_id = query.get("available_for_user_id")
        if user_id is not None:
            groups = self._user_gsp_groups(user_id)
            tariffs = [t for t in tariffs if t.gsp_group in groups]
        return tariffs

    def _user_gsp_groups(self, user_id: str) -> set[str | None]:
        """Regions whose tariffs a user may pick: national ones plus their current tariff's."""
        index = self.store.index_of(user_id) if _USER_ID.fullmatch(user_id) else None
        if index is None:
            raise query_problem("available_for_user_id", "No such user.")
        tariff = self.store.get(index).location.tariff
        groups: set[str | None] = {None}
        if tariff is not None:
            groups.add(self.world.tariffs[tariff].gsp_group)
        return groups

    def _numbered_page(
        self,
        request: web.Request,
        items: list[JSONDict],
        page_number: int,
        size: int,
        kept: list[tuple[str, str]],
    ) -> CachedPage:
        pages = max(1, math.ceil(len(items) / size))
        if page_number > pages:
            raise Problem(404, "Not found", "Invalid page.", instance=str(request.url))
        start = (page_number - 1) * size
        previous = next_ = None
        if page_number > 1:
            previous = self._url(
                request.path, [("page", page_number - 1), ("page_size", size), *kept]
            )
        if page_number < pages:
            next_ = self._url(request.path, [("page", page_number + 1), ("page_size", size), *kept])
        body = _dumps(items[start : start + size])
        return CachedPage(body, link_header(previous, next_))

    async def get_tariff(self, request: web.Request) -> web.Response:
        expand = _expansions(request.rel_url.query, TARIFF_EXPANSIONS)
        index = self._tariff_ids.get(request.match_info["tariff_id"])
        if index is None:
            raise self._not_found(str(request.url.with_query(None)))
        now = datetime.now(timezone.utc)
        return self._json(self.renderer.tariff_detail(index, frozenset(expand), now))

    async def list_suppliers(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        page_number, size = _page_number(query), _page_size(query)
        suppliers = self._suppliers_by_name
        user_id = query.get("available_for_user_id")
        if user_id is not None:
            groups = self._user_gsp_groups(user_id)
            offered = {t.supplier for t in self.world.tariffs if t.gsp_group in groups}
            suppliers = [s for s in suppliers if s.index in offered]
        key = ("suppliers", request.query_string)
        page = self._cached(key)
        if page is None:
            items = [self.renderer.supplier(s.index) for s in suppliers]
            kept = _kept_params(query, ("available_for_user_id",))
            page = self._remember(key, self._numbered_page(request, items, page_number, size, kept))
        return self._page(page)

    async def get_supplier(self, request: web.Request) -> web.Response:
        index = self._supplier_ids.get(request.match_info["supplier_id"])
        if index is None:
            raise self._not_found(str(request.url.with_query(None)))
        return self._json(self.renderer.supplier(index))

    # --- EVSE sites ------------------------------------------------------------------------

    async def list_sites(self, request: web.Request) -> web.Response:
        acting = self._acting_record()
        items = [self.renderer.site(site.index, acting) for site in self.world.sites]
        response = self._json(items)
        response.headers["Link"] = link_header(None, None)
        return response

    async def get_site(self, request: web.Request) -> web.Response:
        index = self._site_ids.get(request.match_info["evse_site_id"])
        if index is None:
            raise self._not_found(str(request.url.with_query(None)))
        return self._json(self.renderer.site(index, self._acting_record()))

    # --- vehicles and EVSEs ----------------------------------------------------------------

    async def list_vehicles(self, request: web.Request) -> web.Response:
        return self._device_list(request, self.vehicles)

    async def list_evses(self, request: web.Request) -> web.Response:
        return self._device_list(request, self.evses)

    async def get_vehicle(self, request: web.Request) -> web.Response:
        return self._device(request, self.vehicles, request.match_info["vehicle_id"])

    async def get_evse(self, request: web.Request) -> web.Response:
        return self._device(request, self.evses, request.match_info["evse_id"])

    def _device(self, request: web.Request, devices: Devices, device_id: str) -> web.Response:
        expand = _expansions(request.rel_url.query, DEVICE_EXPANSIONS)
        owner = devices.find(device_id)
        if owner is None:
            raise self._not_found(str(request.url.with_query(None)))
        return self._json(self._render_device(devices, device_id, owner, "user" in expand))

    def _device_list(self, request: web.Request, devices: Devices) -> web.Response:
        """Every device, or only those of the user ``EvEnergy-User`` names, in id order."""
        query = request.rel_url.query
        size = _page_size(query)
        expand = _expansions(query, DEVICE_EXPANSIONS)
        after = _cursor(query, "page_after", devices.prefix)
        before = None if after is not None else _cursor(query, "page_before", devices.prefix)
        only: list[str] | None = None
        acting = state().acting
        if "EvEnergy-User" in request.headers and acting is not None:
            only = devices.owned_by(acting)
        kept = ["expand"]
        if devices.prefix == EVSE and "cpid" in query:
            kept.append("cpid")
            wanted = evse_id_of_cpid(query["cpid"])
            exists = wanted is not None and devices.find(wanted) is not None
            only = [wanted] if wanted and exists and (only is None or wanted in only) else []
        found = page(devices, size, after, before, only)
        items = []
        for device_id in found.ids:
            owner = devices.find(device_id)
            assert owner is not None  # listed ids exist
            items.append(self._render_device(devices, device_id, owner, "user" in expand))
        params: list[tuple[str, object]] = [("page_size", size), *_kept_params(query, kept)]
        previous = next_ = None
        if found.has_previous:
            previous = self._url(request.path, [*params, ("page_before", found.ids[0])])
        if found.has_next:
            next_ = self._url(request.path, [*params, ("page_after", found.ids[-1])])
        response = self._json(items)
        response.headers["Link"] = link_header(previous, next_)
        return response

    def _render_device(
        self, devices: Devices, device_id: str, owner: Owner, expand_user: bool
    ) -> JSONDict:
        user: object = None
        coordinates = None
        if not owner.site:
            user_id, record = self.store.entry(owner.index)
            coordinates = record.location.coordinates
            user = (
                self.renderer.user(user_id, record, UserExpand(), self._acting_record())
                if expand_user
                else self.renderer.user_url(user_id)
            )
        if devices.prefix == VEHICLE:
            return self.renderer.vehicle(device_id, owner, user)
        return self.renderer.evse(device_id, owner, user, coordinates)


# --- query parsing ---------------------------------------------------------------------------


def _ascii_int(raw: str, largest: int) -> int | None:
    """``raw`` as an integer in [0, largest] if it is ASCII digits only, else None.

    ``str.isdigit`` alone accepts ``²`` and other Unicode digits that ``int`` refuses, and
    ``int`` refuses over 4300 digits: both once made a 500 here.
    """
    if not (raw.isascii() and raw.isdigit()) or len(raw.lstrip("0")) > len(str(largest)):
        return None
    value = int(raw)
    return value if value <= largest else None


def _page_size(query: MultiMapping[str]) -> int:
    raw = query.get("page_size")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    size = _ascii_int(raw, MAX_PAGE_SIZE)
    if size is None or size < 1:
        raise pagination_problem(
            "page_size", f"Ensure this value is an integer between 1 and {MAX_PAGE_SIZE}."
        )
    return size


def _page_number(query: MultiMapping[str]) -> int:
    raw = query.get("page")
    if raw is None:
        return 1
    number = _ascii_int(raw, MAX_PAGE_NUMBER)
    if number is None or number < 1:
        raise pagination_problem(
            "page", f"Ensure this value is an integer between 1 and {MAX_PAGE_NUMBER}."
        )
    return number


def _cursor(query: MultiMapping[str], name: str, prefix: str = "user") -> str | None:
    """A cursor: an id of the listed collection (its 4-letter prefix and a ULID)."""
    raw = query.get(name)
    if raw is None:
        return None
    if not _CURSOR.fullmatch(raw) or not raw.startswith(prefix):
        raise pagination_problem(name, f"Ensure this value is an id starting with {prefix!r}.")
    return raw


def _expansions(query: MultiMapping[str], allowed: Iterable[str]) -> list[str]:
    """``expand`` values in order, without repeats; repeated and comma-separated forms both work."""
    allowed = tuple(allowed)
    chosen: list[str] = []
    for raw in query.getall("expand", []):
        for name in (part.strip() for part in raw.split(",")):
            if not name or name in chosen:
                continue
            if name not in allowed:
                raise Problem(
                    400,
                    "Invalid expand parameter",
                    f"Cannot expand {name!r}; expandable: {', '.join(allowed)}.",
                    slug="invalid-expand",
                    field_errors={"expand": [f'"{name}" is not a valid choice.']},
                )
            chosen.append(name)
    return chosen


def _boolean(raw: str, name: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise query_problem(name, "Must be a valid boolean.")


def _kept_params(query: MultiMapping[str], names: Iterable[str]) -> list[tuple[str, str]]:
    kept = set(names)
    return [(name, value) for name, value in query.items() if name in kept]


def _cursor_window(
    count: int,
    position_after: Callable[[str], int],
    position_before: Callable[[str], int],
    after: str | None,
    before: str | None,
    size: int,
) -> tuple[int, int]:
    """[start, end) of a cursor page: after a cursor, before it, or from the start."""
    if after is not None:
        start = position_after(after)
        return start, min(count, start + size)
    if before is not None:
        end = position_before(before)
        return max(0, end - size), end
    return 0, min(count, size)


def _validation_problem(errors: Mapping[str, list[str]]) -> Problem:
    return Problem(
        400,
        "Request failed validation.",
        f"Error on fields: {', '.join(errors)}",
        slug="validation-failed",
        field_errors=errors,
    )


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text
        return None, None
    client_id, _, secret = decoded.partition(":")
    return unquote_plus(client_id), unquote_plus(secret)


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="oauth"'
    return web.Response(
        status=status,
        body=_dumps({"error": error, "error_description": description}),
        content_type=JSON,
        headers=headers,
    )


def _seconds(value: float) -> str:
    """A Retry-After value as asked for: whole seconds when whole, else as given (e.g. 0.4)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
