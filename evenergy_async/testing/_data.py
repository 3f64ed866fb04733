"""The fake's data: seeded suppliers, tariffs, EVSE sites and users, all derived from ``seed``.

Suppliers, tariffs and sites are few and built eagerly. Users may number a million, so a seeded
user is never stored: :meth:`UserStore.get` rebuilds it from its index on demand. Users created
or patched through the API live in an overlay keyed by index, which wins over the seeded value.

Indexing conventions (they make every lookup O(1) without materialising users):

- user ``i`` has id ``"user" + ULID(BASE_MS + i * USER_STEP_MS, hash(seed, i))``; ids sort by index,
  and a created user takes the next index, so it sorts after every seeded user;
- a seeded user's email is ``first.last.<i>@example.<tld>``, so an email lookup parses ``i`` back
  out and compares; emails of created or patched users are kept in a dict (lower-cased);
- seeded user ``i`` has tariff ``i % tariffs`` (every tariff is used once users >= tariffs);
  user 0 (the static token's "me") always has a full address.
"""

from __future__ import annotations

import functools
import time
from datetime import date, datetime, timedelta, timezone

import attrs

from evenergy_async.testing._ids import decode_time, digest, make_id

BASE_MS = 1_640_995_200_000  # 2022-01-01T00:00:00Z
USER_STEP_MS = 60_000
_OTHER_BASE_MS = 1_609_459_200_000  # 2021-01-01T00:00:00Z, for suppliers, tariffs, sites

_COUNTRY_CODES_TEXT = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
    BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW
    GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY
    KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV
    MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG
    TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM
    ZW
