"""Turning the fake's records into the JSON the spec describes, with absolute URLs and expansions.

Every reference is an absolute URL on the fake's own base URL unless expanded. Rendered
tariffs, suppliers and URLs are built once and shared between responses (never mutated).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import attrs

from evenergy_async.testing._data import (
    LocationRecord,
    SiteRecord,
    SupplierRecord,
    TariffRecord,
    UserRecord,
)
from evenergy_async.testing._devices import Owner, cpid, evse_traits, vehicle_traits
from evenergy_async.testing._ids import digest

JSONDict = dict[str, object]

USER_EXPANSIONS = (
    "default_location.tariff",
    "default_location.tariff.supplier",
    "default_location.evse_site",
)
TARIFF_EXPANSIONS = ("supplier", "scheduler_tariff", "prices")
# The spec lets more be expanded (trim, model, latest_status_log, ...); the fake has none of
# those resources, so it leaves them out and refuses to expand them.
DEVICE_EXPANSIONS = ("user",)
PRICE_INTERVAL = timedelta(minutes=30)


@attrs.frozen
class UserExpand:
    """Which relations of a user to inline (``expand=`` on the users endpoints)."""

    tariff: bool = False
    tariff_supplier: bool = False
    evse_site: bool = False

    @classmethod
    def from_names(cls, names: Iterable[str]) -> UserExpand:
        chosen = set(names)
        supplier = "default_location.tariff.supplier" in chosen
        return cls(
            tariff=supplier or "default_location.tariff" in chosen,
            tariff_supplier=supplier,
            evse_site="default_location.evse_site" in chosen,
        )


@attrs.frozen
class World:
    """The immutable part of the fake's data."""

    seed: int
    suppliers: tuple[SupplierRecord, ...]
    tariffs: tuple[TariffRecord, ...]
    sites: tuple[SiteRecord, ...]


