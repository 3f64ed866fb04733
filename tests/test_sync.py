"""`client.users.sync`: the pure decisions (no loop), then whole runs against FakeEvEnergy.

Over loopback every run asserts the exact end state of the fake's users and the requests the
fake counted; nothing here measures time.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import evenergy_async as ev
from evenergy_async import _sync
from evenergy_async._sync import Batch, parse_record, plan_update
from evenergy_async.cli import to_api
from evenergy_async.resources._sync_run import bounded, fails_record
from evenergy_async.testing import FakeEvEnergy
from evenergy_async.testing._app import Exchange

USER_A = "user01HN2NJ9NMRZBXT1H6FT9N7735"
USER_B = "user01HN2NJ9NMRZBXT1H6FT9N7736"
TARIFF = "https://api.ev.energy/v2/tariffs/tari01HN2NJ9NMRZBXT1H6FT9N7735"
HOME = {
    "address_1": "1 High St",
    "address_2": None,
    "postal_code": "EC1A 1BB",
    "country_code": "GB",
    "coordinates": {"latitude": 51.5, "longitude": -0.1},
    "tariff": TARIFF,
    "city": "London",
    "state": None,
    "evse_site": None,
}
WRITES = (("PATCH", "/v2/users/{user_id}"), ("POST", "/v2/users"))


def _exported(**location: Any) -> dict[str, Any]:
    """A user as `evenergy users export` writes it."""
    return {
        "id": USER_A,
        "url": f"https://api.ev.energy/v2/users/{USER_A}",
        "email": "ann@example.com",
        "full_name": "Ann",
        "joined_at": "2024-01-01T00:00:00Z",
        "terms_consent_datetime": None,
        "default_location": {
            **HOME,
            "current_carbon_intensity_grams_per_kilowatt_hour": 120,
            **location,
        },
        "vehicles": [],
        "evses": [],
    }


def _current(**changes: Any) -> dict[str, Any]:
    """The server's side of `HOME`, in the comparable form `server_location` gives."""
    current = {**HOME, "coordinates": (51.5, -0.1)}
    current.update(changes)
    return current


# --- reading records ------------------------------------------------------------------------


def test_an_exported_user_reads_as_its_writable_fields() -> None:
    record = parse_record(_exported(), 3)
    assert record.index == 3 and record.id == USER_A and record.key == USER_A
    assert record.email == "ann@example.com"
    assert record.given() == _current()


def test_a_record_without_id_is_keyed_by_its_email_in_lower_case() -> None:
    record = parse_record({"email": "Bob@Example.COM"}, 0)
    assert record.id is None and record.key == "bob@example.com"
    assert record.given() == {}


def test_an_expanded_relation_reads_as_its_url() -> None:
    expanded = {"id": "tari01", "url": TARIFF, "name": "Agile"}
    assert parse_record(_exported(tariff=expanded), 0).given()["tariff"] == TARIFF


def test_a_null_location_clears_every_field() -> None:
    record = parse_record({"email": "a@example.com", "default_location": None}, 0)
    assert record.given() == dict.fromkeys(_sync.LOCATION_FIELDS)


def test_an_ev_user_is_a_record() -> None:
    user = ev.User(
        id=USER_A,
        url="u",
        email="ann@example.com",
        default_location=ev.Location(city="Leeds", coordinates=ev.LatLong(1, 2)),
    )
    record = parse_record(user, 0)
    assert record.id == USER_A
    assert record.given() == {"city": "Leeds", "coordinates": (1.0, 2.0)}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("not a record", "record"),
        ({"id": USER_A, "emial": "a@example.com"}, "emial"),
        ({"email": "not-an-email"}, "email"),
        ({"default_location": {"city": "X"}}, "email"),
        ({"id": "user123", "email": "a@example.com"}, "id"),
        (_exported(country_code="XX"), "default_location.country_code"),
        (_exported(coordinates={"latitude": 91, "longitude": 0}), "coordinates.latitude"),
        (_exported(coordinates="51,0"), "default_location.coordinates"),
        (_exported(city=12), "default_location.city"),
        (_exported(tariff=5), "default_location.tariff"),
        (_exported(colour="red"), "default_location.colour"),
        ({"email": "a@example.com", "default_location": "home"}, "default_location"),
    ],
)
def test_invalid_records_are_refused_naming_the_field(raw: Any, field: str) -> None:
    with pytest.raises(ev.InvalidRequest) as caught:
        parse_record(raw, 0)
    assert caught.value.field.endswith(field)


# --- what is sent -----------------------------------------------------------------------------


def test_an_identical_record_sends_nothing() -> None:
    update = plan_update(parse_record(_exported(), 0), "ann@example.com", _current())
    assert update.changed == () and update.email is ev.UNSET and update.location is ev.UNSET


def test_a_new_city_is_sent_with_the_fields_the_address_rule_needs_and_nothing_else() -> None:
    update = plan_update(parse_record(_exported(city="Leeds"), 0), "ann@example.com", _current())
    assert update.changed == ("default_location.city",)
    assert update.email is ev.UNSET
    assert update.location == ev.Location(
        address_1="1 High St", postal_code="EC1A 1BB", country_code="GB", city="Leeds"
    )


