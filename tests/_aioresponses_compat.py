"""aioresponses 0.7.9 builds aiohttp responses without the `stream_writer` argument that
aiohttp 3.14 added (pnuckowski/aioresponses#289).  Until a release fixes it, the mock builds
its responses through this subclass, which supplies the argument."""

from __future__ import annotations

import inspect
from typing import Any

import aiohttp
import aioresponses.core

_NEEDS_STREAM_WRITER = (
    "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters
)


class _SentWriter:
    """Stands for a request writer that has finished sending."""

    output_size = 0


class CompatClientResponse(aiohttp.ClientResponse):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentWriter())
        super().__init__(*args, **kwargs)


def install() -> None:
    if _NEEDS_STREAM_WRITER:
        aioresponses.core.ClientResponse = CompatClientResponse  # type: ignore[misc]
