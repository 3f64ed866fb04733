"""The pytest plugin, as a downstream project meets it: installed, nothing to enable."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


# A run in a new process leaves out the plugins installed here that have nothing to do with
# this one (loading hypothesis's and anyio's is most of such a run's start-up).
UNRELATED = ("-p", "no:hypothesispytest", "-p", "no:anyio", "-p", "no:pytest_cov")


@pytest.fixture
def downstream(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project with pytest-asyncio configured as its docs advise (strict mode)."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


DOWNSTREAM_TESTS = """
import pytest

import evenergy_async as ev


@pytest.mark.asyncio
async def test_defaults(evenergy_fake, evenergy_client):
    users = [u async for u in evenergy_client.users.list(page_size=10)]
    assert len(users) == 25
    assert evenergy_client.base_url == evenergy_fake.base_url
    me = await evenergy_client.users.get("me")
    assert me.id == users[0].id


@pytest.mark.asyncio
@pytest.mark.evenergy_fake(users=3, seed=7)
async def test_marker_options(evenergy_client):
    users = [u async for u in evenergy_client.users.list()]
    assert len(users) == 3


@pytest.mark.evenergy_fake(users=4)
class TestClassMarker:
    @pytest.mark.asyncio
    @pytest.mark.evenergy_fake(rate_limit=2)
    @pytest.mark.evenergy_client(max_rate_limit_wait=0)
    async def test_closest_marker_wins_and_merges(self, evenergy_fake, evenergy_client):
        assert evenergy_fake.user_count == 4
        await evenergy_client.users.get("me")
        await evenergy_client.users.get("me")
        with pytest.raises(ev.RateLimited):
            await evenergy_client.users.get("me")


@pytest.mark.asyncio
@pytest.mark.parametrize("evenergy_fake", [{"users": 1}, {"users": 2}], indirect=True)
async def test_indirect(evenergy_fake, evenergy_client):
    users = [u async for u in evenergy_client.users.list()]
    assert len(users) == evenergy_fake.user_count


@pytest.mark.asyncio
async def test_state_does_not_leak_between_tests(evenergy_client):
    me = await evenergy_client.users.update("me", email="changed@example.org")
    assert me.email == "changed@example.org"


@pytest.mark.asyncio
async def test_fresh_fake_each_test(evenergy_client):
    me = await evenergy_client.users.get("me")
    assert me.email != "changed@example.org"


def test_sync_tests_are_untouched():
    assert True


@pytest.mark.asyncio
@pytest.mark.evenergy_fake(10)
async def test_positional_marker_arguments_are_refused(evenergy_fake):
    pass
"""


def test_downstream_project_uses_the_fixtures(downstream: pytest.Pytester) -> None:
    downstream.makepyfile(test_downstream=DOWNSTREAM_TESTS)
    result = downstream.runpytest(
        "--strict-markers", "-p", "no:cacheprovider", "-W", "error::RuntimeWarning"
    )
    result.assert_outcomes(passed=8, errors=1)
    result.stdout.fnmatch_lines(["*evenergy_fake takes keyword arguments only*"])


def test_markers_are_listed(downstream: pytest.Pytester) -> None:
    result = downstream.runpytest("--markers", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.evenergy_fake(**options)*", "@pytest.mark.evenergy_client(**options)*"]
    )


def test_plugin_module_imports_nothing_heavy(downstream: pytest.Pytester) -> None:
    """The plugin itself defers the fake (aiohttp.web) to the first fixture use."""
    downstream.makepyfile(
        test_light="""
        import sys

        def test_fake_not_loaded():
            assert "evenergy_async.testing.pytest_plugin" in sys.modules
            assert "evenergy_async.testing._fake" not in sys.modules
            assert "aiohttp.web" not in sys.modules
        """
    )
    result = downstream.runpytest_subprocess("-p", "no:cacheprovider", *UNRELATED)
    result.assert_outcomes(passed=1)


def test_without_pytest_asyncio_the_fixtures_say_so(
    downstream: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest-asyncio is optional: a project without it loses only these two fixtures."""
    shadow = downstream.mkdir("shadow") / "pytest_asyncio"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    downstream.makepyfile(
        test_plain="""
        import sys

        def test_fake(evenergy_fake):
            pass

        def test_client(evenergy_client):
            pass

        def test_sync_tests_still_run():
            assert "evenergy_async.testing._fake" not in sys.modules
        """
    )
    result = downstream.runpytest_subprocess(
        "-p", "no:asyncio", "-p", "no:cacheprovider", *UNRELATED
    )
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*the evenergy_fake fixture is async and needs pytest-asyncio*",
            "*the evenergy_client fixture is async and needs pytest-asyncio*",
        ]
    )


def test_client_alias_and_a_projects_own_client_wins(downstream: pytest.Pytester) -> None:
    downstream.makepyfile(
        test_alias="""
        import pytest

        @pytest.mark.asyncio
        async def test_alias(client, evenergy_client):
            assert client is evenergy_client
            assert (await client.users.get("me")).id
        """
    )
    downstream.makepyfile(
        test_own="""
        import pytest

        @pytest.fixture
        def client():
            return "mine"

        def test_own(client):
            assert client == "mine"
        """
    )
    result = downstream.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
