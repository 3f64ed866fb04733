"""Bulk user sync, the pure half: records, keys, shards, matching, diffs and request bodies.

No I/O and no event loop: `resources/_sync_run.py` drives these decisions over the network.

A record is a user in the API's JSON shape (what ``evenergy users export`` writes) or an
``ev.User``.  It names its user by ``id`` when it has one (so an email can change), otherwise by
``email`` (case-insensitive, as the API's ``email=`` filter).  Fields a record leaves out are
left alone; ``url`` and the read-only fields are ignored; unknown fields are refused, so a typo
never passes silently.  ``"default_location": null`` clears every location field, as
``update(default_location=None)`` does.

What is sent for a user that differs (`plan_update`): only the fields that differ, plus the
address fields the API's address rule needs beside them.  The rule applies to the location
object *as sent* (API-NOTES "Address rule"): when any of address_1, address_2, city, state,
postal_code, country_code or coordinates is sent non-null, address_1, city, postal_code and
country_code must all be sent non-null; so a new city alone is sent with the current (or
wished) address_1, postal_code and country_code.  Never email, tariff, evse_site or
coordinates unless they changed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from . import _bodies as b
from . import _validate as v
from .errors import EvEnergyError, InvalidRequest
from .models import UNSET, LatLong, Location, SyncAction, SyncOutcome, UnsetType, User
from .refs import Ref

__all__ = [
    "LOCATION_FIELDS",
    "Batch",
    "Lookup",
    "Record",
    "SyncPlan",
    "Update",
    "budget_wait",
    "check_concurrency",
    "check_lookup",
    "check_shard",
    "create_location",
    "failed",
    "keep_listing",
    "outcome",
    "parse_record",
    "plan_update",
    "server_location",
    "shard_of",
]

# The API's writable location fields, in the order a Record keeps them.
LOCATION_FIELDS = b.WRITABLE_LOCATION_FIELDS
_ADDRESS_TRIGGERS = frozenset(
    {"address_1", "address_2", "city", "state", "postal_code", "country_code", "coordinates"}
)
_ADDRESS_REQUIRED = ("address_1", "city", "postal_code", "country_code")
_READ_ONLY_USER = frozenset(
    {"url", "full_name", "joined_at", "terms_consent_datetime", "vehicles", "evses"}
)
_READ_ONLY_LOCATION = frozenset({"current_carbon_intensity_grams_per_kilowatt_hour"})
_RELATIONS = ("tariff", "evse_site")

# A location field's value in one comparable form: text, (latitude, longitude), a relation's
# URL, or None (null).  A record keeps UNSET for a field it leaves alone.
Wire = str | tuple[float, float] | None
Lookup = Literal["auto", "list", "each"]
_LOOKUPS = ("auto", "list", "each")

PAGE_SIZE = 100  # the API's largest page: the cheapest listing


@attrs.frozen(kw_only=True)
class Record:
    """One validated record: what its user should look like."""

    index: int
    id: str | None
    email: str | None
    location: tuple[Wire | UnsetType, ...]  # LOCATION_FIELDS order; UNSET: leave alone

    @property
    def key(self) -> str:
        """What names the record's user: its id, else its email lowercased."""
        return self.id if self.id is not None else _email_key(self.email)

    def given(self) -> dict[str, Wire]:
        return {
            name: value
            for name, value in zip(LOCATION_FIELDS, self.location, strict=True)
            if value is not UNSET
        }


def _email_key(email: str | None) -> str:
    assert email is not None  # a record without an id has an email (parse_record)
    return email.lower()


# --- reading a record --------------------------------------------------------------------------


def parse_record(raw: object, index: int) -> Record:
    """A record (API-shaped mapping or ev.User) checked as `create`/`update` check their input;
    InvalidRequest names the first offending field."""
    if isinstance(raw, User):
        return _from_user(raw, index)
    if not isinstance(raw, Mapping):
        raise InvalidRequest("record", f"expected a JSON object or an ev.User, got {_kind(raw)}")
    for key in raw:
        if key not in _READ_ONLY_USER and key not in ("id", "email", "default_location"):
            raise InvalidRequest(str(key), "unknown field")
    user_id = raw.get("id")
    if user_id is not None:
        user_id = v.check_id(user_id, v.USER_ID, "id")
    email = raw.get("email")
    if email is not None:
        email = v.check_email(email)
    elif user_id is None:
        raise InvalidRequest("email", "a record without an id needs an email")
    location: tuple[Wire | UnsetType, ...] = (UNSET,) * len(LOCATION_FIELDS)
    if "default_location" in raw:
        location = _location_from_json(raw["default_location"])
    return Record(index=index, id=user_id, email=email, location=location)


