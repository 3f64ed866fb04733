"""evenergy_async: an asyncio client for the ev.energy v2 API.

    import evenergy_async as ev

    async with ev.Client(token="...") as client:
        async for user in client.users.list(page_size=100):
            ...

The names below are loaded on first use, so importing the package (as pytest does for its
plugin in every session) costs nothing until the client is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._auth import ClientCredentials
    from ._ratelimit import LimiterStats, RateLimiter, RateLimiterProtocol
    from ._redis import BudgetSnapshot, RedisRateLimiter
    from .client import DEFAULT_BASE_URL, Client
    from .errors import (
        APIError,
        BadRequest,
        ClientClosed,
        Conflict,
        EvEnergyError,
        Forbidden,
        InvalidRequest,
        InvalidResponse,
        NotFound,
        OutcomeUnknown,
        RateLimited,
        RateLimiterUnavailable,
        ServerError,
        TransportError,
        Unauthorized,
    )
    from .models import (
        UNSET,
        ClientStats,
        EVSESite,
        LatLong,
        Location,
        Page,
        Price,
        RateLimit,
        Supplier,
        SyncOutcome,
        Tariff,
        TariffPath,
        UnsetType,
        User,
        UserPath,
    )
    from .refs import Ref

__version__ = "0.1.0"

_HOMES = {
    "ClientCredentials": "._auth",
    "LimiterStats": "._ratelimit",
    "RateLimiter": "._ratelimit",
    "RateLimiterProtocol": "._ratelimit",
    "RedisRateLimiter": "._redis",
    "BudgetSnapshot": "._redis",
    "DEFAULT_BASE_URL": ".client",
    "Client": ".client",
    **dict.fromkeys(
        (
            "APIError",
            "BadRequest",
            "ClientClosed",
            "Conflict",
            "EvEnergyError",
            "Forbidden",
            "InvalidRequest",
            "InvalidResponse",
            "NotFound",
            "OutcomeUnknown",
            "RateLimited",
            "RateLimiterUnavailable",
            "ServerError",
            "TransportError",
            "Unauthorized",
        ),
        ".errors",
    ),
    **dict.fromkeys(
        (
            "UNSET",
            "ClientStats",
            "EVSESite",
            "LatLong",
            "Location",
            "Page",
            "Price",
            "RateLimit",
            "Supplier",
            "SyncOutcome",
            "Tariff",
            "TariffPath",
            "UnsetType",
            "User",
            "UserPath",
        ),
        ".models",
    ),
    "Ref": ".refs",
}

__all__ = [
    "DEFAULT_BASE_URL",
    "UNSET",
    "APIError",
    "BadRequest",
    "BudgetSnapshot",
    "Client",
    "ClientClosed",
    "ClientCredentials",
    "ClientStats",
    "Conflict",
    "EVSESite",
    "EvEnergyError",
    "Forbidden",
    "InvalidRequest",
    "InvalidResponse",
    "LatLong",
    "LimiterStats",
    "Location",
    "NotFound",
    "OutcomeUnknown",
    "Page",
    "Price",
    "RateLimit",
    "RateLimited",
    "RateLimiter",
    "RateLimiterProtocol",
    "RateLimiterUnavailable",
    "RedisRateLimiter",
    "Ref",
    "ServerError",
    "Supplier",
    "SyncOutcome",
    "Tariff",
    "TariffPath",
    "TransportError",
    "Unauthorized",
    "UnsetType",
    "User",
    "UserPath",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # found once, then an ordinary module attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