class Renderer:
    """Builds response objects for one base URL (``http://host:port/v2``)."""

    def __init__(self, world: World, base_url: str) -> None:
        self.world = world
        self.base = base_url
        self.supplier_urls = [f"{base_url}/suppliers/{s.id}" for s in world.suppliers]
        self.tariff_urls = [f"{base_url}/tariffs/{t.id}" for t in world.tariffs]
        self.site_urls = [f"{base_url}/evse_sites/{s.id}" for s in world.sites]
        self._suppliers = [self._supplier(s) for s in world.suppliers]
        self._tariff_bases = [self._tariff_base(t) for t in world.tariffs]
        self._tariffs = [self._tariff(t, expand_supplier=False) for t in world.tariffs]
        self._tariffs_with_supplier = [self._tariff(t, expand_supplier=True) for t in world.tariffs]

    # URLs
    def user_url(self, user_id: str) -> str:
        return f"{self.base}/users/{user_id}"

    def related_url(self, related_id: str) -> str:
        collection = {"vhcl": "vehicles", "evse": "evses"}[related_id[:4]]
        return f"{self.base}/{collection}/{related_id}"

    # suppliers
    def _supplier(self, s: SupplierRecord) -> JSONDict:
        url = self.supplier_urls[s.index]
        return {
            "id": s.id,
            "url": url,
            "name": s.name,
            "icon": s.icon,
            "highlighted": s.highlighted,
        }

    def supplier(self, index: int) -> JSONDict:
        return self._suppliers[index]

    # tariffs
    def _tariff_base(self, t: TariffRecord) -> JSONDict:
        return {
            "id": t.id,
            "url": self.tariff_urls[t.index],
            "supplier": self.supplier_urls[t.supplier],
            "name": t.name,
            "currency": t.currency,
            "highlighted": t.highlighted,
            "type": t.type,
            "daily_prices": t.daily_prices(),
            "timezone_name": t.timezone_name,
            "price_chart_url": t.price_chart_url,
            "gsp_group": t.gsp_group,
            "valid_from": t.valid_from.isoformat(),
            "valid_until": None if t.valid_until is None else t.valid_until.isoformat(),
        }

    def _tariff(self, t: TariffRecord, *, expand_supplier: bool) -> JSONDict:
        rendered = dict(self._tariff_bases[t.index])
        if expand_supplier:
            rendered["supplier"] = self._suppliers[t.supplier]
        scheduler = t.scheduler_tariff
        rendered["scheduler_tariff"] = None if scheduler is None else self.tariff_urls[scheduler]
        return rendered

    def tariff(self, index: int, *, supplier: bool = False, scheduler: bool = False) -> JSONDict:
        """A Tariff as lists and user expansions serve it."""
        shared = (self._tariffs_with_supplier if supplier else self._tariffs)[index]
        scheduler_index = self.world.tariffs[index].scheduler_tariff
        if not scheduler or scheduler_index is None:
            return shared
        rendered = dict(shared)
        rendered["scheduler_tariff"] = self._tariff_bases[scheduler_index]
        return rendered

    def tariff_detail(self, index: int, expand: frozenset[str], now: datetime) -> JSONDict:
        """A TariffDetail: the Tariff plus ``current_price`` and ``prices``."""
        record = self.world.tariffs[index]
        rendered = dict(
            self.tariff(
                index, supplier="supplier" in expand, scheduler="scheduler_tariff" in expand
            )
        )
        rendered["current_price"] = record.price_at(self.world.seed, now)
        rendered["prices"] = (
            self.prices(index, now) if "prices" in expand else f"{self.tariff_urls[index]}/prices"
        )
        return rendered

    def prices(self, index: int, now: datetime) -> list[JSONDict]:
        """The past 24 hours of half-hourly prices, oldest first."""
        record = self.world.tariffs[index]
        slot = now.replace(minute=now.minute - now.minute % 30, second=0, microsecond=0)
        prices: list[JSONDict] = []
        for back in range(47, -1, -1):
            started = slot - back * PRICE_INTERVAL
            price = record.price_at(self.world.seed, started)
            prices.append(
                {
                    "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "interval_seconds": int(PRICE_INTERVAL.total_seconds()),
                    "price_minor_units": 0 if price is None else price,
                }
            )
        return prices

    # EVSE sites
    def site(self, index: int, acting: UserRecord | None) -> JSONDict:
        """An EVSESite; ``user_connected`` is only known in the context of a user."""
        s = self.world.sites[index]
        connected: bool | None = None
        if acting is not None and s.cpms_connection is not None:
            connected = acting.location.evse_site == index
        return {
            "id": s.id,
            "url": self.site_urls[index],
            "evses": [f"{self.base}/evses/{evse}" for evse in s.evses],
            "cpms_connection": s.cpms_connection,
            "cpms_connection_display_name": s.cpms_connection_display_name,
            "user_connected": connected,
        }

    # vehicles and EVSEs
    def vehicle(self, vehicle_id: str, owner: Owner, user: object) -> JSONDict:
        """A Vehicle; ``user`` is its owner's URL or expanded User."""
        return {
            "id": vehicle_id,
            "url": self.related_url(vehicle_id),
            "user": user,
            **vehicle_traits(self.world.seed, owner),
        }

    def evse(
        self, evse_id: str, owner: Owner, user: object, coordinates: tuple[float, float] | None
    ) -> JSONDict:
        """An EVSE; a site's has no ``user``, a user's is where the user lives."""
        rendered: JSONDict = {
            "id": evse_id,
            "url": self.related_url(evse_id),
            "cpid": cpid(evse_id),
        }
        if user is not None:
            rendered["user"] = user
        rendered["location"] = (
            None
            if coordinates is None
            else {"latitude": coordinates[0], "longitude": coordinates[1]}
        )
        rendered.update(evse_traits(self.world.seed, owner))
        return rendered

    # users
    def user(
        self,
        user_id: str,
        record: UserRecord,
        expand: UserExpand,
        acting: UserRecord | None,
        *,
        detail: bool = False,
        carbon: int | None = None,
    ) -> JSONDict:
        """A User: with a LocationDetail (adds ``carbon``) when ``detail``, else a Location."""
        location = self.location(record.location, expand, acting)
        if detail:
            location["current_carbon_intensity_grams_per_kilowatt_hour"] = carbon
        return {
            "id": user_id,
            "url": f"{self.base}/users/{user_id}",
            "email": record.email,
            "full_name": record.full_name,
            "joined_at": record.joined_at,
            "terms_consent_datetime": record.terms_consent_datetime,
            "default_location": location,
            "vehicles": [self.related_url(v) for v in record.vehicles],
            "evses": [self.related_url(e) for e in record.evses],
        }

    def location(
        self, loc: LocationRecord, expand: UserExpand, acting: UserRecord | None
    ) -> JSONDict:
        tariff: object = None
        if loc.tariff is not None:
            tariff = (
                self.tariff(loc.tariff, supplier=expand.tariff_supplier)
                if expand.tariff
                else self.tariff_urls[loc.tariff]
            )
        site: object = None
        if loc.evse_site is not None:
            site = (
                self.site(loc.evse_site, acting)
                if expand.evse_site
                else self.site_urls[loc.evse_site]
            )
        coordinates = loc.coordinates
        return {
            "address_1": loc.address_1,
            "address_2": loc.address_2,
            "postal_code": loc.postal_code,
            "country_code": loc.country_code,
            "coordinates": None
            if coordinates is None
            else {"latitude": coordinates[0], "longitude": coordinates[1]},
            "tariff": tariff,
            "city": loc.city,
            "state": loc.state,
            "evse_site": site,
        }

    def carbon_intensity(self, index: int, loc: LocationRecord, now: datetime) -> int | None:
        """gCO2/kWh for a located user, varying by the hour; None without an address."""
        if loc.country_code is None:
            return None
        hour = int(now.timestamp()) // 3600
        return 40 + digest(self.world.seed, b"carbon", index * 1_000_003 + hour)[0]
