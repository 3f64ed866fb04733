"""The API's resources as frozen, slotted attrs classes. No I/O, no wire rules.

Field names are the API's.  A field the server did not send is `UNSET`; `None` is the API's
null.  Decoding and encoding live in `_convert` (responses) and `_validate` (requests).
Relations given by URL are `Ref`s; with ``expand=`` they arrive resolved.
"""

from __future__ import annotations

import abc
import operator
from collections.abc import Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeAlias, TypeVar

import attrs
import msgspec
from msgspec import UNSET, UnsetType

from ._countries import COUNTRY_CODES
from .refs import Ref, ref_to

if TYPE_CHECKING:
    from .errors import EvEnergyError

__all__ = [
    "UNSET",
    "AwareDatetime",
    "CountryCode",
    "EVSESite",
    "LatLong",
    "Location",
    "Page",
    "Price",
    "Prices",
    "RateLimit",
    "Supplier",
    "SyncAction",
    "SyncOutcome",
    "Tariff",
    "TariffPath",
    "TariffType",
    "UnsetType",
    "User",
    "UserPath",
]

T = TypeVar("T")


# `UNSET` (msgspec's) is a field not sent in a response, "leave unchanged" in a request.  It is
# falsy for type checkers too (``__bool__`` is typed ``Literal[False]``), so one `if` narrows
# ``str | UnsetType`` to ``str``; msgspec leaves it out when encoding.

# Types the decoder checks but type checkers see as the plain type: a country code is a
# `str` to a checker and one of the spec's 249 codes to the decoder; a date-time must carry
# a UTC offset (RFC 3339).
if TYPE_CHECKING:
    CountryCode: TypeAlias = str
else:
    CountryCode = Literal[tuple(sorted(COUNTRY_CODES))]
AwareDatetime: TypeAlias = Annotated[datetime, msgspec.Meta(tz=True)]

# The relations `expand=` (server-side) and `resolve=` (client-side) may name, as types an
# editor completes and a checker verifies.
UserPath = Literal[
    "default_location.tariff", "default_location.tariff.supplier", "default_location.evse_site"
]
TariffPath = Literal["supplier", "scheduler_tariff", "prices"]

# A relation field reads ``RefTo[Tariff]``: to a type checker that is ``Ref[Tariff]``; to the
# decoder it is `ref_to(Tariff)`, a plain subclass of Ref, which msgspec checks faster.
if TYPE_CHECKING:
    RefTo = Ref
else:

    class RefTo:
        def __class_getitem__(cls, target: Any) -> type[Ref[Any]]:
            return ref_to(target)


TariffType = Literal[
    "FLAT_RATE", "DUAL_RATE", "THREE_RATE", "DYNAMIC", "EXTERNALLY_MANAGED", "OTHER"
]


@attrs.frozen
class LatLong:
    latitude: float
    longitude: float


@attrs.frozen(kw_only=True)
class Location:
    """A charging location.  Built by a caller, unset fields are left out of the request.

    `current_carbon_intensity_grams_per_kilowatt_hour` is served for a single user only
    (the spec's LocationDetail); lists leave it `UNSET`.
    """

    address_1: str | UnsetType | None = UNSET
    address_2: str | UnsetType | None = UNSET
    postal_code: str | UnsetType | None = UNSET
    country_code: CountryCode | UnsetType | None = UNSET
    coordinates: LatLong | UnsetType | None = UNSET
    tariff: RefTo[Tariff] | UnsetType | None = UNSET
    city: str | UnsetType | None = UNSET
    state: str | UnsetType | None = UNSET
    evse_site: RefTo[EVSESite] | UnsetType | None = UNSET
    current_carbon_intensity_grams_per_kilowatt_hour: int | UnsetType | None = UNSET


def preset_unset_on_decode(cls: type[Any], field: str) -> None:
    """Have msgspec, and only msgspec, set `field` of each `cls` it decodes to UNSET first.

    msgspec fills a field the JSON left out only after asking the object for it, which raises
    (and builds) an AttributeError each time: for a field responses usually leave out, setting
    it first, in C, is cheaper.  attrs' __init__ was made with the class, so it is unaffected.
    """
    setattr(cls, "_preset", object.__setattr__)  # noqa: B010 (bypasses the frozen check)
    setattr(cls, "__attrs_pre_init__", operator.methodcaller("_preset", field, UNSET))  # noqa: B010


# Lists never send it.
preset_unset_on_decode(Location, "current_carbon_intensity_grams_per_kilowatt_hour")