"""
COUNTRY_CODES = frozenset(_COUNTRY_CODES_TEXT.split())  # the spec's CountryCode enum

_FIRST_NAMES_TEXT = (
    "Frodo Samwise Meriadoc Peregrin Bilbo Rosie Lobelia Hamfast Elanor Belladonna Arwen Eowyn "
    "Faramir Boromir Aragorn Galadriel Celeborn Legolas Gimli Theoden Eomer Haldir Elrond Gandalf "
    "Radagast Beregond Ioreth Imrahil Denethor Gamling Erkenbrand Hama Grima Gilraen Idril Tuor "
    "Luthien Beren Finrod Fingon Maedhros Nimrodel Amroth Glorfindel Cirdan Thranduil Dis Dwalin"
)
_FIRST_NAMES = _FIRST_NAMES_TEXT.split()
_LAST_NAMES_TEXT = (
    "Baggins Gamgee Brandybuck Took Cotton Bolger Proudfoot Sackville Burrows Hornblower Boffin "
    "Bracegirdle Chubb Goodbody Grubb Maggot Underhill Butterbur Ferny Goatleaf Heathertoes "
    "Mugwort Rushlight Sandheaver Thistlewool Appledore Banks Button Hayward Noakes Twofoot "
    "Whitfoot Smallburrow Sandyman Longhole Hogg Greenhand Brockhouse Gardner Fairbairn"
)
_LAST_NAMES = _LAST_NAMES_TEXT.split()
_FIRST_LOWER = [name.lower() for name in _FIRST_NAMES]
_LAST_LOWER = [name.lower() for name in _LAST_NAMES]
_TLDS = ("com", "org", "net")
_STREETS = (
    "High Street",
    "Station Road",
    "Church Lane",
    "Mill Road",
    "Park Avenue",
    "Victoria Road",
    "Green Lane",
    "Manor Road",
    "Kings Road",
    "Queens Road",
    "New Street",
    "The Crescent",
    "Bagshot Row",
    "Orchard Way",
    "Bridge Street",
    "Meadow Close",
)
_GB_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"


@attrs.frozen
class City:
    name: str
    state: str
    country_code: str
    postal_prefix: str  # GB: outward area letters; elsewhere: leading digits / letters
    latitude: float
    longitude: float


_LONDON = City("London", "Greater London", "GB", "SE", 51.5072, -0.1276)
_CITIES = (
    _LONDON,
    City("London", "Greater London", "GB", "N", 51.5560, -0.1160),
    City("London", "Greater London", "GB", "SW", 51.4613, -0.1650),
    City("Manchester", "Greater Manchester", "GB", "M", 53.4808, -2.2426),
    City("Bristol", "City of Bristol", "GB", "BS", 51.4545, -2.5879),
    City("Leeds", "West Yorkshire", "GB", "LS", 53.8008, -1.5491),
    City("Birmingham", "West Midlands", "GB", "B", 52.4862, -1.8904),
    City("Edinburgh", "City of Edinburgh", "GB", "EH", 55.9533, -3.1883),
    City("Glasgow", "Glasgow City", "GB", "G", 55.8642, -4.2518),
    City("Cardiff", "Cardiff", "GB", "CF", 51.4816, -3.1791),
    City("Liverpool", "Merseyside", "GB", "L", 53.4084, -2.9916),
    City("Brighton", "East Sussex", "GB", "BN", 50.8225, -0.1372),
    City("Oxford", "Oxfordshire", "GB", "OX", 51.7520, -1.2577),
    City("Cambridge", "Cambridgeshire", "GB", "CB", 52.2053, 0.1218),
    City("Newcastle upon Tyne", "Tyne and Wear", "GB", "NE", 54.9783, -1.6178),
    City("Belfast", "County Antrim", "GB", "BT", 54.5973, -5.9301),
    City("Dublin", "County Dublin", "IE", "D0", 53.3498, -6.2603),
    City("Madrid", "Community of Madrid", "ES", "280", 40.4168, -3.7038),
    City("Austin", "TX", "US", "787", 30.2672, -97.7431),
    City("Berlin", "Berlin", "DE", "101", 52.5200, 13.4050),
)

_SUPPLIER_NAMES = (
    "Rivendell Renewables",
    "Shire Power",
    "Gondor Grid",
    "Rohan Wind",
    "Erebor Energy",
    "Lothlorien Light",
    "Moria Geothermal",
    "Bree Electric",
    "Dale Hydro",
    "Fangorn Biomass",
)
_PRODUCTS = (
    "EV Saver",
    "Night Owl",
    "Flexible",
    "Fixed 12M",
    "Agile Dynamic",
    "Green Flex",
    "Smart Charge",
    "Economy 7",
    "Tracker",
    "Go Further",
    "Cosy Home",
    "Sunshine",
)
_TARIFF_TYPES = (
    "FLAT_RATE",
    "DUAL_RATE",
    "THREE_RATE",
    "DYNAMIC",
    "DUAL_RATE",
    "FLAT_RATE",
    "EXTERNALLY_MANAGED",
    "THREE_RATE",
    "DUAL_RATE",
    "OTHER",
)
_GSP_GROUPS = ("_A", "_B", "_C", "_D", "_E", "_F", "_G", "_H", "_J", "_K", "_L", "_M", "_N", "_P")
_CPMS = ((None, None), ("CHARGEPOINT", "ChargePoint"), ("SWTCH", "SWTCH"))


def iso_datetime(epoch_seconds: int) -> str:
    """RFC 3339 UTC timestamp with a ``Z`` suffix, whole seconds."""
    day, second = divmod(epoch_seconds, 86400)
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    return f"{_iso_day(day)}T{hour:02d}:{minute:02d}:{second:02d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_day(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def now_iso() -> str:
    """The current UTC time with microseconds, as Django REST framework writes it."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


# --- suppliers, tariffs, sites ------------------------------------------------------------


@attrs.frozen
class SupplierRecord:
    index: int
    id: str
    name: str
    icon: str | None
    highlighted: bool


@attrs.frozen
class Band:
    """One band of a time-of-use tariff: a price in minor units over daily windows (minutes)."""

    minor_units: int
    windows: tuple[tuple[int, int], ...]  # (start, end) minutes; end <= start wraps midnight

    def covers(self, minute: int) -> bool:
        for start, end in self.windows:
            if start < end and start <= minute < end:
                return True
            if end <= start and (minute >= start or minute < end):
                return True
        return False


