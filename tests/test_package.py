"""The package's public surface: every contract name exists and importing stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import evenergy_async as ev

CONTRACT = [
    "Client", "ClientCredentials", "UNSET", "User", "Location", "LatLong", "Tariff", "Supplier",
    "EVSESite", "Ref", "Page", "RateLimit", "RedisRateLimiter", "EvEnergyError", "APIError",
    "BadRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict", "RateLimited",
    "ServerError", "TransportError", "InvalidResponse", "InvalidRequest",
]  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(CONTRACT) | set(ev.__all__)))
def test_every_public_name_resolves(name: str) -> None:
    assert name in ev.__all__
    assert getattr(ev, name) is not None
    assert name in dir(ev)


def test_errors_are_also_in_their_module() -> None:
    from evenergy_async import errors

    assert ev.InvalidRequest is errors.InvalidRequest
    assert issubclass(ev.InvalidRequest, ValueError)
    assert issubclass(ev.RateLimited, ev.APIError)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = ev.Nope  # type: ignore[attr-defined]


def test_importing_the_package_does_not_load_aiohttp() -> None:
    code = "import sys, evenergy_async; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