@attrs.frozen(kw_only=True)
class User:
    id: str
    url: str
    email: str | UnsetType = UNSET
    full_name: str | UnsetType = UNSET
    joined_at: AwareDatetime | UnsetType = UNSET
    terms_consent_datetime: AwareDatetime | UnsetType | None = UNSET
    default_location: Location | UnsetType = UNSET
    vehicles: tuple[RefTo[Any], ...] = ()
    evses: tuple[RefTo[Any], ...] = ()


@attrs.frozen(kw_only=True)
class Supplier:
    id: str
    url: str
    name: str
    icon: str | None
    highlighted: bool | UnsetType = UNSET


@attrs.frozen(kw_only=True)
class Price:
    started_at: AwareDatetime
    interval_seconds: int
    price_minor_units: int


if TYPE_CHECKING:
    Prices: TypeAlias = Ref[Any] | tuple[Price, ...]
else:

    class Prices(abc.ABC):  # noqa: B024 (no abstract methods: a type to check against)
        """`Tariff.prices` to the decoder: a URL or an array, which msgspec's unions cannot
        mix with a custom type, so its hook reads both.  Checkers see the union."""

    Prices.register(Ref)
    Prices.register(tuple)


@attrs.frozen(kw_only=True)
class Tariff:
    """A tariff; `current_price` and `prices` come with a single tariff (TariffDetail).

    `daily_prices` keeps the API's shape: ``{"peak": {"price": "0.30", "times": [...]}, ...}``.
    `prices` is a Ref to the tariff's price list, or the prices themselves when expanded.
    """

    id: str
    url: str
    supplier: RefTo[Supplier]
    name: str
    currency: str
    highlighted: bool | UnsetType = UNSET
    type: TariffType | UnsetType = UNSET
    daily_prices: Mapping[str, Any] | UnsetType = UNSET
    timezone_name: str | UnsetType = UNSET
    price_chart_url: str | UnsetType | None = UNSET
    gsp_group: str | UnsetType | None = UNSET
    valid_from: date | UnsetType = UNSET
    valid_until: date | UnsetType | None = UNSET
    scheduler_tariff: RefTo[Tariff] | UnsetType | None = UNSET
    current_price: int | UnsetType | None = UNSET
    prices: Prices | UnsetType | None = UNSET


@attrs.frozen(kw_only=True)
class EVSESite:
    id: str
    url: str
    evses: tuple[RefTo[Any], ...]
    cpms_connection: Literal["CHARGEPOINT", "SWTCH"] | None
    cpms_connection_display_name: str | UnsetType | None = UNSET
    user_connected: bool | UnsetType | None = UNSET


@attrs.frozen
class ClientStats:
    """What a client (with its views) did since it was made: `client.stats`.

    `requests` counts attempts sent; `responses` counts them by status class (``"2xx"``,
    ``"4xx"``, ...) and `transport_errors` those that got no response.  `retries` counts
    attempts after a call's first (429s and token refreshes included), `throttled` the 429s
    seen.  `limiter_waits` and `limiter_wait_seconds` are the waits for rate-limit budget;
    `cache_hits` and `cache_misses` are the resolve cache's; `bytes_read` counts response
    bodies (decompressed).
    """

    requests: int
    responses: dict[str, int]
    transport_errors: int
    retries: int
    throttled: int
    limiter_waits: int
    limiter_wait_seconds: float
    cache_hits: int
    cache_misses: int
    bytes_read: int


@attrs.frozen
class Page(Generic[T]):
    """One page of a list: its items and where the neighbouring pages are.

    `next_cursor` is the ``page_after`` value of the next page (cursor-paged collections),
    to resume a stream later with ``list(page_after=...)``.
    """

    items: list[T]
    next_url: str | None
    next_cursor: str | None
    previous_url: str | None = None


@attrs.frozen
class RateLimit:
    """The rate-limit state the latest response reported.

    `limit` is the budget per rolling window, `remaining` what is left of it, `retry_after`
    the seconds to wait (an error response's: a 429, a 503).  Each is None when the header
    was absent or unreadable.  Read from a response by `_sansio.rate_limit_from_headers`.
    """

    limit: int | None
    remaining: int | None
    retry_after: float | None = None


SyncAction = Literal["created", "updated", "unchanged", "failed"]


@attrs.frozen(kw_only=True)
class SyncOutcome:
    """What `client.users.sync` did with one record.

    `action` is ``"created"``, ``"updated"``, ``"unchanged"`` or ``"failed"``; `email` is the
    record's (None when it has none or could not be read); `user` the user as the server now
    holds it (None when failed, and in a dry run); `changed` the field paths that differed,
    e.g. ``("default_location.city",)``; `error` why it failed.  `id` is the user's id when
    known, `index` the record's position in the input (from 0).
    """

    action: SyncAction
    email: str | None
    user: User | None = None
    changed: tuple[str, ...] = ()
    error: EvEnergyError | None = None
    id: str | None = None
    index: int = -1
