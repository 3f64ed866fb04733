"""Vehicles and EVSEs: found and listed from the ids users and EVSE sites already link to.

A seeded user owns up to two vehicles and two EVSEs whose ids are made just after the user's
(``_data._related``: time ``BASE_MS + i * USER_STEP_MS + 1000 + k``), so an id gives back its
owner's index from its time part and a lookup is O(1). An EVSE site's EVSEs have ids of 2021,
before every user's, so "every EVSE" in id order is the sites' EVSEs, then the users'.

Lists are cursor pages in id order, like ``/v2/users``. A page is found by walking users from
the cursor's owner on: each step looks at one user, and the walk ends after ``page_size + 1``
ids or at the last user, so a page costs O(page_size) users where users own devices.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence

import attrs

from evenergy_async.testing._data import BASE_MS, USER_STEP_MS, SiteRecord, UserStore
from evenergy_async.testing._ids import decode_time, digest

VEHICLE = "vhcl"
EVSE = "evse"
CPID_PREFIX = "CP"

_VEHICLES = (
    ("Volvo", "C40", 78_000),
    ("Tesla", "Model 3", 60_000),
    ("Nissan", "Leaf", 40_000),
    ("Kia", "EV6", 77_400),
    ("Renault", "Zoe", 52_000),
    ("Ford", "E-Transit", 68_000),
)
_INTEGRATED = ("ACTIVE", "ACTIVE", "INACTIVE", "UNINTEGRATED")
_LOCK_MODES = ("UNLOCKED", "SMART", "LOCKED", None)
_LIFECYCLE = ("COMMISSIONED", "INSTALLED", "CREATED_LINKED", "PENDING", None)


@attrs.frozen
class Owner:
    """Where a device id comes from: user ``index``'s ``slot``-th, or site ``index``'s."""

    index: int
    slot: int
    site: bool = False


def owner_index(device_id: str) -> int | None:
    """The index of the user whose related-id time slot ``device_id`` falls in (maybe out of
    range, maybe negative for an id older than every user), or None if it has no valid time."""
    time_ms = decode_time(device_id[4:])
    if time_ms is None:
        return None
    return (time_ms - BASE_MS - 1000) // USER_STEP_MS


def _owned(store: UserStore, index: int, prefix: str) -> tuple[str, ...]:
    record = store.get(index)
    return record.vehicles if prefix == VEHICLE else record.evses


class Devices:
    """The vehicles (``prefix="vhcl"``) or EVSEs (``"evse"``) of a fake."""

    def __init__(self, store: UserStore, prefix: str, sites: Sequence[SiteRecord] = ()) -> None:
        self.store = store
        self.prefix = prefix
        site_ids = [
            (evse, Owner(s.index, n, site=True)) for s in sites for n, evse in enumerate(s.evses)
        ]
        site_ids.sort()
        self._site_ids = [device_id for device_id, _ in site_ids]
        self._site_owners = dict(site_ids)

    # --- one device ----------------------------------------------------------------------

    def find(self, device_id: str) -> Owner | None:
        """Who holds ``device_id``, or None if no such device exists."""
        if not device_id.startswith(self.prefix):
            return None
        site = self._site_owners.get(device_id)
        if site is not None:
            return site
        index = owner_index(device_id)
        if index is None or not 0 <= index < self.store.count:
            return None
        owned = _owned(self.store, index, self.prefix)
        return Owner(index, owned.index(device_id)) if device_id in owned else None

    # --- id order ------------------------------------------------------------------------

    def owned_by(self, user: int) -> list[str]:
        """User ``user``'s device ids, sorted."""
        return sorted(_owned(self.store, user, self.prefix))

    def after(self, cursor: str | None, only: list[str] | None) -> Iterator[str]:
        """Ids greater than ``cursor`` (all if None), ascending; only those of the sorted list
        ``only`` if given, else every device of the fake."""
        if only is not None:
            return iter(only[0 if cursor is None else bisect.bisect_right(only, cursor) :])
        sites = self._site_ids[
            0 if cursor is None else bisect.bisect_right(self._site_ids, cursor) :
        ]
        return itertools.chain(sites, self._users_after(cursor))

    def before(self, cursor: str, only: list[str] | None) -> Iterator[str]:
        """Ids less than ``cursor``, descending; only those of ``only`` if given."""
        if only is not None:
            return reversed(only[: bisect.bisect_left(only, cursor)])
        sites = self._site_ids[: bisect.bisect_left(self._site_ids, cursor)]
        return itertools.chain(self._users_before(cursor), reversed(sites))

    def _users_after(self, cursor: str | None) -> Iterator[str]:
        start = 0
        if cursor is not None:
            start = max(0, owner_index(cursor) or 0)
        for index in range(start, self.store.count):  # ends at the last user
            for device_id in _owned(self.store, index, self.prefix):
                if cursor is None or device_id > cursor:
                    yield device_id

    def _users_before(self, cursor: str) -> Iterator[str]:
        found = owner_index(cursor)
        start = self.store.count - 1 if found is None else min(found, self.store.count - 1)
        for index in range(start, -1, -1):  # ends at the first user
            for device_id in reversed(_owned(self.store, index, self.prefix)):
                if device_id < cursor:
                    yield device_id


