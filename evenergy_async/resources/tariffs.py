"""`client.tariffs`: get a tariff, list tariffs (paged by page number)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from .. import _validate as v
from ..errors import InvalidRequest
from ..models import Page, Supplier, Tariff, TariffPath
from ..refs import Ref
from ._base import Collection

__all__ = ["Tariffs"]


class Tariffs(Collection):
    path = "tariffs"

    async def get(
        self,
        tariff_id: str,
        *,
        expand: TariffPath | Iterable[TariffPath] = (),
        available_for_user_id: str | None = None,
    ) -> Tariff:
        """One tariff (TariffDetail: with `current_price` and `prices`)."""
        tariff_id = v.check_id(tariff_id, v.TARIFF_ID, "tariff_id")
        params: dict[str, Any] = {"expand": v.check_expand(expand, v.TARIFF_EXPANSIONS)}
        if available_for_user_id is not None:
            params["available_for_user_id"] = v.check_id(
                available_for_user_id, v.USER_ID, "available_for_user_id"
            )
        return await self._get(self._url(tariff_id), Tariff, params)

    def _list_params(
        self,
        page_size: int,
        page: int,
        supplier_id: str | None,
        supplier: Supplier | Ref[Supplier] | str | None,
        valid: bool | None,
        gsp_group: str | None,
        available_for_user_id: str | None,
        expand: TariffPath | Iterable[TariffPath],
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"page_size": v.check_page_size(page_size)}
        if page != 1:
            params["page"] = v.check_page_number(page)
        if supplier_id is not None:
            params["supplier_id"] = v.check_id(supplier_id, v.SUPPLIER_ID, "supplier_id")
        if supplier is not None:
            if supplier_id is not None:
                raise InvalidRequest("supplier", "give supplier= or supplier_id=, not both")
            if isinstance(supplier, Supplier | Ref):
                supplier = supplier.id
            params["supplier_id"] = v.check_id(supplier, v.SUPPLIER_ID, "supplier")
        if valid is not None:
            params["valid"] = v.check_bool(valid, "valid")
        if gsp_group is not None:
            params["gsp_group"] = v.check_text(gsp_group, "gsp_group")
        if available_for_user_id is not None:
            params["available_for_user_id"] = v.check_id(
                available_for_user_id, v.USER_ID, "available_for_user_id"
            )
        expansions = v.check_expand(expand, v.TARIFF_EXPANSIONS)
        if expansions:
            params["expand"] = expansions
        return params

    async def pages(
        self,
        *,
        page_size: int = 100,
        page: int = 1,
        supplier_id: str | None = None,
        supplier: Supplier | Ref[Supplier] | str | None = None,
        valid: bool | None = None,
        gsp_group: str | None = None,
        available_for_user_id: str | None = None,
        expand: TariffPath | Iterable[TariffPath] = (),
    ) -> AsyncGenerator[Page[Tariff], None]:
        """Pages of tariffs (sorted by name) from page number `page` on.

        `supplier` narrows to one supplier's tariffs: a `Supplier`, a Ref to one, or its id
        (the same as `supplier_id`, the API's name for the filter)."""
        params = self._list_params(
            page_size, page, supplier_id, supplier, valid, gsp_group, available_for_user_id, expand
        )
        async with contextlib.aclosing(self._pages(self._url(), Tariff, params)) as pages:
            async for result in pages:
                yield result

    async def list(
        self,
        *,
        page_size: int = 100,
        supplier_id: str | None = None,
        supplier: Supplier | Ref[Supplier] | str | None = None,
        valid: bool | None = None,
        gsp_group: str | None = None,
        available_for_user_id: str | None = None,
        expand: TariffPath | Iterable[TariffPath] = (),
    ) -> AsyncGenerator[Tariff, None]:
        """Every tariff matching the filters, following the ``Link`` header page by page."""
        pages = self.pages(
            page_size=page_size,
            supplier_id=supplier_id,
            supplier=supplier,
            valid=valid,
            gsp_group=gsp_group,
            available_for_user_id=available_for_user_id,
            expand=expand,
        )
        async with contextlib.aclosing(pages):  # its page fetched ahead ends with this stream
            async for page in pages:
                for tariff in page.items:
                    yield tariff
