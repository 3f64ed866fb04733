"""The `evenergy` command: in-process through `main()`, and as the installed console script."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

import evenergy_async as ev
from evenergy_async import cli
from evenergy_async.cli import main, to_api
from evenergy_async.testing import FakeEvEnergy

ENV_VARS = (
    "EVENERGY_TOKEN",
    "EVENERGY_CLIENT_ID",
    "EVENERGY_CLIENT_SECRET",
    "EVENERGY_BASE_URL",
    "EVENERGY_USER",
    "EVENERGY_TOKEN_URL",
)
SCRIPT = Path(sys.executable).with_name("evenergy")
MISSING_USER = "user00000000000000000000000000"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(extra)
    return env


def _lines(text: str) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in text.splitlines()]


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("evenergy: error: ")
    assert "Traceback" not in err
    return lines[0]


# --- the console script, as a user runs it ------------------------------------------------


def test_console_script_exports_fake_users() -> None:
    result = subprocess.run(
        [str(SCRIPT), "users", "export", "--fake", "--fake-users", "50"],
        capture_output=True,
        env=_env(),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""  # no progress line: stderr is not a terminal
    users = _lines(result.stdout.decode())
    assert len(users) == 50
    for user in users:
        assert user["id"].startswith("user") and len(user["id"]) == 30
        assert user["url"].endswith("/v2/users/" + user["id"])
        assert "@" in user["email"]
    assert len({u["id"] for u in users}) == 50


def test_console_script_broken_pipe_exits_quietly() -> None:
    with subprocess.Popen(
        [str(SCRIPT), "users", "export", "--fake", "--fake-users", "20000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        err = proc.stderr.read()
        code = proc.wait(timeout=30)
    assert msgspec.json.decode(first)["id"].startswith("user")
    assert code == 0
    assert err == b""


async def test_fake_command_serves_until_sigint() -> None:
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        "fake",
        "--port",
        "0",
        "--users",
        "7",
        "--seed",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        printed: dict[str, str] = {}
        for _ in range(4):
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            name, _, value = line.decode().strip().partition("=")
            printed[name] = value
        assert set(printed) == {
            "EVENERGY_BASE_URL",
            "EVENERGY_TOKEN",
            "EVENERGY_CLIENT_ID",
            "EVENERGY_CLIENT_SECRET",
        }
        base_url = printed["EVENERGY_BASE_URL"]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v2")
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                base_url + "/users",
                params={"page_size": "100"},
                headers={"Authorization": "Bearer " + printed["EVENERGY_TOKEN"]},
            ) as response,
        ):
            assert response.status == 200
            assert len(await response.json()) == 7
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        err = (await proc.stderr.read()).decode()
        assert "Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- users export, in process -------------------------------------------------------------


def test_export_to_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "users.jsonl"
    code = main(
        ["users", "export", "--fake", "--fake-users", "30", "--page-size", "7", "-o", str(target)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == "" and err == ""
    users = _lines(target.read_text())
    assert len(users) == 30
    assert [u["id"] for u in users] == sorted(u["id"] for u in users)


def test_export_unwritable_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["users", "export", "--fake", "-o", str(tmp_path / "no" / "such" / "dir.jsonl")])
    assert code == 2
    assert "cannot write" in _one_error_line(capsys.readouterr().err)


def test_export_resolve_gives_tariff_objects(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["users", "export", "--fake", "--fake-users", "40", "--resolve", "default_location.tariff"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    users = _lines(out)
    assert len(users) == 40
    tariffs = [
        u["default_location"]["tariff"]
        for u in users
        if u.get("default_location", {}).get("tariff") is not None
    ]
    assert tariffs, "the fake gives some users a tariff"
    for tariff in tariffs:
        assert isinstance(tariff, dict)
        assert tariff["id"].startswith("tari") and tariff["url"].endswith(tariff["id"])
        assert isinstance(tariff["name"], str) and isinstance(tariff["currency"], str)
        assert isinstance(tariff["supplier"], str)  # not asked for: stays a URL


def test_export_expand_and_email_filter(capsys: pytest.CaptureFixture[str]) -> None:
    main(["users", "export", "--fake", "--fake-users", "5"])
    third = _lines(capsys.readouterr().out)[2]
    code = main(
        [
            "users",
            "export",
            "--fake",
            "--fake-users",
            "5",
            "--email",
            third["email"].upper(),
            "--expand",
            "default_location.tariff,default_location.evse_site",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    [user] = _lines(out)
    assert user["id"] == third["id"]
    tariff = user["default_location"]["tariff"]
    assert tariff is None or isinstance(tariff, dict)


def test_export_stops_with_a_resume_hint_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "users.jsonl"
    fake = ["--fake", "--fake-users", "30", "--fake-rate-limit", "1"]
    options = ["--page-size", "10", "--max-rate-limit-wait", "0", "-o", str(target)]
    code = main(["users", "export", *fake, *options])
    assert code == 1
    users = _lines(target.read_text())
    assert len(users) == 10  # the first page made it out before the budget ran dry
    line = _one_error_line(capsys.readouterr().err)
    assert "429" in line or "rate" in line.lower()
    assert line.endswith(f"(resume with --page-after {users[-1]['id']})")

    # Same seed, fresh budget: resuming appends the rest, nothing lost or repeated.
    resume = ["--page-after", users[-1]["id"], "--page-size", "100", "-o", str(target)]
    assert main(["users", "export", "--fake", "--fake-users", "30", *resume]) == 0
    ids = [u["id"] for u in _lines(target.read_text())]
    assert len(ids) == 30 and len(set(ids)) == 30


def test_export_progress_line_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_isatty", lambda stream: True)
    code = main(["users", "export", "--fake", "--fake-users", "120", "--page-size", "50"])
    out, err = capsys.readouterr()
    assert code == 0
    assert len(out.splitlines()) == 120
    assert err.startswith("\r") and err.endswith("\n")
    final = err.rsplit("\r", 1)[-1]
    assert "120 users" in final and "3 pages" in final
    assert "rate-limit budget 997/1,000" in final


def test_progress_line_is_throttled_and_rewritten_in_place() -> None:
    class FakeClient:
        rate_limit = ev.RateLimit(limit=1000, remaining=0)

    now = [100.0]
    stream = io.StringIO()
    client: Any = FakeClient()
    progress = cli._Progress(stream, client, page_size=100, total=1000, clock=lambda: now[0])
    now[0] = 105.0
    progress.done = 250
    progress.update()
    # While the budget is spent, the rate so far says nothing of the rest: no ETA.
    first = (
        "250 users, 3 pages, rate-limit budget 0/1,000, waiting for budget, 50 users/s, 5s elapsed"
    )
    assert stream.getvalue() == "\r" + first
    now[0] = 105.05
    progress.done = 251
    progress.update()  # within a tenth of a second: not redrawn
    assert stream.getvalue() == "\r" + first
    now[0] = 110.0
    progress.done = 1000
    client.rate_limit = ev.RateLimit(limit=1000, remaining=4)
    progress.update(final=True)
    last = "1,000 users, 10 pages, rate-limit budget 4/1,000, 100 users/s, 10s elapsed"
    padding = " " * (len(first) - len(last))  # blanks out the longer line before it
    assert padding
    assert stream.getvalue() == "\r" + first + "\r" + last + padding + "\n"


def test_progress_line_tells_when_the_next_budget_frees() -> None:
    class State:
        def next_change(self, now: float) -> float:
            return now + 125.0

    class Limiter:
        state = State()
        window = 3600.0

    class FakeClient:
        rate_limit = ev.RateLimit(limit=1000, remaining=0, retry_after=None)
        limiter = Limiter()

    async def line() -> str:
        progress = cli._Progress(io.StringIO(), FakeClient(), 100, total=5000, clock=lambda: 10)
        progress.done = 300
        return progress.line(10.0)

    assert asyncio.run(line()) == (
        "300 users, 3 pages, rate-limit budget 0/1,000, waiting for budget, next in 2m05s, "
        "30 users/s, 10s elapsed"
    )
    # A 429's Retry-After when the limiter cannot tell.
    FakeClient.limiter = None  # type: ignore[assignment]
    FakeClient.rate_limit = ev.RateLimit(limit=1000, remaining=0, retry_after=30.0)
    assert "waiting for budget, next in 30s" in asyncio.run(line())


def test_wait_report_threshold_is_a_positive_number_of_seconds_or_five() -> None:
    assert cli._wait_report_after({}) == 5.0
    assert cli._wait_report_after({"EVENERGY_WAIT_REPORT_AFTER": "0.2"}) == 0.2
    for bad in ("", "soon", "0", "-1", "nan", "inf"):
        assert cli._wait_report_after({"EVENERGY_WAIT_REPORT_AFTER": bad}) == 5.0, bad


def test_library_warnings_are_shown_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    with cli._library_warnings():
        logging.getLogger("evenergy_async").warning("retry %d of %d: %s", 1, 5, "connect refused")
        logging.getLogger("evenergy_async").debug("not shown")
    logging.getLogger("evenergy_async").warning("after the command: not ours to show")
    err = capsys.readouterr().err
    assert "evenergy: warning: retry 1 of 5: connect refused\n" in err
    assert "not shown" not in err
    assert err.count("evenergy: warning:") == 1


# --- users get / create / update ----------------------------------------------------------


def test_get_me_with_expand(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["users", "get", "me", "--fake", "--expand", "default_location.tariff.supplier"])
    out, err = capsys.readouterr()
    assert code == 0, err
    [user] = _lines(out)
    assert user["id"].startswith("user")
    location = user["default_location"]
    assert "current_carbon_intensity_grams_per_kilowatt_hour" in location  # LocationDetail
    if location["tariff"] is not None:
        assert isinstance(location["tariff"]["supplier"], dict)


def test_create_prints_the_new_user(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "users",
            "create",
            "--fake",
            "--email",
            "new.person@example.com",
            "--address-1",
            "1 High St",
            "--city",
            "London",
            "--postal-code",
            "EC1A 1BB",
            "--country-code",
            "GB",
            "--latitude",
            "51.5",
            "--longitude",
            "-0.1",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    [user] = _lines(out)
    assert user["email"] == "new.person@example.com"
    location = user["default_location"]
    assert location["address_1"] == "1 High St"
    assert location["coordinates"] == {"latitude": 51.5, "longitude": -0.1}
    assert user["joined_at"].endswith("Z")


def test_update_clear_address_and_email(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["users", "update", "me", "--fake", "--clear-address", "--email", "x@example.org"])
    out, err = capsys.readouterr()
    assert code == 0, err
    [user] = _lines(out)
    assert user["email"] == "x@example.org"
    location = user["default_location"]
    for field in (*cli._ADDRESS_FIELDS, "coordinates"):
        assert location[field] is None


def test_update_keeps_what_is_not_given(capsys: pytest.CaptureFixture[str]) -> None:
    main(["users", "get", "me", "--fake"])
    before = _lines(capsys.readouterr().out)[0]
    code = main(["users", "update", "me", "--fake", "--email", "changed@example.org"])
    out, err = capsys.readouterr()
    assert code == 0, err
    after = _lines(out)[0]
    assert after["email"] == "changed@example.org"
    # Each --fake run serves on its own port: compare the tariff by id.
    for user in (before, after):
        tariff = user["default_location"]["tariff"]
        user["default_location"]["tariff"] = tariff and tariff.rsplit("/", 1)[-1]
    assert after["default_location"] == before["default_location"]


# --- errors: one line, the right status ---------------------------------------------------


def test_missing_credentials_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["users", "export"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "EVENERGY_TOKEN" in _one_error_line(err)


def test_missing_credentials_from_the_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "evenergy_async", "users", "get", "me"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "no credentials" in _one_error_line(result.stderr)


def test_api_error_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["users", "get", MISSING_USER, "--fake"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "404" in _one_error_line(err)


def test_server_side_validation_error_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    main(["users", "get", "me", "--fake"])
    email = _lines(capsys.readouterr().out)[0]["email"]
    assert main(["users", "create", "--fake", "--email", email]) == 1
    assert "email" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv",
    [
        ["users", "get", "not-an-id", "--fake"],
        ["users", "export", "--fake", "--page-size", "500"],
        ["users", "export", "--fake", "--expand", "vehicles"],
        ["users", "create", "--fake", "--email", "not-an-email"],
        ["users", "create", "--fake", "--email", "a@example.com", "--city", "London"],
        ["users", "create", "--fake", "--email", "a@example.com", "--latitude", "1"],
        [
            "users",
            "create",
            "--fake",
            "--email",
            "a@example.com",
            "--country-code",
            "XX",
            "--address-1",
            "1 St",
            "--city",
            "C",
            "--postal-code",
            "P",
        ],
        ["users", "update", "me", "--fake"],
        ["users", "update", "me", "--fake", "--clear-address", "--city", "Leeds"],
        ["users", "frobnicate"],
        ["users", "export", "--page-size", "ten"],
        [],
    ],
    ids=lambda argv: " ".join(argv) or "nothing",
)
def test_input_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    _one_error_line(err)


def test_bad_base_url_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EVENERGY_TOKEN", "t")
    monkeypatch.setenv("EVENERGY_BASE_URL", "ftp://example.com")
    assert main(["users", "get", "me"]) == 2
    assert "base_url" in _one_error_line(capsys.readouterr().err)


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "users" in capsys.readouterr().out


def test_broken_pipe_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    stdout = io.TextIOWrapper(io.BufferedWriter(Broken(), buffer_size=16))
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["users", "export", "--fake", "--fake-users", "10"]) == 0
    assert stderr.getvalue() == ""


# --- environment credentials, against the plugin's fake -----------------------------------


async def _main_in_thread(argv: list[str]) -> int:
    return await asyncio.to_thread(main, argv)  # main() runs its own event loop


@pytest.mark.evenergy_fake(users=12, seed=5)
async def test_token_from_environment(
    evenergy_fake: FakeEvEnergy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EVENERGY_TOKEN", evenergy_fake.token)
    monkeypatch.setenv("EVENERGY_BASE_URL", evenergy_fake.base_url)
    assert await _main_in_thread(["users", "export", "--page-size", "5"]) == 0
    assert len(_lines(capsys.readouterr().out)) == 12


@pytest.mark.evenergy_fake(users=12, seed=5)
async def test_client_credentials_and_acting_user_from_environment(
    evenergy_fake: FakeEvEnergy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EVENERGY_CLIENT_ID", evenergy_fake.client_id)
    monkeypatch.setenv("EVENERGY_CLIENT_SECRET", evenergy_fake.client_secret)
    monkeypatch.setenv("EVENERGY_BASE_URL", evenergy_fake.base_url)
    monkeypatch.setenv("EVENERGY_USER", evenergy_fake.user_id(4))
    assert await _main_in_thread(["users", "get", "me"]) == 0
    out, err = capsys.readouterr()
    assert _lines(out)[0]["id"] == evenergy_fake.user_id(4), err


async def test_wrong_token_exit_1(
    evenergy_fake: FakeEvEnergy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EVENERGY_TOKEN", "not-the-token")
    monkeypatch.setenv("EVENERGY_BASE_URL", evenergy_fake.base_url)
    assert await _main_in_thread(["users", "get", "me"]) == 1
    assert "401" in _one_error_line(capsys.readouterr().err)


# --- to_api: models back to the API's JSON ------------------------------------------------


async def test_to_api_reproduces_the_servers_json(evenergy_fake: FakeEvEnergy) -> None:
    expand = ["default_location.tariff.supplier", "default_location.evse_site"]
    headers = {"Authorization": "Bearer " + evenergy_fake.token}
    async with aiohttp.ClientSession(headers=headers) as http:
        for path, params in (
            ("/users", [("page_size", "25")]),
            ("/users", [("page_size", "25"), *(("expand", e) for e in expand)]),
        ):
            async with http.get(evenergy_fake.base_url + path, params=params) as response:
                raw = msgspec.json.decode(await response.read())
            async with ev.Client(token=evenergy_fake.token, base_url=evenergy_fake.base_url) as c:
                users = [
                    u
                    async for u in c.users.list(
                        page_size=25, expand=[p for k, p in params if k == "expand"]
                    )
                ]
            assert [to_api(u) for u in users] == raw
        async with http.get(
            evenergy_fake.base_url + "/users/me", params=[("expand", e) for e in expand]
        ) as response:
            raw = msgspec.json.decode(await response.read())
    async with ev.Client(token=evenergy_fake.token, base_url=evenergy_fake.base_url) as c:
        assert to_api(await c.users.get("me", expand=expand)) == raw


def test_to_api_values() -> None:
    utc = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    user = ev.User(
        id="user01HN2NJ9NMRZBXT1H6FT9N7735",
        url="https://api.ev.energy/v2/users/user01HN2NJ9NMRZBXT1H6FT9N7735",
        joined_at=utc,
        terms_consent_datetime=None,
        default_location=ev.Location(
            address_1="1 High St",
            coordinates=ev.LatLong(51.5, -0.1),
            tariff=ev.Ref("https://api.ev.energy/v2/tariffs/t"),
            evse_site=None,
        ),
    )
    assert to_api(user) == {
        "id": user.id,
        "url": user.url,
        "joined_at": "2024-05-01T12:30:00Z",
        "terms_consent_datetime": None,
        "default_location": {
            "address_1": "1 High St",
            "coordinates": {"latitude": 51.5, "longitude": -0.1},
            "tariff": "https://api.ev.energy/v2/tariffs/t",
            "evse_site": None,
        },
        "vehicles": [],
        "evses": [],
    }
    plus_two = timezone(timedelta(hours=2))
    assert to_api(datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=plus_two)) == (
        "2024-05-01T12:00:00.000005+02:00"
    )
    assert to_api(date(2024, 5, 1)) == "2024-05-01"
    resolved: ev.Ref[Any] = ev.Ref("https://x/v2/suppliers/s", {"id": "s", "n": (1, 2)})
    assert to_api(resolved) == {"id": "s", "n": [1, 2]}
    with pytest.raises(ev.InvalidRequest):
        to_api(object())


# --- users sync ----------------------------------------------------------------------------

PACKAGE_ROOT = str(Path(ev.__file__).resolve().parents[1])


async def _exported(fake: FakeEvEnergy) -> list[dict[str, Any]]:
    async with ev.Client(token=fake.token, base_url=fake.base_url) as client:
        return [to_api(u) async for u in client.users.list()]


async def _users_by_email(fake: FakeEvEnergy) -> dict[str, dict[str, Any]]:
    state = {}
    for user in await _exported(fake):
        location = user["default_location"]
        location.pop("current_carbon_intensity_grams_per_kilowatt_hour", None)
        state[user["email"].lower()] = user
    return state


def _sync_input(exported: list[dict[str, Any]], changed: int, same: int, new: int) -> list[Any]:
    """`changed` users with a new city, `same` as exported, `new` users."""
    with_address = [u for u in exported if u["default_location"].get("address_1")]
    records: list[Any] = []
    for user in with_address[:changed]:
        location = {**user["default_location"], "city": "Sync City"}
        records.append({**user, "default_location": location})
    records.extend(with_address[changed : changed + same])
    for i in range(new):
        records.append(
            {
                "email": f"sync.new{i}@example.com",
                "default_location": {
                    "address_1": f"{i} Mill Lane",
                    "city": "Sync City",
                    "postal_code": "M1 1AA",
                    "country_code": "GB",
                },
            }
        )
    return records


def _write_jsonl(path: Path, records: list[Any]) -> None:
    path.write_bytes(
        b"".join(r if isinstance(r, bytes) else msgspec.json.encode(r) + b"\n" for r in records)
    )


def _writes(fake: FakeEvEnergy) -> int:
    return fake.stats.count("PATCH", "/v2/users/{user_id}") + fake.stats.count("POST", "/v2/users")


@pytest.mark.evenergy_fake(users=60, rate_limit=100_000)
async def test_sync_a_file_then_again(
    evenergy_fake: FakeEvEnergy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    fake = evenergy_fake
    monkeypatch.setenv("EVENERGY_TOKEN", fake.token)
    monkeypatch.setenv("EVENERGY_BASE_URL", fake.base_url)
    records = _sync_input(await _exported(fake), changed=4, same=5, new=2)
    target = tmp_path / "users.jsonl"
    _write_jsonl(target, [*records, b"\n", b"{not json\n", {"email": "broken"}])
    fake.stats.reset()

    assert await _main_in_thread(["users", "sync", str(target)]) == 1  # some records failed
    out, err = capsys.readouterr()
    lines = _lines(out)
    assert sorted(line["line"] for line in lines) == [*range(1, 12), 13, 14]  # 12 is blank
    by_line = {line["line"]: line for line in lines}
    assert {by_line[n]["action"] for n in range(1, 5)} == {"updated"}
    assert by_line[1]["changed"] == ["default_location.city"]
    assert by_line[1]["id"] == records[0]["id"] and by_line[1]["error"] is None
    assert {by_line[n]["action"] for n in range(5, 10)} == {"unchanged"}
    assert {by_line[n]["action"] for n in (10, 11)} == {"created"}
    assert by_line[13]["action"] == "failed" and "not JSON" in by_line[13]["error"]
    assert by_line[14]["action"] == "failed" and "email" in by_line[14]["error"]
    assert set(lines[0]) == {"line", "email", "action", "id", "changed", "error"}
    plan, summary = err.splitlines()
    assert plan.startswith("evenergy: plan: 11 records to match (2 refused); look-up:")
    assert "rate limit" in plan and "fits in the budget left" in plan
    assert summary == (
        f"evenergy: 13 records: 2 created, 4 updated, 5 unchanged, 2 failed; "
        f"{fake.stats.total} requests; rate-limit budget left "
        f"{fake.rate_limit_remaining():,}/100,000"
    )
    assert _writes(fake) == 6
    state = await _users_by_email(fake)
    assert state[records[0]["email"].lower()]["default_location"]["city"] == "Sync City"
    assert state["sync.new1@example.com"]["default_location"]["postal_code"] == "M1 1AA"

    # Again, without the broken lines: nothing to write, exit 0.
    _write_jsonl(target, records)
    fake.stats.reset()
    assert await _main_in_thread(["users", "sync", str(target)]) == 0
    out, err = capsys.readouterr()
    assert {line["action"] for line in _lines(out)} == {"unchanged"}
    assert _writes(fake) == 0
    assert "0 failed" in err


@pytest.mark.evenergy_fake(users=30, rate_limit=100_000)
async def test_sync_dry_run_from_stdin_writes_nothing(
    evenergy_fake: FakeEvEnergy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = evenergy_fake
    monkeypatch.setenv("EVENERGY_TOKEN", fake.token)
    monkeypatch.setenv("EVENERGY_BASE_URL", fake.base_url)
    records = _sync_input(await _exported(fake), changed=2, same=2, new=1)
    data = b"".join(msgspec.json.encode(r) + b"\n" for r in records)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    fake.stats.reset()
    assert await _main_in_thread(["users", "sync", "-", "--dry-run", "--lookup", "each"]) == 0
    out, err = capsys.readouterr()
    assert sorted(line["action"] for line in _lines(out)) == [
        "created",
        "unchanged",
        "unchanged",
        "updated",
        "updated",
    ]
    assert _writes(fake) == 0 and fake.stats.total == 5  # one look-up per record
    assert "dry run: no writes" in err and "(dry run: nothing written)" in err


@pytest.mark.evenergy_fake(users=30, rate_limit=100_000)
async def test_sync_shards_split_the_file(
    evenergy_fake: FakeEvEnergy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    fake = evenergy_fake
    monkeypatch.setenv("EVENERGY_TOKEN", fake.token)
    monkeypatch.setenv("EVENERGY_BASE_URL", fake.base_url)
    target = tmp_path / "users.jsonl"
    _write_jsonl(target, _sync_input(await _exported(fake), changed=5, same=5, new=5))
    seen: list[int] = []
    for shard in ("0/2", "1/2"):
        assert await _main_in_thread(["users", "sync", str(target), "--shard", shard]) == 0
        seen.extend(line["line"] for line in _lines(capsys.readouterr().out))
    assert sorted(seen) == list(range(1, 16))


@pytest.mark.parametrize(
    "argv",
    [
        ["users", "sync", "x.jsonl", "--fake", "--shard", "2/2"],
        ["users", "sync", "x.jsonl", "--fake", "--shard", "1"],
        ["users", "sync", "x.jsonl", "--fake", "--concurrency", "0"],
        ["users", "sync", "/nonexistent/users.jsonl", "--fake"],
        ["users", "sync", "x.jsonl", "--fake", "--lookup", "guess"],
    ],
)
def test_sync_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err)


def test_plan_text_at_the_current_rate_limit() -> None:
    class Limiter:
        window = 3600.0

    class FakeClient:
        rate_limit = ev.RateLimit(limit=1000, remaining=100)
        limiter = Limiter()

    client: Any = FakeClient()
    plan = cli._sync.SyncPlan.build(600, 0, 600, "auto", False)
    text = cli._plan_text(plan, client)
    assert "at most 1,201 requests" in text
    assert "rate limit 100 of 1,000 left per 1h00m" in text
    assert "may wait up to 2h00m for budget" in text
    plan = cli._sync.SyncPlan.build(60, 0, 60, "each", True)
    text = cli._plan_text(plan, client)
    assert "one request per record, 60 requests" in text and "fits in the budget left" in text


async def test_sync_killed_half_way_then_run_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async with FakeEvEnergy(users=200, rate_limit=100_000) as fake:
        before = await _users_by_email(fake)
        records = _sync_input(await _exported(fake), changed=50, same=30, new=30)
        target = tmp_path / "users.jsonl"
        _write_jsonl(target, records)
        fake.faults.latency = 0.02  # so a kill finds writes in flight
        env = _env(EVENERGY_TOKEN=fake.token, EVENERGY_BASE_URL=fake.base_url)
        env["PYTHONPATH"] = PACKAGE_ROOT
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "evenergy_async",
            "users",
            "sync",
            str(target),
            "--concurrency",
            "4",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            done = [await asyncio.wait_for(proc.stdout.readline(), 60) for _ in range(40)]
            proc.kill()  # SIGKILL: no clean-up of any kind
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert all(msgspec.json.decode(line)["action"] != "failed" for line in done)
        fake.faults.latency = 0
        assert 40 <= _writes(fake) < 80  # cut off half-way

        monkeypatch.setenv("EVENERGY_TOKEN", fake.token)
        monkeypatch.setenv("EVENERGY_BASE_URL", fake.base_url)
        assert await _main_in_thread(["users", "sync", str(target)]) == 0
        lines = _lines(capsys.readouterr().out)
        assert len(lines) == len(records)

        after = await _users_by_email(fake)
        assert fake.user_count == 230 and len(after) == 230  # no duplicate
        for record in records:
            user = after[record["email"].lower()]
            if "id" in record:
                assert user["id"] == record["id"]
            for field, value in record["default_location"].items():
                if field != "current_carbon_intensity_grams_per_kilowatt_hour":
                    assert user["default_location"][field] == value, (record, field)
        untouched = set(before) - {r["email"].lower() for r in records}
        assert all(after[email] == before[email] for email in untouched)

        fake.stats.reset()
        assert await _main_in_thread(["users", "sync", str(target)]) == 0
        assert {line["action"] for line in _lines(capsys.readouterr().out)} == {"unchanged"}
        assert _writes(fake) == 0


def test_export_terminated_tells_where_to_resume_and_resumes(tmp_path: Path) -> None:
    target = tmp_path / "users.jsonl"
    fake = ["--fake", "--fake-users", "300", "--fake-rate-limit", "5"]
    options = ["--page-size", "10", "-o", str(target)]
    env = _env(EVENERGY_WAIT_REPORT_AFTER="0.2")  # told after 0.2 s, not the default 5 s
    env["PYTHONPATH"] = PACKAGE_ROOT
    with subprocess.Popen(
        [sys.executable, "-m", "evenergy_async", "users", "export", *fake, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stderr is not None
        # Five pages, then the budget is spent for the fake's hour: without a terminal the
        # wait is told on stderr (after EVENERGY_WAIT_REPORT_AFTER seconds).
        told = proc.stderr.readline().decode()
        assert told.startswith(
            "evenergy: waiting for rate-limit budget; the next request may go in"
        )
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read().decode()
        code = proc.wait(timeout=30)
    assert code == 128 + signal.SIGTERM
    users = _lines(target.read_text())  # complete lines only
    assert len(users) == 50
    assert rest.strip() == f"evenergy: terminated; resume with --page-after {users[-1]['id']}"

    resume = ["--page-after", users[-1]["id"], "--page-size", "100", "-o", str(target)]
    assert main(["users", "export", "--fake", "--fake-users", "300", *resume]) == 0
    ids = [u["id"] for u in _lines(target.read_text())]
    assert len(ids) == 300 and len(set(ids)) == 300


def test_retries_against_an_unreachable_host_are_told_while_they_happen(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the with ends: nothing listens there
    options = {"base_url": f"http://127.0.0.1:{port}/v2", "token": "t", "max_retries": 2}
    monkeypatch.setattr(cli, "_client_options", lambda env: options)

    class FastRetries(ev.Client):  # backoffs of milliseconds: the retries are what is told
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._session.tune(backoff_base=0.002, backoff_cap=0.02)

    monkeypatch.setattr(cli, "Client", FastRetries)
    assert main(["users", "get", "me"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.startswith("evenergy: warning: GET /v2/users/me: retry") for line in err] == [
        True,
        True,
        False,
    ]
    assert "retry 1 of 2" in err[0] and "retry 2 of 2" in err[1]
    assert err[2].startswith("evenergy: error: ")


def test_sync_interrupted_stops_cleanly_and_says_so(tmp_path: Path) -> None:
    target = tmp_path / "users.jsonl"
    _write_jsonl(target, [{"email": f"person{i}@example.com"} for i in range(20)])
    env = _env()
    env["PYTHONPATH"] = PACKAGE_ROOT
    # A budget of 3 an hour: the listing's page and two creates, then a wait for good.
    fake = ["--fake", "--fake-users", "5", "--fake-rate-limit", "3"]
    with subprocess.Popen(
        [sys.executable, "-m", "evenergy_async", "users", "sync", str(target), *fake],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        plan = proc.stderr.readline().decode()
        assert plan.startswith("evenergy: plan: 20 records to match")
        created = [msgspec.json.decode(proc.stdout.readline()) for _ in range(2)]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert [line["action"] for line in created] == ["created", "created"]
    assert out == b""  # nothing more was done
    summary, hint = [line for line in err.decode().splitlines() if line]
    assert summary.startswith("evenergy: 2 records: 2 created, 0 updated, 0 unchanged, 0 failed")
    assert summary.endswith("(interrupted)")
    assert hint == "evenergy: interrupted; running the same sync again finishes it"


@pytest.mark.evenergy_fake(users=30, rate_limit=100_000)
async def test_sync_shards_share_a_redis_budget(
    evenergy_fake: FakeEvEnergy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    redis = pytest.importorskip("redis")
    from redis_server import redis_server, redis_server_binary

    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    fake = evenergy_fake
    monkeypatch.setenv("EVENERGY_TOKEN", fake.token)
    monkeypatch.setenv("EVENERGY_BASE_URL", fake.base_url)
    target = tmp_path / "users.jsonl"
    _write_jsonl(target, _sync_input(await _exported(fake), changed=4, same=4, new=4))
    with redis_server() as url:
        shards = [
            _main_in_thread(["users", "sync", str(target), "--shard", f"{k}/2", "--redis", url])
            for k in (0, 1)
        ]
        assert await asyncio.gather(*shards) == [0, 0]
        keys = redis.Redis.from_url(url).keys("*")
    out = capsys.readouterr().out
    assert sorted(line["line"] for line in _lines(out)) == list(range(1, 13))
    assert keys  # the shared budget lives in Redis
    assert fake.stats.rate_limited == 0