@attrs.frozen
class DevicePage:
    ids: list[str]
    has_previous: bool
    has_next: bool


def page(
    devices: Devices, size: int, after: str | None, before: str | None, only: list[str] | None
) -> DevicePage:
    """One cursor page: after ``after``, before ``before``, or from the start."""
    if before is not None and after is None:
        found = list(itertools.islice(devices.before(before, only), size + 1))
        ids = found[:size][::-1]
        has_next = bool(ids) and next(devices.after(ids[-1], only), None) is not None
        return DevicePage(ids, bool(ids) and len(found) > size, has_next)
    found = list(itertools.islice(devices.after(after, only), size + 1))
    ids = found[:size]
    has_previous = bool(ids) and next(devices.before(ids[0], only), None) is not None
    return DevicePage(ids, has_previous, bool(ids) and len(found) > size)


# --- attributes --------------------------------------------------------------------------


def vehicle_traits(seed: int, owner: Owner) -> dict[str, object]:
    """The Vehicle fields a seeded vehicle has, from (seed, owner); no URLs."""
    d = digest(seed, b"vehicle", owner.index * 2 + owner.slot)
    make, model, battery = _VEHICLES[d[0] % len(_VEHICLES)]
    integrated = _INTEGRATED[d[1] % len(_INTEGRATED)]
    return {
        "integrated": integrated,
        "battery_size_watt_hours": battery,
        "effective_battery_size_watt_hours": battery * (90 + d[2] % 11) // 100,
        "maximum_charge_limit_percentage": (80, 90, 100)[d[3] % 3],
        "description": f"My {make} {model}",
        "disabled": d[4] % 10 == 0,
        "smart_charging_enabled": integrated == "ACTIVE" and d[5] % 4 != 0,
        "vehicle_class": "COMMERCIAL"
        if model == "E-Transit"
        else ("PASSENGER", None)[d[6] % 5 // 4],
    }


def cpid(evse_id: str) -> str:
    """An EVSE's chargepoint id: ``CP`` and the ULID of its id, so a cpid filter is a lookup."""
    return CPID_PREFIX + evse_id[4:]


def evse_id_of_cpid(value: str) -> str | None:
    if not value.startswith(CPID_PREFIX) or len(value) != len(CPID_PREFIX) + 26:
        return None
    return EVSE + value[len(CPID_PREFIX) :]


def evse_traits(seed: int, owner: Owner) -> dict[str, object]:
    """The EVSE fields that are not URLs or the location, from (seed, owner)."""
    kind = b"site-evse" if owner.site else b"evse"
    d = digest(seed, kind + b"-traits", owner.index * 64 + owner.slot)
    return {
        "lock_mode": _LOCK_MODES[d[0] % len(_LOCK_MODES)],
        "lifecycle_state": _LIFECYCLE[d[1] % len(_LIFECYCLE)],
    }