def _from_user(user: User, index: int) -> Record:
    user_id = v.check_id(user.id, v.USER_ID, "id")
    email = v.check_email(user.email) if user.email is not UNSET else None
    location: tuple[Wire | UnsetType, ...] = (UNSET,) * len(LOCATION_FIELDS)
    if user.default_location is not UNSET:
        location = _checked(user.default_location)
    return Record(index=index, id=user_id, email=email, location=location)


def _location_from_json(data: object) -> tuple[Wire | UnsetType, ...]:
    field = "default_location"
    if data is None:
        return (None,) * len(LOCATION_FIELDS)
    if not isinstance(data, Mapping):
        raise InvalidRequest(field, f"expected an object or null, got {_kind(data)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _READ_ONLY_LOCATION:
            continue
        if key not in LOCATION_FIELDS:
            raise InvalidRequest(f"{field}.{key}", "unknown field")
        if key == "coordinates":
            value = _lat_long(value)
        elif key in _RELATIONS:
            value = _relation(value, f"{field}.{key}")
        values[key] = value
    return _checked(Location(**values))


def _lat_long(value: object) -> LatLong | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"latitude", "longitude"}:
        raise InvalidRequest(
            "default_location.coordinates",
            f"expected {{latitude, longitude}} or null, got {value!r}",
        )
    return LatLong(value["latitude"], value["longitude"])


