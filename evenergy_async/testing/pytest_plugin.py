"""pytest plugin: test your code against `FakeEvEnergy` with two fixtures.

Installed with the package (the ``pytest11`` entry point ``evenergy_async``), so nothing needs
to be enabled::

    import pytest

    @pytest.mark.asyncio
    @pytest.mark.evenergy_fake(users=10, rate_limit=50)
    async def test_export(evenergy_client, evenergy_fake):
        emails = [u.email async for u in evenergy_client.users.list()]
        assert len(emails) == 10
        assert evenergy_fake.stats  # what the fake served

- ``evenergy_fake``: a started `FakeEvEnergy` on a free loopback port, new for every test
  (small defaults: 25 users, 5 tariffs, seed 0).  Options come from the
  ``@pytest.mark.evenergy_fake(**options)`` marker (on the test, class or module; the closest
  wins) or from indirect parametrization (``parametrize("evenergy_fake", [{...}],
  indirect=True)``), and are `FakeEvEnergy`'s keyword arguments.
- ``evenergy_client``: an `evenergy_async.Client` bound to that fake with its static token,
  closed after the test.  ``@pytest.mark.evenergy_client(**options)`` passes more `Client`
  keyword arguments (``max_rate_limit_wait=0``, ``acting_user=...``).

``client`` is the same fixture under a short name.  A project's own ``client`` fixture always
wins over it, and it is not registered at all when pytest-django (whose ``client`` is Django's
test client) is loaded: a plugin installed for everyone must not take that name from them.

Both fixtures are async and function-scoped: they need pytest-asyncio (in the package's
``test`` extra), in either ``strict`` mode (mark tests ``@pytest.mark.asyncio``) or ``auto``.
Without it, requesting them fails the test with a message saying so; other tests are untouched.
Loading the plugin imports nothing beyond pytest: the fake and aiohttp are imported by the
fixtures, on first use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from evenergy_async.client import Client
    from evenergy_async.testing._fake import FakeEvEnergy

__all__ = ["FAKE_DEFAULTS", "evenergy_client", "evenergy_fake"]

#: `FakeEvEnergy` options the ``evenergy_fake`` fixture uses unless told otherwise: small, so
#: a test starts fast; ``port=0`` picks a free port.
FAKE_DEFAULTS: Mapping[str, Any] = {
    "users": 25,
    "tariffs": 5,
    "rate_limit": 1000,
    "seed": 0,
    "host": "127.0.0.1",
    "port": 0,
}

_NEEDS_PYTEST_ASYNCIO = (
    "the {name} fixture is async and needs pytest-asyncio: "
    "pip install pytest-asyncio (or evenergy-async[test])"
)


class _ClientAlias:
    """``client``: the same as ``evenergy_client``.  Registered only when no other plugin
    known to own that name (pytest-django) is loaded; a project's own ``client`` fixture
    always wins over a plugin's."""

    @pytest.fixture
    def client(self, evenergy_client: Client) -> Client:
        return evenergy_client


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("django"):
        config.pluginmanager.register(_ClientAlias(), "evenergy_async.client_alias")
    config.addinivalue_line(
        "markers",
        "evenergy_fake(**options): FakeEvEnergy keyword arguments for the evenergy_fake "
        "fixture (users=, tariffs=, rate_limit=, rate_window=, seed=, ...)",
    )
    config.addinivalue_line(
        "markers",
        "evenergy_client(**options): more evenergy_async.Client keyword arguments for the "
        "evenergy_client fixture (max_rate_limit_wait=, acting_user=, ...)",
    )


def _marker_options(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """The keyword arguments of every `name` marker on the test, closest last (so it wins)."""
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(name))):
        if marker.args:
            raise pytest.UsageError(
                f"@pytest.mark.{name} takes keyword arguments only, got {marker.args!r}"
            )
        options.update(marker.kwargs)
    return options


def _fake_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options = {**FAKE_DEFAULTS, **_marker_options(request, "evenergy_fake")}
    param = getattr(request, "param", None)
    if param is not None:
        if not isinstance(param, Mapping):
            raise pytest.UsageError(
                f"indirect parameters of evenergy_fake must be dicts of options, got {param!r}"
            )
        options.update(param)
    return options


def _async_fixture(function: Callable[..., Any]) -> Any:
    """`pytest_asyncio.fixture` when pytest-asyncio is installed, else a fixture that fails."""
    try:
        import pytest_asyncio
    except ImportError:
        message = _NEEDS_PYTEST_ASYNCIO.format(name=function.__name__)

        def missing() -> None:
            pytest.fail(message, pytrace=False)

        missing.__doc__ = function.__doc__
        return pytest.fixture(name=function.__name__)(missing)
    return pytest_asyncio.fixture(function)


@_async_fixture
async def evenergy_fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeEvEnergy]:
    """A started `FakeEvEnergy` on a free port; options from ``@pytest.mark.evenergy_fake``."""
    from evenergy_async.testing import FakeEvEnergy

    async with FakeEvEnergy(**_fake_options(request)) as fake:
        yield fake


@_async_fixture
async def evenergy_client(
    request: pytest.FixtureRequest, evenergy_fake: FakeEvEnergy
) -> AsyncIterator[Client]:
    """An `evenergy_async.Client` on ``evenergy_fake``, closed after the test."""
    from evenergy_async import Client

    options: dict[str, Any] = {"token": evenergy_fake.token, "base_url": evenergy_fake.base_url}
    options.update(_marker_options(request, "evenergy_client"))
    if "credentials" in options:
        options.pop("token")
    async with Client(**options) as client:
        yield client