def test_a_new_tariff_alone_needs_no_address() -> None:
    other = TARIFF[:-1] + "9"
    update = plan_update(parse_record(_exported(tariff=other), 0), "ann@example.com", _current())
    assert update.changed == ("default_location.tariff",)
    assert update.location == ev.Location(tariff=ev.Ref(other))


def test_new_coordinates_bring_the_address_with_them() -> None:
    moved = {"latitude": 52.0, "longitude": 0.5}
    update = plan_update(parse_record(_exported(coordinates=moved), 0), "a", _current())
    assert "default_location.coordinates" in update.changed
    assert update.location == ev.Location(
        coordinates=ev.LatLong(52.0, 0.5),
        address_1="1 High St",
        postal_code="EC1A 1BB",
        country_code="GB",
        city="London",
    )


def test_clearing_a_field_sends_only_its_null() -> None:
    record = parse_record(_exported(address_2=None), 0)
    update = plan_update(record, "ann@example.com", _current(address_2="Flat 2"))
    assert update.changed == ("default_location.address_2",)
    assert update.location == ev.Location(address_2=None)


def test_an_email_change_by_id_sends_the_email_only() -> None:
    record = parse_record({"id": USER_A, "email": "new@example.com"}, 0)
    update = plan_update(record, "ann@example.com", _current())
    assert update.changed == ("email",)
    assert update.email == "new@example.com" and update.location is ev.UNSET


def test_a_partial_address_once_merged_is_refused_before_sending() -> None:
    record = parse_record({"email": "a@example.com", "default_location": {"city": "Leeds"}}, 0)
    empty = dict.fromkeys(_sync.LOCATION_FIELDS)
    with pytest.raises(ev.InvalidRequest, match="partial address"):
        plan_update(record, "a@example.com", empty)
    with pytest.raises(ev.InvalidRequest, match="partial address"):
        _sync.create_location(record)


def test_a_create_sends_every_field_the_record_gives() -> None:
    record = parse_record({"email": "a@example.com", "default_location": HOME}, 0)
    changed, location = _sync.create_location(record)
    assert changed[0] == "email" and "default_location.city" in changed
    assert isinstance(location, ev.Location) and location.city == "London"
    assert _sync.create_location(parse_record({"email": "a@example.com"}, 0)) == (
        ("email",),
        ev.UNSET,
    )


# --- which record names which user ------------------------------------------------------------


def _batch(*raws: Any, shard: tuple[int, int] | None = None) -> tuple[Batch, list[ev.SyncOutcome]]:
    batch = Batch(shard)
    refused = [o for i, raw in enumerate(raws) if (o := batch.add(raw, i)) is not None]
    return batch, refused


def test_a_second_record_for_the_same_user_fails_and_the_first_stands() -> None:
    batch, refused = _batch(
        {"id": USER_A, "email": "ann@example.com"},
        {"id": USER_A},  # same id
        {"email": "ANN@example.com"},  # the first record's email, in another case
        {"email": "bob@example.com"},
        {"email": "Bob@example.com"},
    )
    assert [(o.index, o.action) for o in refused] == [(1, "failed"), (2, "failed"), (4, "failed")]
    assert all(isinstance(o.error, ev.InvalidRequest) for o in refused)
    assert "first: record 0" in str(refused[0].error)
    assert "first: record 3" in str(refused[2].error)
    assert len(batch) == 2


def test_an_invalid_record_fails_with_its_reason_and_keeps_its_email() -> None:
    _, [refused] = _batch({"id": USER_A, "email": "a@example.com", "default_location": 5})
    assert refused.action == "failed" and refused.email == "a@example.com"
    assert refused.id == USER_A and refused.user is None
    assert "default_location" in str(refused.error)


def test_a_user_named_by_id_and_by_email_goes_to_the_earlier_record() -> None:
    batch, _ = _batch({"email": "ann@example.com"}, {"id": USER_A})
    (first, ok), (second, failed) = batch.match(USER_A, "Ann@example.com")
    assert (first.index, ok) == (0, None)
    assert second.index == 1 and failed is not None and failed.action == "failed"


def test_a_user_renamed_by_its_id_record_frees_its_email_for_a_new_user() -> None:
    batch, refused = _batch(
        {"id": USER_A, "email": "new@example.com"}, {"email": "ann@example.com"}
    )
    assert refused == []
    [(record, duplicate)] = batch.match(USER_A, "ann@example.com")
    assert record.index == 0 and duplicate is None


def test_shards_partition_records_by_a_stable_hash_of_their_key() -> None:
    raws = [{"email": f"u{i}@example.com"} for i in range(200)] + ["junk", 7]
    seen: list[int] = []
    for k in range(3):
        batch, refused = _batch(*raws, shard=(k, 3))
        seen.extend(r.index for r in batch.by_email.values())
        seen.extend(o.index for o in refused)
        assert 40 < len(batch) < 95  # roughly a third each
    assert sorted(seen) == list(range(202))  # every record in exactly one shard
    # Stable across processes and versions: pinned values, not hash().
    assert [_sync.shard_of(f"u{i}@example.com", 7) for i in range(5)] == [
        _sync.shard_of(f"u{i}@example.com", 7) for i in range(5)
    ]
    assert _sync.shard_of("ann@example.com", 1000) == _sync.shard_of("ann@example.com", 1000)
    assert _sync.shard_of(USER_A, 2**31) == int.from_bytes(
        __import__("hashlib").blake2b(USER_A.encode(), digest_size=8).digest(), "big"
    ) % (2**31)


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0), [0, 2], (0.0, 2), "0/2"])
def test_bad_shards_are_refused(shard: Any) -> None:
    with pytest.raises(ev.InvalidRequest):
        _sync.check_shard(shard)


