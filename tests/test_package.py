"""The package's public surface: every contract name exists and importing stays light."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import evenergy_async as ev

CONTRACT = [
    "Client", "ClientCredentials", "UNSET", "User", "Location", "LatLong", "Tariff", "Supplier",
    "EVSESite", "Ref", "Page", "RateLimit", "RedisRateLimiter", "EvEnergyError", "APIError",
    "BadRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict", "RateLimited",
    "ServerError", "TransportError", "InvalidResponse", "InvalidRequest", "OutcomeUnknown",
    "RateLimiterUnavailable", "ClientClosed",
]  # fmt: skip

ERRORS = [
    "EvEnergyError", "APIError", "BadRequest", "Unauthorized", "Forbidden", "NotFound",
    "Conflict", "RateLimited", "ServerError", "TransportError", "OutcomeUnknown",
    "RateLimiterUnavailable", "InvalidResponse", "InvalidRequest", "ClientClosed",
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


@pytest.mark.parametrize("name", ERRORS)
def test_every_error_is_exported_and_drawn_in_the_tree(name: str) -> None:
    from evenergy_async import errors

    cls = getattr(ev, name)
    assert getattr(errors, name) is cls
    assert name in errors.__all__
    assert issubclass(cls, ev.EvEnergyError)
    assert errors.__doc__ is not None
    assert re.search(rf"[─ ]{name}\b", errors.__doc__), f"{name} is not drawn in the tree"


def test_where_the_newer_errors_stand_in_the_tree() -> None:
    assert issubclass(ev.OutcomeUnknown, ev.TransportError)
    assert issubclass(ev.RateLimiterUnavailable, ev.TransportError)
    # closing is final: not a transport failure a caller (or the client) would retry
    assert not issubclass(ev.ClientClosed, ev.TransportError)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = ev.Nope  # type: ignore[attr-defined]


def test_importing_the_package_does_not_load_aiohttp() -> None:
    code = "import sys, evenergy_async; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
