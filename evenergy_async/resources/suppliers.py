"""`client.suppliers`: get a supplier, list suppliers (paged by page number)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from .. import _validate as v
from ..models import Supplier
from ._base import Collection

__all__ = ["Suppliers"]


class Suppliers(Collection):
    path = "suppliers"

    async def get(self, supplier_id: str) -> Supplier:
        supplier_id = v.check_id(supplier_id, v.SUPPLIER_ID, "supplier_id")
        return await self._get(self._url(supplier_id), Supplier)

    async def list(
        self, *, page_size: int = 100, available_for_user_id: str | None = None
    ) -> AsyncGenerator[Supplier, None]:
        """Every supplier (sorted by name), following the ``Link`` header page by page."""
        params: dict[str, Any] = {"page_size": v.check_page_size(page_size)}
        if available_for_user_id is not None:
            params["available_for_user_id"] = v.check_id(
                available_for_user_id, v.USER_ID, "available_for_user_id"
            )
        async with contextlib.aclosing(self._pages(self._url(), Supplier, params)) as pages:
            async for page in pages:
                for supplier in page.items:
                    yield supplier