def test_checks_of_the_other_arguments() -> None:
    for bad in (0, 1001, True, 2.0):
        with pytest.raises(ev.InvalidRequest):
            _sync.check_concurrency(bad)
    with pytest.raises(ev.InvalidRequest):
        _sync.check_lookup("maybe")
    assert _sync.check_lookup("each") == "each"


# --- how users are found, and what it costs ---------------------------------------------------


def test_auto_lists_at_most_as_many_pages_as_there_are_records_to_match() -> None:
    keep = _sync.keep_listing
    assert keep(pages=1, unmatched=450, records=500, lookup="auto")
    assert keep(pages=499, unmatched=3, records=500, lookup="auto")
    assert not keep(pages=500, unmatched=3, records=500, lookup="auto")
    assert not keep(pages=1, unmatched=0, records=500, lookup="auto")  # all found: stop
    assert keep(pages=10**6, unmatched=1, records=2, lookup="list")


def _lookup_cost(server_pages: int, records: int, found_per_page: float) -> int:
    """Requests the "auto" rule spends finding `records` spread evenly over the listing."""
    pages = 0
    unmatched = records
    while True:
        pages += 1
        unmatched = max(0, records - int(pages * found_per_page))
        if pages == server_pages or not _sync.keep_listing(pages, unmatched, records, "auto"):
            break
    early = pages < server_pages
    return pages + (unmatched + 1 if early else 0)  # +1: the page already asked for


@pytest.mark.parametrize(
    ("users", "records"), [(1000, 500), (20000, 5000), (1_000_000, 1000), (20000, 50), (100, 3)]
)
def test_the_look_up_never_costs_more_than_twice_the_cheaper_choice(
    users: int, records: int
) -> None:
    pages = -(-users // 100)
    cost = _lookup_cost(pages, records, records / pages)
    assert cost <= 2 * min(pages, records) + 1


def test_the_plan_bounds_the_look_up() -> None:
    assert _sync.SyncPlan.build(10, 1, 9, "auto", False).max_lookup_requests == 19
    assert _sync.SyncPlan.build(1, 1, 0, "auto", False).max_lookup_requests == 0
    assert _sync.SyncPlan.build(10, 1, 9, "each", False).max_lookup_requests == 9
    assert _sync.SyncPlan.build(10, 1, 9, "list", True).max_lookup_requests is None


def test_budget_wait() -> None:
    assert _sync.budget_wait(100, remaining=100, limit=1000, window=3600) == 0
    assert _sync.budget_wait(1100, remaining=100, limit=1000, window=3600) == 3600
    assert _sync.budget_wait(2101, remaining=100, limit=1000, window=3600) == 3 * 3600


def test_which_errors_fail_a_record_and_which_end_the_run() -> None:
    from evenergy_async.errors import OutcomeUnknown

    for exc in (
        ev.BadRequest(400),
        ev.NotFound(404),
        ev.Conflict(409),
        ev.ServerError(500),
        OutcomeUnknown("cut"),
        ev.InvalidRequest("x", "y"),
        ev.InvalidResponse("bad"),
    ):
        assert fails_record(exc), exc
    for exc in (
        ev.Unauthorized(401),
        ev.Forbidden(403),
        ev.RateLimited(429),
        ev.TransportError("down"),
        ev.EvEnergyError("closed"),
    ):
        assert not fails_record(exc), exc


# --- the bounded runner -------------------------------------------------------------------------


def _outcome(i: int) -> ev.SyncOutcome:
    return ev.SyncOutcome(action="unchanged", email=None, index=i)


async def test_bounded_runs_at_most_limit_jobs_and_yields_each_once() -> None:
    running = 0
    peak = 0

    async def job(i: int) -> ev.SyncOutcome:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (i % 3))
        running -= 1
        return _outcome(i)

    async def jobs() -> AsyncIterator[Any]:
        for i in range(40):
            yield _outcome(1000 + i) if i % 5 == 0 else job(i)

    results = [o.index async for o in bounded(jobs(), 3)]  # type: ignore[arg-type]
    assert sorted(results) == sorted([*range(40)][i] if i % 5 else 1000 + i for i in range(40))
    assert peak == 3


async def test_closing_bounded_cancels_the_jobs_in_flight() -> None:
    started: list[int] = []
    cancelled: list[int] = []
    four_started = asyncio.Event()

    async def job(i: int) -> ev.SyncOutcome:
        started.append(i)
        if len(started) == 4:
            four_started.set()
        try:
            await four_started.wait()
            if i:
                await asyncio.Event().wait()
            return _outcome(i)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    async def jobs() -> AsyncIterator[Any]:
        for i in range(10):
            yield job(i)

    runner = bounded(jobs(), 4)  # type: ignore[arg-type]
    first = await runner.__anext__()
    assert first.index == 0
    await runner.aclose()
    assert sorted(cancelled) == sorted(started[1:]) and len(started) == 4


