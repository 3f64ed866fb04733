"""evenergy_async: an asyncio client for the ev.energy v2 API.

import evenergy_async as ev

async with ev.Client(token="...") as client:
    async for user in client.users.list(page_size=100):
        ...
"""

from ._auth import ClientCredentials
from ._ratelimit import LimiterStats, RateLimiter, RateLimiterProtocol
from .client import DEFAULT_BASE_URL, Client
from .errors import (
    APIError,
    BadRequest,
    Conflict,
    EvEnergyError,
    Forbidden,
    InvalidRequest,
    InvalidResponse,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
)
from .models import (
    UNSET,
    EVSESite,
    LatLong,
    Location,
    Page,
    Price,
    RateLimit,
    Supplier,
    Tariff,
    UnsetType,
    User,
)
from .refs import Ref

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BASE_URL",
    "UNSET",
    "APIError",
    "BadRequest",
    "Client",
    "ClientCredentials",
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
    "Page",
    "Price",
    "RateLimit",
    "RateLimited",
    "RateLimiter",
    "RateLimiterProtocol",
    "Ref",
    "ServerError",
    "Supplier",
    "Tariff",
    "TransportError",
    "Unauthorized",
    "UnsetType",
    "User",
]
