"""Testing helpers: ``FakeEvEnergy``, a stateful local fake of the ev.energy v2 API, and
``MockTransport``, an in-memory transport for unit tests (``ev.Client(transport=...)``).

Importing this package is cheap: the aiohttp-based fake is loaded on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evenergy_async.testing._app import Exchange
    from evenergy_async.testing._fake import FakeEvEnergy
    from evenergy_async.testing._faults import FakeStats, Faults
    from evenergy_async.testing._transport import MockReply, MockTransport

__all__ = ["Exchange", "FakeEvEnergy", "FakeStats", "Faults", "MockReply", "MockTransport"]

_HOMES = {
    "Exchange": "evenergy_async.testing._app",
    "FakeEvEnergy": "evenergy_async.testing._fake",
    "FakeStats": "evenergy_async.testing._faults",
    "Faults": "evenergy_async.testing._faults",
    "MockReply": "evenergy_async.testing._transport",
    "MockTransport": "evenergy_async.testing._transport",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