async def test_a_job_raising_ends_the_run_and_cancels_the_others() -> None:
    cancelled: list[int] = []

    async def job(i: int) -> ev.SyncOutcome:
        try:
            if i == 2:
                raise ev.Unauthorized(401)
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        raise AssertionError("unreachable")

    async def jobs() -> AsyncIterator[Any]:
        for i in range(5):
            yield job(i)

    with pytest.raises(ev.Unauthorized):
        async for _ in bounded(jobs(), 3):  # type: ignore[arg-type]
            pass
    assert sorted(cancelled) == [0, 1]


# --- whole runs against the fake -------------------------------------------------------------


class Recorder:
    """Every write the fake received, as (method, path, JSON body)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, dict[str, Any]]] = []
        self.after: Callable[[Exchange], None] | None = None

    def __call__(self, exchange: Exchange) -> None:
        if exchange.method in ("PATCH", "POST") and "/v2/users" in exchange.url:
            body = msgspec.json.decode(exchange.request_body) if exchange.request_body else {}
            self.writes.append((exchange.method, exchange.url, body))
        if self.after is not None:
            self.after(exchange)


def _writes(fake: FakeEvEnergy) -> int:
    return sum(fake.stats.count(*route) for route in WRITES)


async def _state(client: ev.Client) -> dict[str, dict[str, Any]]:
    """Every user's email and location, by lowercased email (so new users are comparable)."""
    state = {}
    async for user in client.users.list():
        data = to_api(user)
        location = data.get("default_location", {})
        location.pop("current_carbon_intensity_grams_per_kilowatt_hour", None)
        state[data["email"].lower()] = {"id": data["id"], "email": data["email"], **location}
    return state