@attrs.frozen
class TariffRecord:
    index: int
    id: str
    supplier: int
    name: str
    currency: str
    highlighted: bool
    type: str
    bands: tuple[tuple[str, Band], ...]  # ("peak" | "mid_peak" | "off_peak", band)
    timezone_name: str
    price_chart_url: str | None
    gsp_group: str | None
    valid_from: date
    valid_until: date | None
    scheduler_tariff: int | None

    def is_valid_on(self, day: date) -> bool:
        """Open to new sign-ups on ``day`` (the ``valid`` filter of ``GET /tariffs``)."""
        return self.valid_from <= day and (self.valid_until is None or self.valid_until >= day)

    def daily_prices(self) -> dict[str, object]:
        """The DailyPrices object: band -> {price (major units, string), times}."""
        return {
            name: {
                "price": f"{band.minor_units / 100:.2f}",
                "times": [
                    {"start": _hhmmss(start), "end": _hhmmss(end)} for start, end in band.windows
                ],
            }
            for name, band in self.bands
        }

    def price_at(self, seed: int, when: datetime) -> int | None:
        """Price in minor units at ``when`` (UTC aware); None when externally managed."""
        if self.type == "EXTERNALLY_MANAGED":
            return None
        if self.type == "DYNAMIC":
            slot = int(when.timestamp()) // 1800
            return 5 + digest(seed, b"dynamic-price", self.index * 1_000_003 + slot)[0] % 40
        local = _to_local(when, self.timezone_name)
        minute = local.hour * 60 + local.minute
        for _name, band in self.bands:
            if band.covers(minute):
                return band.minor_units
        return self.bands[0][1].minor_units


@attrs.frozen
class SiteRecord:
    index: int
    id: str
    evses: tuple[str, ...]
    cpms_connection: str | None
    cpms_connection_display_name: str | None


def _hhmmss(minutes: int) -> str:
    return f"{minutes // 60 % 24:02d}:{minutes % 60:02d}:00"


def _to_local(when: datetime, zone: str) -> datetime:
    try:
        from zoneinfo import ZoneInfo

        return when.astimezone(ZoneInfo(zone))
    except Exception:  # no tz database: UTC is close enough for a fake
        return when


def _bands(kind: str, step: int) -> tuple[tuple[str, Band], ...]:
    peak = 28 + step
    if kind == "DUAL_RATE":
        return (
            ("peak", Band(peak, ((330, 1410),))),
            ("off_peak", Band(7 + step, ((1410, 330),))),
        )
    if kind == "THREE_RATE":
        return (
            ("peak", Band(peak + 10, ((960, 1140),))),
            ("mid_peak", Band(peak - 4, ((420, 960), (1140, 1380)))),
            ("off_peak", Band(9 + step, ((1380, 420),))),
        )
    return (("peak", Band(peak, ((0, 0),))),)


def build_suppliers(seed: int, count: int) -> tuple[SupplierRecord, ...]:
    suppliers = []
    for k in range(count):
        base = _SUPPLIER_NAMES[k % len(_SUPPLIER_NAMES)]
        name = base if k < len(_SUPPLIER_NAMES) else f"{base} {k // len(_SUPPLIER_NAMES) + 1}"
        slug = name.lower().replace(" ", "_")
        suppliers.append(
            SupplierRecord(
                index=k,
                id=make_id("supl", _OTHER_BASE_MS + k * 1000, digest(seed, b"supplier", k)),
                name=name,
                icon=None if k % 4 == 3 else f"https://cdn.example.com/{slug}.png",
                highlighted=k < 2,
            )
        )
    return tuple(suppliers)


def build_tariffs(
    seed: int, count: int, suppliers: tuple[SupplierRecord, ...]
) -> tuple[TariffRecord, ...]:
    if count and not suppliers:
        raise ValueError("tariffs need at least one supplier")
    tariffs = []
    for k in range(count):
        supplier = suppliers[k % len(suppliers)]
        kind = _TARIFF_TYPES[k % len(_TARIFF_TYPES)]
        euro = k % 10 == 9
        short = supplier.name.split()[0]
        tariffs.append(
            TariffRecord(
                index=k,
                id=make_id("tari", _OTHER_BASE_MS + 86_400_000 + k * 1000, digest(seed, b"t", k)),
                supplier=supplier.index,
                name=f"{short} {_PRODUCTS[(k * 7 + seed) % len(_PRODUCTS)]}",
                currency="EUR" if euro else "GBP",
                highlighted=k % 6 == 0,
                type=kind,
                bands=_bands(kind, k % 5),
                timezone_name="Europe/Madrid" if euro else "Europe/London",
                price_chart_url=None if k % 3 else f"https://charts.example.com/tariffs/{k}",
                gsp_group=None if euro or k % 5 == 0 else _GSP_GROUPS[k % len(_GSP_GROUPS)],
                valid_from=date(2035, 1, 1) if k % 11 == 5 else date(2023, 1, 1) + timedelta(k),
                valid_until=date(2024, 12, 31) if k % 7 == 3 else None,
                scheduler_tariff=(k + 1) % count if k % 4 == 1 and count > 1 else None,
            )
        )
    return tuple(tariffs)


