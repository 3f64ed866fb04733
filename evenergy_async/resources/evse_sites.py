"""`client.evse_sites`: get an EVSE site, list the sites visible to the credentials."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from .. import _validate as v
from ..models import EVSESite
from ._base import Collection

__all__ = ["EVSESites"]


class EVSESites(Collection):
    path = "evse_sites"

    async def get(self, evse_site_id: str) -> EVSESite:
        evse_site_id = v.check_id(evse_site_id, v.EVSE_SITE_ID, "evse_site_id")
        return await self._get(self._url(evse_site_id), EVSESite)

    async def list(self) -> AsyncGenerator[EVSESite, None]:
        """Every EVSE site, following the ``Link`` header (the API takes no paging options)."""
        async with contextlib.aclosing(self._pages(self._url(), EVSESite, {})) as pages:
            async for page in pages:
                for site in page.items:
                    yield site