def _expected(before: dict[str, dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The state `records` ask for, from the state before (records of existing users carry
    their id; new ones only their email)."""
    by_id = {entry["id"]: key for key, entry in before.items()}
    after = {key: dict(entry) for key, entry in before.items()}
    for record in records:
        location = dict(record.get("default_location") or {})
        location.pop("current_carbon_intensity_grams_per_kilowatt_hour", None)
        if "id" in record:
            key = by_id[record["id"]]
            after[key].update(location)
        else:
            entry = dict.fromkeys(_sync.LOCATION_FIELDS)
            entry.update(location, email=record["email"])
            after[record["email"].lower()] = entry
    return after


def _without_new_ids(state: dict[str, dict[str, Any]], new: set[str]) -> dict[str, Any]:
    return {
        k: {f: v for f, v in e.items() if not (k in new and f == "id")} for k, e in state.items()
    }


def _new_user(i: int, city: str = "Leeds") -> dict[str, Any]:
    return {
        "email": f"New.User{i}@example.com",
        "default_location": {
            "address_1": f"{i} Park Row",
            "city": city,
            "postal_code": "LS1 5HD",
            "country_code": "GB",
        },
    }


def _scenario(
    exported: list[dict[str, Any]], identical: int, changed: int, new: int, seed: int = 0
) -> list[dict[str, Any]]:
    """`identical` users as exported, `changed` with a new city (users that have an address),
    `new` users: shuffled."""
    rng = random.Random(seed)
    with_address = [u for u in exported if u["default_location"].get("address_1")]
    picked = rng.sample(with_address, changed)
    picked_ids = {u["id"] for u in picked}
    rest = rng.sample([u for u in exported if u["id"] not in picked_ids], identical)
    records = [dict(u) for u in rest]
    for user in picked:
        location = {**user["default_location"], "city": user["default_location"]["city"] + "ton"}
        records.append({**user, "default_location": location})
    records.extend(_new_user(i) for i in range(new))
    rng.shuffle(records)
    return records


async def _export(client: ev.Client) -> list[dict[str, Any]]:
    return [to_api(u) async for u in client.users.list()]


async def _sync_all(client: ev.Client, records: Any, **kw: Any) -> list[ev.SyncOutcome]:
    return [o async for o in client.users.sync(records, **kw)]


@pytest.fixture
async def world() -> AsyncIterator[tuple[FakeEvEnergy, ev.Client, Recorder]]:
    recorder = Recorder()
    async with (
        FakeEvEnergy(users=1000, rate_limit=100_000, on_exchange=recorder) as fake,
        ev.Client(token=fake.token, base_url=fake.base_url) as client,
    ):
        yield fake, client, recorder


async def test_done_when_1000_users_500_records(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    fake, client, recorder = world
    exported = await _export(client)
    before = await _state(client)
    records = _scenario(exported, identical=350, changed=100, new=50)
    fake.stats.reset()
    plans: list[_sync.SyncPlan] = []

    outcomes = await _sync_all(client, records, on_plan=plans.append)

    assert fake.stats.total <= 1000 // 100 + 150 + 10
    assert fake.stats.count("GET", "/v2/users") == 10  # one listing, 100 a page
    assert fake.stats.count("PATCH", "/v2/users/{user_id}") == 100
    assert fake.stats.count("POST", "/v2/users") == 50
    assert fake.stats.total == 160
    actions = Counter(o.action for o in outcomes)
    assert actions == {"unchanged": 350, "updated": 100, "created": 50}
    assert sorted(o.index for o in outcomes) == list(range(500))
    assert len(plans) == 1 and plans[0].to_match == 500

    patches = [body for method, _, body in recorder.writes if method == "PATCH"]
    assert len(patches) == 100
    for body in patches:
        assert set(body) == {"default_location"}  # never email
        assert set(body["default_location"]) == {"city", "address_1", "postal_code", "country_code"}
    for outcome in outcomes:
        if outcome.action == "updated":
            assert outcome.changed == ("default_location.city",)
            assert outcome.user is not None and outcome.user.id == outcome.id

    new = {r["email"].lower() for r in records if "id" not in r}
    after = await _state(client)
    assert len(after) == 1050 and fake.user_count == 1050  # no duplicate
    assert _without_new_ids(after, new) == _without_new_ids(_expected(before, records), new)

    # The same input again: nothing to write.
    fake.stats.reset()
    again = await _sync_all(client, records)
    assert _writes(fake) == 0
    assert Counter(o.action for o in again) == {"unchanged": 500}
    assert fake.stats.count("GET", "/v2/users") == 11  # 1050 users now


async def test_a_dry_run_writes_nothing_and_tells_what_a_run_would_do(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    fake, client, _ = world
    records = _scenario(await _export(client), identical=20, changed=10, new=5)
    before = await _state(client)
    fake.stats.reset()
    dry = await _sync_all(client, records, dry_run=True)
    assert _writes(fake) == 0
    assert await _state(client) == before
    assert all(o.user is None for o in dry)
    real = await _sync_all(client, records)

    def summary(outcomes: list[ev.SyncOutcome]) -> list[tuple[Any, ...]]:
        return sorted((o.index, o.action, o.changed, o.email) for o in outcomes)

    assert summary(dry) == summary(real)
    assert Counter(o.action for o in real) == {"unchanged": 20, "updated": 10, "created": 5}


async def test_invalid_and_duplicate_records_fail_and_every_other_is_applied(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    _, client, _ = world
    exported = await _export(client)
    good = _scenario(exported, identical=5, changed=5, new=3)
    no_address = next(u for u in exported if not u["default_location"].get("address_1"))
    bad: list[Any] = [
        {"email": "broken"},  # invalid email
        {**good[0], "default_location": {"city": "Nowhere", "colour": "red"}},  # unknown field
        dict(good[1]),  # a second record for the same user
        {"email": good[2]["email"].upper()} if "id" not in good[2] else {"id": good[2]["id"]},
        {"id": no_address["id"], "default_location": {"city": "Leeds"}},  # partial address
        {"id": "user" + "Z" * 26},  # no such user
        42,
    ]
    records = [*good, *bad]
    before = await _state(client)
    outcomes = await _sync_all(client, records)
    by_index = {o.index: o for o in outcomes}
    assert len(by_index) == len(records) == len(outcomes)
    for i in range(len(good), len(records)):
        outcome = by_index[i]
        assert outcome.action == "failed", (i, outcome)
        assert isinstance(outcome.error, ev.EvEnergyError) and str(outcome.error)
    assert "second record" in str(by_index[len(good) + 2].error)
    assert "partial address" in str(by_index[len(good) + 4].error)
    assert isinstance(by_index[len(good) + 5].error, ev.NotFound)
    assert Counter(by_index[i].action for i in range(len(good))) == {
        "unchanged": 5,
        "updated": 5,
        "created": 3,
    }
    new = {r["email"].lower() for r in good if "id" not in r}
    assert _without_new_ids(await _state(client), new) == _without_new_ids(
        _expected(before, good), new
    )


async def test_each_record_looked_up_costs_one_request_per_record(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    fake, client, _ = world
    records = _scenario(await _export(client), identical=6, changed=3, new=2)
    before = await _state(client)
    fake.stats.reset()
    outcomes = await _sync_all(client, records, lookup="each")
    assert fake.stats.count("GET", "/v2/users/{user_id}") == 9
    assert fake.stats.count("GET", "/v2/users") == 2  # the new users, by email
    assert _writes(fake) == 5 and fake.stats.total == 16
    assert Counter(o.action for o in outcomes) == {"unchanged": 6, "updated": 3, "created": 2}
    new = {r["email"].lower() for r in records if "id" not in r}
    assert _without_new_ids(await _state(client), new) == _without_new_ids(
        _expected(before, records), new
    )


async def test_a_few_records_against_many_users_stop_listing_at_the_break_even(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    fake, client, _ = world
    exported = await _export(client)
    records = [exported[-1], exported[-2], _new_user(1)]  # all far down the listing
    fake.stats.reset()
    outcomes = await _sync_all(client, records)
    # 3 pages (the break-even) and the 4th the stream had already asked for, 2 look-ups by
    # id, 1 by email, 1 create; not 10 pages.
    assert fake.stats.count("GET", "/v2/users") == 3 + 1 + 1
    assert fake.stats.count("GET", "/v2/users/{user_id}") == 2
    assert fake.stats.total == 2 * 3 + 1 + 1
    assert Counter(o.action for o in outcomes) == {"unchanged": 2, "created": 1}


async def test_an_email_change_by_id_and_a_new_user_taking_the_old_email(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    fake, client, recorder = world
    ann, bob = (await _export(client))[:2]
    records = [
        {"id": ann["id"], "email": "ann.renamed@example.com"},
        {"email": ann["email"]},  # a new user with Ann's old email
        {"id": bob["id"], "email": bob["email"].upper()},  # only the case differs
    ]
    for lookup in ("list", "each"):
        outcomes = await _sync_all(client, records, lookup=lookup, dry_run=True)
        assert sorted((o.index, o.action) for o in outcomes) == [
            (0, "updated"),
            (1, "created"),
            (2, "updated"),
        ]
    outcomes = await _sync_all(client, records)
    assert sorted((o.index, o.action) for o in outcomes) == [
        (0, "updated"),
        (1, "created"),
        (2, "updated"),
    ]
    assert recorder.writes[0][2] == {"email": "ann.renamed@example.com"} or any(
        body == {"email": "ann.renamed@example.com"} for _, _, body in recorder.writes
    )
    state = await _state(client)
    assert state["ann.renamed@example.com"]["id"] == ann["id"]
    assert state[ann["email"].lower()]["id"] != ann["id"]
    assert state[bob["email"].lower()]["email"] == bob["email"].upper()
    fake.stats.reset()
    assert {o.action for o in await _sync_all(client, records, lookup="each")} == {"unchanged"}
    assert _writes(fake) == 0


async def test_records_from_an_async_iterable_and_ev_users(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    _, client, _ = world
    users = [u async for u in client.users.list(page_size=5) if u.default_location]
    users = users[:5]

    async def records() -> AsyncIterator[Any]:
        for user in users:
            yield user

    outcomes = await _sync_all(client, records())
    assert [o.action for o in outcomes] == ["unchanged"] * 5
    assert {o.id for o in outcomes} == {u.id for u in users}


async def test_bad_arguments_are_refused_before_any_request(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    fake, client, _ = world
    fake.stats.reset()
    for kw in ({"concurrency": 0}, {"shard": (1, 1)}, {"dry_run": "yes"}, {"lookup": "x"}):
        with pytest.raises(ev.InvalidRequest):
            await _sync_all(client, [], **kw)
    with pytest.raises(ev.InvalidRequest):
        await _sync_all(client, {"email": "a@example.com"})  # one record, not an iterable
    assert fake.stats.total == 0


async def test_creates_whose_answer_is_lost_are_reconciled_not_duplicated(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    fake, client, _ = world
    records = [_new_user(i) for i in range(6)]
    fake.faults.cut_next_write(3)
    outcomes = await _sync_all(client, records, concurrency=2)
    assert Counter(o.action for o in outcomes) == {"created": 6}
    assert fake.stats.faults["cut"] == 3
    assert fake.user_count == 1006
    assert {o.action for o in await _sync_all(client, records)} == {"unchanged"}


# --- cut off anywhere, run again ------------------------------------------------------------


async def _cut_off_after(client: ev.Client, records: Any, fake: FakeEvEnergy, n: int) -> int:
    """Run a sync and cancel it as the fake answers its `n`-th request; outcomes seen."""
    seen = 0
    counted = fake.stats.total

    async def consume() -> None:
        nonlocal seen
        async for _ in client.users.sync(records, concurrency=4):
            seen += 1

    runner = asyncio.ensure_future(consume())
    recorder = fake._api.on_exchange
    assert isinstance(recorder, Recorder)

    def after(exchange: Exchange) -> None:
        if fake.stats.total - counted == n:
            runner.cancel()  # the response is on its way: the client never reads it

    recorder.after = after
    try:
        await runner
    except asyncio.CancelledError:
        pass
    finally:
        recorder.after = None
    return seen


@pytest.mark.parametrize("seed", range(6))
async def test_a_run_cut_off_at_a_random_point_then_run_again_ends_as_intended(seed: int) -> None:
    recorder = Recorder()
    async with (
        FakeEvEnergy(users=300, rate_limit=100_000, on_exchange=recorder, seed=seed) as fake,
        ev.Client(token=fake.token, base_url=fake.base_url) as client,
    ):
        records = _scenario(await _export(client), identical=40, changed=30, new=12, seed=seed)
        before = await _state(client)
        fake.stats.reset()
        # 3 pages + 42 writes in an uninterrupted run: cut anywhere in it.
        cut = random.Random(seed).randint(1, 44)
        await _cut_off_after(client, records, fake, cut)
        assert fake.stats.total >= cut
        outcomes = await _sync_all(client, records)  # the same client: it stayed whole
        assert not [o for o in outcomes if o.action == "failed"]
        new = {r["email"].lower() for r in records if "id" not in r}
        assert fake.user_count == 312  # no duplicate
        assert _without_new_ids(await _state(client), new) == _without_new_ids(
            _expected(before, records), new
        )
        fake.stats.reset()
        assert {o.action for o in await _sync_all(client, records)} == {"unchanged"}
        assert _writes(fake) == 0


# --- shards sharing one budget ------------------------------------------------------------


async def _two_shards(
    fake: FakeEvEnergy, records: list[dict[str, Any]], limiters: tuple[Any, Any], window: float
) -> list[ev.SyncOutcome]:
    async def shard(k: int) -> list[ev.SyncOutcome]:
        async with ev.Client(
            token=fake.token, base_url=fake.base_url, limiter=limiters[k], rate_limit_window=window
        ) as client:
            return await _sync_all(client, records, shard=(k, 2))

    first, second = await asyncio.gather(shard(0), shard(1))
    assert first and second
    assert not {o.index for o in first} & {o.index for o in second}
    return first + second


async def test_two_shards_sharing_an_in_process_limiter_never_overspend() -> None:
    # 0.3 s windows: the run spans a few of them (counts only: the limiter counts a request
    # from its answer, the fake from its arrival, so no speed of the machine makes a 429)
    async with FakeEvEnergy(users=150, rate_limit=15, rate_window=0.3) as fake:
        async with ev.Client(token=fake.token, base_url=fake.base_url) as client:
            exported = await _export(client)
            before = await _state(client)
        records = _scenario(exported, identical=10, changed=12, new=6)
        fake.reset_rate_limit()
        shared = ev.RateLimiter(0.3)
        outcomes = await _two_shards(fake, records, (shared, shared), 0.3)
        assert sorted(o.index for o in outcomes) == list(range(len(records)))
        assert Counter(o.action for o in outcomes) == {"unchanged": 10, "updated": 12, "created": 6}
        assert fake.stats.rate_limited == 0  # one budget, never overspent
        fake.rate_limit = 100_000
        async with ev.Client(token=fake.token, base_url=fake.base_url) as client:
            new = {r["email"].lower() for r in records if "id" not in r}
            assert _without_new_ids(await _state(client), new) == _without_new_ids(
                _expected(before, records), new
            )


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    pytest.importorskip("redis")
    from redis_server import redis_server, redis_server_binary

    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    with redis_server() as url:
        yield url


async def test_two_shards_sharing_a_redis_budget(redis_url: str) -> None:
    async with FakeEvEnergy(users=150, rate_limit=15, rate_window=0.3) as fake:
        async with ev.Client(token=fake.token, base_url=fake.base_url) as client:
            records = _scenario(await _export(client), identical=10, changed=12, new=6)
        fake.reset_rate_limit()
        key = uuid.uuid4().hex
        limiters = (
            ev.RedisRateLimiter(redis_url, key=key, window=0.3),
            ev.RedisRateLimiter(redis_url, key=key, window=0.3),
        )
        try:
            outcomes = await _two_shards(fake, records, limiters, 0.3)
        finally:
            for limiter in limiters:
                await limiter.aclose()
        assert sorted(o.index for o in outcomes) == list(range(len(records)))
        assert Counter(o.action for o in outcomes) == {"unchanged": 10, "updated": 12, "created": 6}
        assert fake.stats.rate_limited == 0


def test_sync_outcome_is_a_frozen_public_model() -> None:
    outcome = ev.SyncOutcome(action="created", email="a@example.com", id=USER_A, index=0)
    with pytest.raises(AttributeError):
        outcome.action = "failed"  # type: ignore[misc]
    assert outcome.user is None and outcome.changed == () and outcome.error is None
    assert "SyncOutcome" in ev.__all__


async def test_closing_the_generator_mid_run_leaves_nothing_in_flight(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    fake, client, _ = world
    records = _scenario(await _export(client), identical=10, changed=40, new=10)
    fake.faults.latency = 0.01  # writes are in flight when the first outcomes arrive
    outcomes = client.users.sync(records, concurrency=6)
    taken = [await outcomes.__anext__() for _ in range(12)]
    await outcomes.aclose()
    limiter = client.limiter
    assert isinstance(limiter, ev.RateLimiter)
    assert limiter.state.in_flight() == 0  # every token given back or accounted for
    assert len(taken) == 12
    fake.faults.latency = 0
    rest = await _sync_all(client, records)  # the client is whole: the run completes
    assert not [o for o in rest if o.action == "failed"]
    assert {o.action for o in await _sync_all(client, records)} == {"unchanged"}


# --- the PATCH body, for any server state and any record ---------------------------------------

_VALUES: dict[str, list[Any]] = {
    "address_1": [None, "1 High St", "2 Low Rd"],
    "address_2": [None, "Flat 1"],
    "postal_code": [None, "EC1A 1BB", "LS1 5HD"],
    "country_code": [None, "GB", "FR"],
    "coordinates": [None, (51.5, -0.1), (53.8, -1.5)],
    "tariff": [None, TARIFF, TARIFF[:-1] + "9"],
    "city": [None, "London", "Leeds"],
    "state": [None, "Kent"],
    "evse_site": [None, "https://api.ev.energy/v2/evse_sites/site01HN2NJ9NMRZBXT1H6FT9N7735"],
}
_TRIGGERS = (
    "address_1",
    "address_2",
    "city",
    "state",
    "postal_code",
    "country_code",
    "coordinates",
)
_REQUIRED = ("address_1", "city", "postal_code", "country_code")


def _states() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({name: st.sampled_from(v) for name, v in _VALUES.items()})


def _to_json(location: dict[str, Any]) -> dict[str, Any]:
    data = dict(location)
    if isinstance(data.get("coordinates"), tuple):
        lat, lon = data["coordinates"]
        data["coordinates"] = {"latitude": lat, "longitude": lon}
    return data


@settings(max_examples=300, deadline=None)
@given(current=_states(), wished=_states(), given_fields=st.sets(st.sampled_from(list(_VALUES))))
def test_a_patch_carries_what_differs_and_what_the_address_rule_needs(
    current: dict[str, Any], wished: dict[str, Any], given_fields: set[str]
) -> None:
    location = {name: wished[name] for name in given_fields}
    record = parse_record({"id": USER_A, "default_location": _to_json(location)}, 0)
    merged = {**current, **location}
    differs = {name for name in location if location[name] != current[name]}
    try:
        update = plan_update(record, "ann@example.com", current)
    except ev.InvalidRequest:
        # Refused only when the merged location breaks the rule for what must be sent.
        assert any(merged[n] is not None for n in differs & set(_TRIGGERS))
        assert any(merged[n] is None for n in _REQUIRED)
        return
    assert set(update.changed) == {f"default_location.{n}" for n in differs}
    assert update.email is ev.UNSET
    if not differs:
        assert update.location is ev.UNSET
        return
    assert isinstance(update.location, ev.Location)
    sent = {
        name: value
        for name, value in _sync.server_location(
            ev.User(id=USER_A, url="u", default_location=update.location)
        ).items()
        if getattr(update.location, name) is not ev.UNSET
    }
    needs_address = any(sent[n] is not None for n in differs & set(_TRIGGERS))
    assert set(sent) == differs | (set(_REQUIRED) if needs_address else set())
    assert {**current, **sent} == merged  # the server ends where the record says
    for name in ("tariff", "evse_site", "coordinates"):
        assert (name in sent) == (name in differs)


async def test_every_exchange_of_a_sync_follows_the_spec(spec_check: Any) -> None:
    async with (
        FakeEvEnergy(users=120, rate_limit=100_000, on_exchange=spec_check) as fake,
        ev.Client(token=fake.token, base_url=fake.base_url) as client,
    ):
        exported = await _export(client)
        with_address = [u for u in exported if u["default_location"].get("address_1")]
        edits = [
            {"city": "Leeds"},
            {"coordinates": {"latitude": 53.8, "longitude": -1.55}},
            {"tariff": None},
            {"address_2": None, "state": None},
            dict.fromkeys(("address_1", "address_2", "city", "state", "postal_code"))
            | {
                "country_code": None,
                "coordinates": None,
            },
        ]
        records: list[dict[str, Any]] = []
        for user, edit in zip(with_address, edits * 4, strict=False):
            records.append({**user, "default_location": {**user["default_location"], **edit}})
        records.append({"id": with_address[-1]["id"], "email": "renamed@example.com"})
        records.extend(_new_user(i) for i in range(3))
        for lookup in ("auto", "each"):
            outcomes = await _sync_all(client, records, lookup=lookup)
            assert not [o for o in outcomes if o.action == "failed"], outcomes
        assert {o.action for o in await _sync_all(client, records)} == {"unchanged"}


@pytest.mark.parametrize("lookup", ["auto", "each"])
async def test_the_plan_is_told_after_a_look_up_and_before_the_first_write(
    world: tuple[FakeEvEnergy, ev.Client, Recorder], lookup: str
) -> None:
    fake, client, _ = world
    records = _scenario(await _export(client), identical=3, changed=5, new=2)
    fake.stats.reset()
    told: list[tuple[int, int, ev.RateLimit | None]] = []

    def on_plan(plan: _sync.SyncPlan) -> None:
        told.append((fake.stats.total, _writes(fake), client.rate_limit))

    await _sync_all(client, records, lookup=lookup, on_plan=on_plan, concurrency=1)
    [(requests, writes, rate)] = told
    assert requests >= 1 and writes == 0
    assert rate is not None and rate.limit == 100_000  # known when the plan is told
    assert _writes(fake) == 7


async def test_a_listing_that_fails_ends_the_run_without_a_resume_cursor(
    world: tuple[FakeEvEnergy, ev.Client, Recorder],
) -> None:
    fake, client, recorder = world
    records = [{"email": f"nobody{i}@example.com"} for i in range(20)]  # found on no page
    pages = 0

    def after(exchange: Exchange) -> None:
        nonlocal pages
        if exchange.method == "GET":
            pages += 1
            if pages == 2:
                fake.faults.fail_next(1, status=401)  # the third page

    recorder.after = after
    with pytest.raises(ev.Unauthorized) as caught:
        await _sync_all(client, records)
    assert pages == 3  # two pages, then the refused one
    assert caught.value.resume_cursor is None  # not a stream: run it again instead
    assert _writes(fake) == 0