def build_sites(seed: int, count: int) -> tuple[SiteRecord, ...]:
    sites = []
    for j in range(count):
        entropy = digest(seed, b"site", j)
        time_ms = _OTHER_BASE_MS + 2 * 86_400_000 + j * 1000
        evses = tuple(
            make_id("evse", time_ms + n, digest(seed, b"site-evse", j * 64 + n))
            for n in range(2 + entropy[12] % 5)
        )
        cpms, display = _CPMS[(j + 1) % len(_CPMS)]
        sites.append(SiteRecord(j, make_id("site", time_ms, entropy), evses, cpms, display))
    return tuple(sites)


# --- users ---------------------------------------------------------------------------------


@attrs.define
class LocationRecord:
    """A user's default location; tariff and evse_site are indexes, not URLs."""

    address_1: str | None = None
    address_2: str | None = None
    postal_code: str | None = None
    country_code: str | None = None
    coordinates: tuple[float, float] | None = None
    tariff: int | None = None
    city: str | None = None
    state: str | None = None
    evse_site: int | None = None


@attrs.define
class UserRecord:
    email: str
    full_name: str
    joined_at: str
    terms_consent_datetime: str | None
    location: LocationRecord
    vehicles: tuple[str, ...] = ()
    evses: tuple[str, ...] = ()


def _postal_code(city: City, entropy: bytes) -> str:
    if city.country_code == "GB":
        letters = _GB_LETTERS[entropy[0] % 20] + _GB_LETTERS[entropy[1] % 20]
        return f"{city.postal_prefix}{1 + entropy[2] % 20} {entropy[3] % 10}{letters}"
    if city.country_code == "IE":
        return f"{city.postal_prefix}{1 + entropy[2] % 8} X{entropy[3] % 10}{entropy[0] % 90 + 10}"
    return f"{city.postal_prefix}{entropy[2] % 100:02d}"


def _seeded_location(i: int, d: bytes, tariffs: int, sites: int) -> LocationRecord:
    tariff = i % tariffs if tariffs else None
    if i and d[15] % 10 == 0:
        return LocationRecord(tariff=tariff)  # no address on file
    city = _LONDON if i == 0 else _CITIES[d[16] % len(_CITIES)]
    street = _STREETS[d[17] % len(_STREETS)]
    return LocationRecord(
        address_1=f"{1 + d[18] % 200} {street}",
        address_2=f"Flat {1 + d[19] % 30}" if d[19] % 4 == 0 else None,
        postal_code=_postal_code(city, d[20:24]),
        country_code=city.country_code,
        coordinates=(
            round(city.latitude + (d[24] - 128) / 4000, 6),
            round(city.longitude + (d[25] - 128) / 2500, 6),
        ),
        tariff=tariff,
        city=city.name,
        state=None if d[26] % 3 == 0 else city.state,
        evse_site=d[28] % sites if sites and d[27] % 8 == 0 else None,
    )


