"""Every endpoint and every status the fake produces, validated against the published spec.

Requests that are meant to be invalid must be reported as such by the validator, and every
response (except the one the fake is told to garble) must conform.
"""

from __future__ import annotations

import base64
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from spec_conformance import SpecValidator, form_to_json, spec_path

from evenergy_async.testing import Exchange, FakeEvEnergy

try:
    spec_path()
except FileNotFoundError:  # pragma: no cover - depends on the checkout
    pytest.skip("the OpenAPI spec is not available", allow_module_level=True)

pytest_plugins = ["pytester"]

LONDON = {
    "address_1": "1 High St",
    "city": "London",
    "postal_code": "EC1A 1BB",
    "country_code": "GB",
}
RATE = {"EvEnergy-Version": "2", "X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "9"}
USER = "user01HN2NJ9NMRZBXT1H6FT9N7735"


@pytest.fixture(scope="module")
def validator() -> SpecValidator:
    return SpecValidator()


class Recorder:
    """Runs requests against the fake and validates the exchange each one produced."""

    def __init__(self, fake: FakeEvEnergy, validator: SpecValidator, seen: list[Exchange]) -> None:
        self.fake = fake
        self.validator = validator
        self.seen = seen
        self.statuses: set[int | None] = set()
        self.routes: set[tuple[str, str]] = set()

    async def check(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        *,
        status: int,
        valid_request: bool = True,
        valid_response: bool = True,
        **kwargs: Any,
    ) -> Any:
        before = len(self.seen)
        async with session.request(method, self.fake.base_url + path, **kwargs) as response:
            body = await response.read()
        assert response.status == status, body
        assert len(self.seen) == before + 1
        exchange = self.seen[-1]
        report = self.validator.validate(
            exchange.method,
            exchange.url,
            exchange.request_headers,
            exchange.request_body,
            exchange.status,
            exchange.response_headers,
            exchange.response_body,
        )
        assert report.skipped is None
        assert bool(report.request_errors) is not valid_request, report.problems()
        assert bool(report.response_errors) is not valid_response, report.problems()
        self.statuses.add(status)
        self.routes.add((method, path.split("?")[0]))
        return msgspec.json.decode(body) if body[:1] in (b"{", b"[") and valid_response else body


@pytest.fixture
async def run(validator: SpecValidator) -> AsyncIterator[tuple[Recorder, aiohttp.ClientSession]]:
    seen: list[Exchange] = []
    fake = FakeEvEnergy(
        users=30, tariffs=6, suppliers=3, evse_sites=3, seed=2, on_exchange=seen.append
    )
    headers = {"Authorization": f"Bearer {fake.token}", "EvEnergy-Version": "2"}
    async with fake, aiohttp.ClientSession(headers=headers) as session:
        yield Recorder(fake, validator, seen), session


async def test_users_endpoints(run: tuple[Recorder, aiohttp.ClientSession]) -> None:
    r, s = run
    fake = r.fake
    await r.check(s, "GET", "/users", status=200)
    everything = "&".join(
        f"expand={name}"
        for name in (
            "default_location.tariff",
            "default_location.tariff.supplier",
            "default_location.evse_site",
        )
    )
    page = await r.check(s, "GET", f"/users?page_size=30&{everything}", status=200)
    assert any(u["default_location"]["evse_site"] for u in page)
    await r.check(s, "GET", f"/users?page_size=5&page_after={fake.user_id(4)}", status=200)
    await r.check(s, "GET", f"/users?page_size=5&page_before={fake.user_id(9)}", status=200)
    await r.check(s, "GET", "/users", status=200, params={"email": fake.user_email(3)})
    await r.check(s, "GET", f"/users/me?{everything}", status=200)
    await r.check(s, "GET", f"/users/{fake.user_id(2)}", status=200)
    created = await r.check(
        s,
        "POST",
        "/users",
        status=201,
        json={
            "email": "json@example.com",
            "default_location": {
                **LONDON,
                "address_2": None,
                "coordinates": {"latitude": 51.5, "longitude": -0.1},
                "tariff": f"{fake.base_url}/tariffs/{fake.tariff_id(1)}",
            },
        },
    )
    form = {f"default_location.{k}": v for k, v in LONDON.items()}
    await r.check(s, "POST", "/users", status=201, data={"email": "form@example.com", **form})
    multipart = aiohttp.FormData({"email": "multi@example.com", **form})
    multipart.add_field("default_location.coordinates.latitude", "51.5")
    multipart.add_field("default_location.coordinates.longitude", "-0.1")
    await r.check(s, "POST", "/users", status=201, data=multipart)
    url = f"/users/{created['id']}"
    nulls = dict.fromkeys(["address_1", "city", "postal_code", "country_code", "coordinates"])
    await r.check(s, "PATCH", url, status=200, json={"default_location": nulls})
    await r.check(s, "PATCH", url, status=200, data={"default_location.tariff": ""})
    patch = aiohttp.FormData({"email": "multi2@example.com"})
    await r.check(s, "PATCH", f"{url}?expand=default_location.tariff", status=200, data=patch)
    # well-formed requests the fake refuses
    await r.check(s, "POST", "/users", status=400, json={"email": fake.user_email(1)})
    await r.check(s, "PATCH", url, status=400, json={"email": fake.user_email(1)})
    await r.check(s, "GET", f"/users/user{'0' * 26}", status=404)
    await r.check(s, "PATCH", f"/users/user{'0' * 26}", status=404, json={})


async def test_invalid_requests_get_conforming_problems(
    run: tuple[Recorder, aiohttp.ClientSession],
) -> None:
    r, s = run
    bad = {"status": 400, "valid_request": False}
    await r.check(s, "GET", "/users?page_size=0", **bad)
    await r.check(s, "GET", "/users?page_size=%C2%B2", **bad)  # ²: not an ASCII digit
    await r.check(s, "GET", f"/users?page_size={'9' * 5000}", **bad)
    await r.check(s, "GET", f"/tariffs?page={'9' * 5000}", status=400)  # a number, so valid
    await r.check(s, "GET", "/users?page_after=nope", **bad)
    await r.check(s, "GET", "/users?expand=vehicles", **bad)
    await r.check(s, "GET", "/users", headers={"EvEnergy-Version": "3"}, **bad)
    await r.check(s, "POST", "/users", json={"email": "not-an-email"}, **bad)
    await r.check(
        s, "POST", "/users", json={"email": "a@example.com", "default_location": None}, **bad
    )
    partial = {"email": "a@example.com", "default_location": {"address_1": "x"}}
    await r.check(s, "POST", "/users", json=partial, **bad)
    form = {"email": "a@example.com", "default_location.city": "Leeds"}
    await r.check(s, "POST", "/users", data=form, **bad)
    country = {"email": "a@example.com", "default_location": {**LONDON, "country_code": "UK"}}
    await r.check(s, "POST", "/users", json=country, **bad)
    await r.check(s, "GET", "/users/nobody", status=404, valid_request=False)
    await r.check(s, "DELETE", "/users", status=405, valid_request=False)
    await r.check(s, "GET", "/nothing-here", status=404, valid_request=False)


async def test_tariffs_suppliers_and_sites(run: tuple[Recorder, aiohttp.ClientSession]) -> None:
    r, s = run
    fake = r.fake
    await r.check(s, "GET", "/tariffs", status=200)
    expand = "expand=supplier&expand=scheduler_tariff&expand=prices"
    await r.check(s, "GET", f"/tariffs?page=2&page_size=2&{expand}", status=200)
    query = (
        f"valid=true&gsp_group=_B&supplier_id={fake.supplier_id(1)}&include_optional=daily_prices"
    )
    await r.check(s, "GET", f"/tariffs?{query}", status=200)
    await r.check(s, "GET", f"/tariffs?available_for_user_id={fake.user_id(1)}", status=200)
    await r.check(s, "GET", "/tariffs?page=9", status=404)
    for index in range(6):
        await r.check(s, "GET", f"/tariffs/{fake.tariff_id(index)}?{expand}", status=200)
    await r.check(s, "GET", f"/tariffs/{fake.tariff_id(0)}", status=200)
    await r.check(s, "GET", f"/tariffs/tari{'0' * 26}", status=404)
    await r.check(s, "GET", "/suppliers?page_size=2", status=200)
    await r.check(s, "GET", "/suppliers?page=2&page_size=2", status=200)
    await r.check(s, "GET", f"/suppliers/{fake.supplier_id(2)}", status=200)
    await r.check(s, "GET", f"/suppliers/supl{'0' * 26}", status=404)
    await r.check(s, "GET", "/evse_sites", status=200)
    await r.check(s, "GET", f"/evse_sites/{fake.evse_site_id(1)}", status=200)
    await r.check(s, "GET", f"/evse_sites/site{'0' * 26}", status=404)


async def test_vehicles_and_evses(run: tuple[Recorder, aiohttp.ClientSession]) -> None:
    r, s = run
    users = await r.check(s, "GET", "/users?page_size=30", status=200)
    owner = next(u for u in users if u["vehicles"] and u["evses"])
    vehicle_id = owner["vehicles"][0].rsplit("/", 1)[1]
    evse_id = owner["evses"][0].rsplit("/", 1)[1]
    await r.check(s, "GET", "/vehicles", status=200)
    page = await r.check(s, "GET", "/vehicles?page_size=2&expand=user", status=200)
    await r.check(s, "GET", f"/vehicles?page_size=2&page_after={page[-1]['id']}", status=200)
    await r.check(s, "GET", f"/vehicles?page_before={page[-1]['id']}", status=200)
    await r.check(s, "GET", "/vehicles", status=200, headers={"EvEnergy-User": owner["id"]})
    await r.check(s, "GET", f"/vehicles/{vehicle_id}", status=200)
    await r.check(s, "GET", f"/vehicles/{vehicle_id}?expand=user", status=200)
    await r.check(s, "GET", f"/vehicles/vhcl{'0' * 26}", status=404)
    await r.check(s, "GET", "/vehicles?expand=trim", status=400)
    evses = await r.check(s, "GET", "/evses?page_size=100&expand=user", status=200)
    assert any("user" not in e for e in evses) and any("user" in e for e in evses)
    await r.check(s, "GET", f"/evses?page_size=3&page_before={evses[-1]['id']}", status=200)
    evse = await r.check(s, "GET", f"/evses/{evse_id}?expand=user", status=200)
    await r.check(s, "GET", f"/evses?cpid={evse['cpid']}", status=200)
    await r.check(s, "GET", "/evses", status=200, headers={"EvEnergy-User": owner["id"]})
    await r.check(s, "GET", f"/evses/{evses[0]['id']}", status=200)  # a site's
    await r.check(s, "GET", f"/evses/evse{'0' * 26}", status=404)
    await r.check(s, "GET", "/evses?page_after=nope", status=400, valid_request=False)


async def test_auth_faults_and_limits(run: tuple[Recorder, aiohttp.ClientSession]) -> None:
    r, s = run
    fake = r.fake
    basic = base64.b64encode(f"{fake.client_id}:{fake.client_secret}".encode()).decode()
    async with aiohttp.ClientSession() as anonymous:
        await r.check(anonymous, "GET", "/users", status=401)
        await r.check(anonymous, "GET", "/users", status=401, headers={"Authorization": "Bearer x"})
        async with anonymous.post(
            fake.token_url,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
        ) as response:
            token = (await response.json())["access_token"]
        report = r.validator.validate_exchange(r.seen[-1])
        assert report == []  # the token endpoint is outside the spec: skipped
        app = {"Authorization": f"Bearer {token}"}
        await r.check(anonymous, "GET", "/users/me", status=400, headers=app)
        acting = {**app, "EvEnergy-User": fake.user_id(3)}
        await r.check(anonymous, "GET", "/users/me", status=200, headers=acting)
        await r.check(anonymous, "GET", "/evse_sites", status=200, headers=acting)
        ghost = {**app, "EvEnergy-User": "user" + "0" * 26}
        await r.check(anonymous, "GET", "/users", status=400, headers=ghost)
    await r.check(s, "GET", "/users", status=406, headers={"Accept": "text/html"})
    fake.faults.fail_next(1, status=503, retry_after=1)
    await r.check(s, "GET", "/users", status=503)
    fake.faults.error_rate = 1.0
    await r.check(s, "GET", f"/tariffs/{fake.tariff_id(0)}", status=503)
    fake.faults.error_rate = 0.0
    fake.faults.garbage_next()
    await r.check(s, "GET", "/users/me", status=200, valid_response=False)
    fake.faults.cut_next_write()
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await s.post(f"{fake.base_url}/users", json={"email": "cut@example.com"})
    assert r.seen[-1].status is None
    assert r.validator.validate_exchange(r.seen[-1]) == []
    fake.rate_limit = 0
    limited = await r.check(s, "GET", "/users", status=429)
    assert limited["type"].endswith("/v2/problems/rate-limit-exceeded/")
    await r.check(s, "PATCH", "/users/me", status=429, json={})
    assert {200, 400, 401, 406, 429, 503} <= r.statuses


# --- the validator itself, on hand-made exchanges ------------------------------------------


def user_body(**location: Any) -> bytes:
    return msgspec.json.encode(
        {"id": USER, "url": f"https://api.ev.energy/v2/users/{USER}", "default_location": location}
    )


def validate(validator: SpecValidator, method: str, path: str, **kwargs: Any) -> Any:
    return validator.validate(
        method,
        f"http://127.0.0.1:9/v2{path}",
        kwargs.get("request_headers", {}),
        kwargs.get("request_body", b""),
        kwargs.get("status", 200),
        kwargs.get("headers", {"Content-Type": "application/json", **RATE}),
        kwargs.get("body", user_body()),
    )


def test_errata_country_code_null_and_me(validator: SpecValidator) -> None:
    cleared = user_body(country_code=None, address_1=None, coordinates=None)
    assert validate(validator, "GET", "/users/me", body=cleared).ok
    wrong = validate(validator, "GET", f"/users/{USER}", body=user_body(country_code="UK"))
    assert wrong.response_errors


def test_errata_read_only_fields_are_not_required_in_requests(validator: SpecValidator) -> None:
    json = {"Content-Type": "application/json"}
    report = validate(
        validator,
        "POST",
        "/users",
        request_headers=json,
        request_body=b'{"email": "a@example.com"}',
        status=201,
    )
    assert report.ok, report.problems()
    response = validate(validator, "GET", "/users/me", body=b'{"email": "a@example.com"}')
    assert response.response_errors  # but a response must carry id and url


def test_retry_after_is_the_wire_name(validator: SpecValidator) -> None:
    problem = {"Content-Type": "application/problem+json", **RATE}
    body = b'{"title": "Too Many Requests", "detail": "Try again in 3 seconds", "status": 429}'
    fine = validate(
        validator, "GET", "/users", status=429, body=body, headers={**problem, "Retry-After": "3"}
    )
    assert fine.ok, fine.problems()
    missing = validate(validator, "GET", "/users", status=429, body=body, headers=problem)
    assert missing.response_errors
    words = validate(
        validator,
        "GET",
        "/users/me",
        headers={"Content-Type": "application/json", **RATE, "Retry-After": "soon"},
    )
    assert words.response_errors  # RetryAfter on a 200 is checked under its wire name


def test_headers_and_links_are_checked(validator: SpecValidator) -> None:
    link = '<about:blank>; rel="previous", <https://x/v2/users?page_after=u>; rel="next"'
    ok = validate(
        validator,
        "GET",
        "/users",
        body=b"[]",
        headers={"Content-Type": "application/json", **RATE, "Link": link},
    )
    assert ok.ok, ok.problems()
    prev = validate(
        validator,
        "GET",
        "/users",
        body=b"[]",
        headers={
            "Content-Type": "application/json",
            **RATE,
            "Link": link.replace("previous", "prev"),
        },
    )
    assert prev.response_errors
    bare = validate(
        validator,
        "GET",
        "/users",
        body=b"[]",
        headers={"Content-Type": "application/json", "Link": link},
    )
    assert len(bare.response_errors) == 3  # version and both rate-limit headers
    nan = validate(
        validator,
        "GET",
        "/users",
        body=b"[]",
        headers={
            "Content-Type": "application/json",
            **RATE,
            "Link": link,
            "X-RateLimit-Limit": "lots",
        },
    )
    assert nan.response_errors


def test_undeclared_statuses_use_the_generic_problem_responses(validator: SpecValidator) -> None:
    problem = {"Content-Type": "application/problem+json", **RATE}
    body = b'{"title": "Service Unavailable", "detail": "later", "status": 503}'
    assert validate(validator, "GET", "/users", status=503, body=body, headers=problem).ok
    no_detail = validate(
        validator, "GET", "/users", status=503, body=b'{"title": "x"}', headers=problem
    )
    assert no_detail.response_errors
    teapot = validate(validator, "GET", "/users", status=418, body=body, headers=problem)
    assert teapot.response_errors


def test_form_bodies_are_validated_as_their_json_equivalent(validator: SpecValidator) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    complete = (
        b"email=a%40example.com&default_location.address_1=1+High+St"
        b"&default_location.city=London&default_location.postal_code=N1"
        b"&default_location.country_code=GB&default_location.coordinates.latitude=51.5"
        b"&default_location.coordinates.longitude=0&default_location.state="
    )
    assert form_to_json(form["Content-Type"], complete)["default_location"]["state"] is None
    ok = validate(
        validator, "POST", "/users", request_headers=form, request_body=complete, status=201
    )
    assert ok.ok, ok.problems()
    partial = validate(
        validator,
        "POST",
        "/users",
        request_headers=form,
        request_body=b"email=a%40example.com&default_location.city=Leeds",
        status=201,
    )
    assert partial.request_errors


def test_outside_the_api_is_skipped(validator: SpecValidator) -> None:
    report = validator.validate("POST", "http://127.0.0.1:9/o/token/", {}, b"", 200, {}, b"{}")
    assert report.skipped and report.ok


# --- the spec_check fixture --------------------------------------------------------------------


def test_spec_check_fails_the_test_whose_exchange_breaks_the_spec(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exchanges are validated after the test body, off the event loop; a violation still fails
    that test (in its call phase), and one recorded while fixtures are torn down fails there."""
    here = Path(__file__).parent
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest((here / "conftest.py").read_text())
    pytester.makepyfile(spec_conformance=(here / "spec_conformance.py").read_text())
    monkeypatch.setenv("EVENERGY_OPENAPI_SPEC", str(spec_path()))
    pytester.makepyfile(
        test_recorded=textwrap.dedent(
            """
            from types import SimpleNamespace

            import pytest

            def exchange(body):
                headers = {"Content-Type": "application/json", "EvEnergy-Version": "2",
                           "X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9"}
                return SimpleNamespace(
                    method="GET", url="http://127.0.0.1:9/v2/suppliers?page_size=2",
                    request_headers={"Authorization": "Bearer t"}, request_body=b"",
                    status=200, response_headers=headers, response_body=body, fault=None,
                )

            @pytest.fixture
            def late(spec_check):
                yield
                spec_check(exchange(b'[{"id": 5}]'))

            def test_breaks(spec_check):
                spec_check(exchange(b'[{"id": 5}]'))
                assert len(spec_check.exchanges) == 1  # recorded, not yet validated

            def test_records_nothing(spec_check):
                pass

            def test_breaks_while_torn_down(late):
                pass
            """
        )
    )
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-p", "no:cov", "-p", "no:hypothesispytest"
    )
    result.assert_outcomes(passed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*spec violation(s):*", "*GET http://127.0.0.1:9/v2/suppliers*"])
    result.stdout.fnmatch_lines(["FAILED test_recorded.py::test_breaks*"])
    result.stdout.fnmatch_lines(["ERROR test_recorded.py::test_breaks_while_torn_down*"])