def _relation(value: object, field: str) -> Ref[Any] | None:
    """A relation as `export` writes it: its URL, null, or (``--expand``) the object itself."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise InvalidRequest(field, "expected a URL, an object with its url, or null")
    return Ref(value)


def _checked(location: object) -> tuple[Wire | UnsetType, ...]:
    """The Location's fields in comparable form, after the checks `update` makes of a
    Location (types, country code, coordinates' range), but the address rule: a record's
    location is merged into the server's, and the merged body is checked before it is sent."""
    wire = b.location_body(location, address_rule=False)
    return tuple(
        _comparable(name, wire[name]) if name in wire else UNSET for name in LOCATION_FIELDS
    )


def _comparable(name: str, value: Any) -> Wire:
    if name == "coordinates" and value is not None:
        return (float(value["latitude"]), float(value["longitude"]))
    assert value is None or isinstance(value, str)
    return value


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


# --- the server's side ---------------------------------------------------------------------------


def server_location(user: User) -> dict[str, Wire]:
    """Every location field of a user as the server sent it, comparable with a Record's."""
    location = user.default_location
    result: dict[str, Wire] = {}
    for name in LOCATION_FIELDS:
        value = getattr(location, name, None) if location is not UNSET else None
        if value is UNSET or value is None:
            result[name] = None
        elif isinstance(value, LatLong):
            result[name] = (float(value.latitude), float(value.longitude))
        elif isinstance(value, Ref):
            result[name] = value.url
        else:
            result[name] = str(value)
    return result


@attrs.frozen
class Update:
    """What a record asks of its user: the changed field paths and the PATCH arguments."""

    changed: tuple[str, ...]
    email: str | UnsetType
    location: Location | UnsetType


def plan_update(record: Record, email: str | UnsetType, current: Mapping[str, Wire]) -> Update:
    """The smallest PATCH that makes the server's user (`email`, `current` location) match
    `record`; InvalidRequest when the merged location would break the address rule."""
    changed: list[str] = []
    new_email: str | UnsetType = UNSET
    if record.email is not None and record.email != email:
        new_email = record.email
        changed.append("email")
    sent: dict[str, Wire] = {}
    for name, wished in zip(LOCATION_FIELDS, record.location, strict=True):
        if wished is not UNSET and wished != current.get(name):
            sent[name] = wished
            changed.append(f"default_location.{name}")
    if any(sent[name] is not None for name in sent if name in _ADDRESS_TRIGGERS):
        for name in _ADDRESS_REQUIRED:
            if name not in sent:
                wished = record.location[LOCATION_FIELDS.index(name)]
                sent[name] = current.get(name) if wished is UNSET else wished
    location: Location | UnsetType = _location(sent) if sent else UNSET
    # The same checks `update` makes, so a dry run fails what a real run would.
    b.user_body(email=new_email, default_location=location)
    return Update(tuple(changed), new_email, location)


def create_location(record: Record) -> tuple[tuple[str, ...], Location | UnsetType]:
    """The field paths and the location of a `create` for `record` (checked as `create`
    checks it)."""
    given = record.given()
    location = _location(given) if given else UNSET
    b.user_body(email=record.email or "", default_location=location)
    return ("email", *(f"default_location.{name}" for name in given)), location


def _location(fields: Mapping[str, Wire]) -> Location:
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "coordinates" and isinstance(value, tuple):
            values[name] = LatLong(*value)
        elif name in _RELATIONS and isinstance(value, str):
            values[name] = Ref(value)
        else:
            values[name] = value
    return Location(**values)


# --- which records a run takes, and who is whose -------------------------------------------------


def check_shard(shard: object) -> tuple[int, int] | None:
    if shard is None:
        return None
    if (
        isinstance(shard, tuple)
        and len(shard) == 2
        and all(type(n) is int for n in shard)
        and shard[1] >= 1
        and 0 <= shard[0] < shard[1]
    ):
        return (shard[0], shard[1])
    raise InvalidRequest("shard", f"expected (k, n) with 0 <= k < n, got {shard!r}")


def check_concurrency(value: object) -> int:
    if type(value) is not int or not 1 <= value <= 1000:
        raise InvalidRequest(
            "concurrency", f"expected a whole number from 1 to 1000, got {value!r}"
        )
    return value


def check_lookup(value: object) -> Lookup:
    if value not in _LOOKUPS:
        raise InvalidRequest("lookup", f"expected one of {', '.join(_LOOKUPS)}, got {value!r}")
    return value  # type: ignore[return-value]


def shard_of(key: str, n: int) -> int:
    """The shard of a key, stable across processes and Python versions (not `hash()`)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


class Batch:
    """The records of one run (one shard), by id and by email, and who claims which user.

    Each user may be named once: a record whose id, or whose email, an earlier record already
    gave is a duplicate and fails; the earlier one stands.  Holds one small `Record` per
    record of the shard, and nothing of the server's.
    """

    def __init__(self, shard: tuple[int, int] | None = None) -> None:
        self.shard = shard
        self.by_id: dict[str, Record] = {}
        self.by_email: dict[str, Record] = {}  # records without an id, by lowercased email
        self._claims: dict[str, int] = {}  # "id:…" / "email:…" -> index of the record

    def __len__(self) -> int:
        return len(self.by_id) + len(self.by_email)

    def add(self, raw: object, index: int) -> SyncOutcome | None:
        """Take a record in; a failed outcome if it is invalid or a duplicate, None if it is
        taken (or belongs to another shard)."""
        try:
            record = parse_record(raw, index)
        except InvalidRequest as exc:
            # An unreadable record has no key: its shard is its position in the input.
            if self.shard is not None and index % self.shard[1] != self.shard[0]:
                return None
            return failed(index, _guess_email(raw), exc, _guess_id(raw))
        if self.shard is not None and shard_of(record.key, self.shard[1]) != self.shard[0]:
            return None
        claims = []
        if record.id is not None:
            claims.append(("id:" + record.id, f"id {record.id}"))
        if record.email is not None:
            claims.append(("email:" + record.email.lower(), f"email {record.email}"))
        for claim, what in claims:
            earlier = self._claims.get(claim)
            if earlier is not None:
                error = InvalidRequest(
                    "record", f"a second record for {what} (first: record {earlier})"
                )
                return failed(index, record.email, error, record.id)
        for claim, _ in claims:
            self._claims[claim] = index
        if record.id is not None:
            self.by_id[record.id] = record
        else:
            self.by_email[_email_key(record.email)] = record
        return None

    def match(
        self, user_id: str, email: str | UnsetType
    ) -> list[tuple[Record, SyncOutcome | None]]:
        """The records that name the server's user (`user_id`, `email`), each with None, or
        with its failed outcome when another record names the same user.

        A record naming the user by email does not match when a record with the user's id
        gives it another email: that user is being renamed, so the email will be free and the
        email's record stands for a new user.  When both name it and neither renames it, the
        earlier record in the input is applied and the later fails.
        """
        by_id = self.by_id.get(user_id)
        by_email = self.by_email.get(email.lower()) if isinstance(email, str) else None
        if by_email is not None and by_id is not None and by_id.email is not None:
            if by_id.email.lower() != _email_key(by_email.email):
                by_email = None
        found = [r for r in (by_id, by_email) if r is not None]
        if len(found) < 2:
            return [(r, None) for r in found]
        first, second = sorted(found, key=lambda r: r.index)
        error = InvalidRequest(
            "record", f"a second record for user {user_id} (first: record {first.index})"
        )
        return [(first, None), (second, failed(second.index, second.email, error, user_id))]


def _guess_email(raw: object) -> str | None:
    email = raw.get("email") if isinstance(raw, Mapping) else getattr(raw, "email", None)
    return email if isinstance(email, str) else None


def _guess_id(raw: object) -> str | None:
    user_id = raw.get("id") if isinstance(raw, Mapping) else getattr(raw, "id", None)
    return user_id if isinstance(user_id, str) else None


# --- outcomes ----------------------------------------------------------------------------------


def outcome(
    action: SyncAction,
    record: Record,
    user: User | None,
    changed: tuple[str, ...] = (),
    *,
    server: User | None = None,
) -> SyncOutcome:
    """The outcome for `record`: `user` is what the server now holds (None in a dry run),
    `server` the user as found, for the email and id when `user` is None."""
    known = user or server
    return SyncOutcome(
        action=action,
        email=record.email if record.email is not None else _user_email(known),
        user=user,
        changed=changed,
        id=known.id if known is not None else record.id,
        index=record.index,
    )


def failed(
    index: int, email: str | None, error: EvEnergyError, user_id: str | None = None
) -> SyncOutcome:
    return SyncOutcome(action="failed", email=email, error=error, id=user_id, index=index)


def _user_email(user: User | None) -> str | None:
    return user.email if user is not None and isinstance(user.email, str) else None


# --- how users are found -----------------------------------------------------------------------


def keep_listing(pages: int, unmatched: int, records: int, lookup: Lookup) -> bool:
    """Whether to fetch another page of the full listing, after `pages` pages found all but
    `unmatched` of the `records` records to match.

    A page costs one request and finds up to 100 users; looking a record up costs one
    request.  The listing's length is unknown until its last page (the API gives no count),
    so ``"auto"`` lists at most as many pages as there are records to match: when the
    listing is shorter it has cost fewer requests than the look-ups would, and when it is
    not, the records still unmatched are looked up one by one, so the look-up never costs
    more than twice the cheaper choice (the ski-rental bound), plus the one page the stream
    has already asked for when it stops early: 2 × records + 1 at most.
    """
    if unmatched == 0:
        return False
    return lookup == "list" or pages < records


@attrs.frozen(kw_only=True)
class SyncPlan:
    """What a run will spend finding users, told before its first write.

    `max_lookup_requests` bounds the look-up's requests; None for ``lookup="list"``, whose
    cost is ceil(users on the server / 100), unknown until the listing ends.
    """

    records: int  # records read
    refused: int  # failed before any request: invalid, duplicate (this shard's)
    to_match: int  # records to find on the server
    lookup: Lookup
    max_lookup_requests: int | None
    dry_run: bool

    @classmethod
    def build(
        cls, records: int, refused: int, to_match: int, lookup: Lookup, dry_run: bool
    ) -> SyncPlan:
        bound: int | None
        if lookup == "each":
            bound = to_match
        elif lookup == "auto":
            bound = 2 * to_match + 1 if to_match else 0
        else:
            bound = None
        return cls(
            records=records,
            refused=refused,
            to_match=to_match,
            lookup=lookup,
            max_lookup_requests=bound,
            dry_run=dry_run,
        )


def budget_wait(requests: int, remaining: int, limit: int, window: float) -> float:
    """Seconds, at most, before `requests` more requests are through a rolling `window` of
    `limit` requests that has `remaining` left now (each spent request returns a window after
    it was sent, so `limit` go per window past what is left)."""
    if requests <= remaining or limit <= 0:
        return 0.0
    return math.ceil((requests - remaining) / limit) * window