class UserStore:
    """All users: seeded ones rebuilt from their index, API writes kept in an overlay."""

    def __init__(self, seed: int, seeded: int, tariffs: int, sites: int) -> None:
        self.seed = seed
        self.seeded = seeded
        self._tariffs = tariffs
        self._sites = sites
        self._overlay: dict[int, UserRecord] = {}
        self._emails: dict[str, int] = {}  # lower-cased email -> index, overlay users only
        self.count = seeded
        self.version = 0  # bumped on every write; list caches key on it

    # ids
    def id_of(self, index: int) -> str:
        return self._id(index, self._digest(index))

    def _digest(self, index: int) -> bytes:
        return digest(self.seed, b"user", index, 64)

    @staticmethod
    def _id(index: int, entropy: bytes) -> str:
        return make_id("user", BASE_MS + index * USER_STEP_MS, entropy)

    def index_of(self, user_id: str) -> int | None:
        """The index of an existing user id, or None; O(1)."""
        if len(user_id) != 30 or not user_id.startswith("user"):
            return None
        time_ms = decode_time(user_id[4:])
        if time_ms is None:
            return None
        index, rest = divmod(time_ms - BASE_MS, USER_STEP_MS)
        if rest or not 0 <= index < self.count or self.id_of(index) != user_id:
            return None
        return index

    def position_after(self, cursor: str) -> int:
        """How many user ids are <= cursor (the start of the page after it)."""
        index = self.index_of(cursor)
        return index + 1 if index is not None else self._bisect(cursor)

    def position_before(self, cursor: str) -> int:
        """How many user ids are < cursor (the end of the page before it)."""
        index = self.index_of(cursor)
        return index if index is not None else self._bisect(cursor)

    def _bisect(self, cursor: str) -> int:
        low, high = 0, self.count
        while low < high:
            middle = (low + high) // 2
            if self.id_of(middle) < cursor:
                low = middle + 1
            else:
                high = middle
        return low

    # records
    def get(self, index: int) -> UserRecord:
        return self.entry(index)[1]

    def entry(self, index: int) -> tuple[str, UserRecord]:
        """The id and current record of user ``index``."""
        d = self._digest(index)
        record = self._overlay.get(index)
        if record is None:
            record = self._seeded(index, d)
        return self._id(index, d), record

    def seeded_user(self, index: int) -> UserRecord:
        return self._seeded(index, self._digest(index))

    def _seeded(self, i: int, d: bytes) -> UserRecord:
        """Seeded user ``i`` from its 64-byte digest: 0-9 id, 10-31 traits, 32-61 related ids."""
        first = d[10] % len(_FIRST_NAMES)
        last = d[11] % len(_LAST_NAMES)
        joined = (BASE_MS + i * USER_STEP_MS) // 1000
        return UserRecord(
            email=f"{_FIRST_LOWER[first]}.{_LAST_LOWER[last]}.{i}@example.{_TLDS[d[12] % 3]}",
            full_name=f"{_FIRST_NAMES[first]} {_LAST_NAMES[last]}",
            joined_at=iso_datetime(joined),
            terms_consent_datetime=None if d[13] % 5 == 0 else iso_datetime(joined + d[14] * 60),
            location=_seeded_location(i, d, self._tariffs, self._sites),
            vehicles=_related(i, "vhcl", d[29] % 3, d[32:52]),
            evses=_related(i, "evse", d[30] % 2, d[52:62]),
        )

    def find_email(self, email: str) -> int | None:
        """The index of the user with this email (case-insensitive), or None."""
        key = email.lower()
        index = self._emails.get(key)
        if index is not None:
            return index
        index = _seeded_email_index(key)
        if index is None or index >= self.seeded or index in self._overlay:
            return None
        return index if self.seeded_user(index).email == key else None

    # writes
    def create(self, record: UserRecord) -> int:
        index = self.count
        self.count += 1
        self._put(index, record)
        return index

    def replace(self, index: int, record: UserRecord) -> None:
        old = self._overlay.get(index)
        if old is not None:
            self._emails.pop(old.email.lower(), None)
        self._put(index, record)

    def _put(self, index: int, record: UserRecord) -> None:
        self._overlay[index] = record
        self._emails[record.email.lower()] = index
        self.version += 1


def _related(i: int, prefix: str, count: int, entropy: bytes) -> tuple[str, ...]:
    """Up to two ids of a user's vehicles or EVSEs, made just after the user."""
    if not count:
        return ()
    time_ms = BASE_MS + i * USER_STEP_MS + 1000
    first = make_id(prefix, time_ms, entropy)
    return (first,) if count == 1 else (first, make_id(prefix, time_ms + 1, entropy[10:]))


def _seeded_email_index(email: str) -> int | None:
    local, _, domain = email.partition("@")
    if not domain.startswith("example."):
        return None
    _, _, number = local.rpartition(".")
    return int(number) if number.isdigit() and number.isascii() and len(number) < 10 else None
