"""Shared test set-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


class SpecCheck:
    """An `on_exchange` hook for FakeEvEnergy that only records each exchange.

    Validating against the OpenAPI spec costs tens of milliseconds per exchange; done inside
    the fake's handler it ran on the client's event loop and changed the timing of the very
    tests it checked. So the hook appends and returns, and `problems()` validates what was
    recorded since its last call, after the test body has run.
    """

    def __init__(self) -> None:
        self.exchanges: list[Any] = []
        self._validated = 0

    def __call__(self, exchange: Any) -> None:
        self.exchanges.append(exchange)

    def discard(self) -> None:
        """Leave what was recorded so far unvalidated."""
        self._validated = len(self.exchanges)

    def problems(self) -> list[str]:
        from spec_conformance import SpecValidator

        pending = self.exchanges[self._validated :]
        self._validated = len(self.exchanges)
        validator = SpecValidator()
        return [
            problem for exchange in pending for problem in validator.validate_exchange(exchange)
        ]


_SPEC_CHECK = pytest.StashKey[SpecCheck]()


def _fail_on(problems: list[str]) -> None:
    if problems:
        pytest.fail(f"{len(problems)} spec violation(s):\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def spec_check(request: pytest.FixtureRequest) -> Iterator[SpecCheck]:
    """Every request the client sends and every response the fake answers is validated against
    the published OpenAPI spec once the test body has run; a violation fails that test."""
    check = SpecCheck()
    request.node.stash[_SPEC_CHECK] = check
    yield check
    _fail_on(check.problems())  # exchanges made while other fixtures were torn down


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Validate the exchanges a test body recorded, failing the test itself (not its teardown)."""
    check = item.stash.get(_SPEC_CHECK, None)
    try:
        result = yield
    except BaseException:
        if check is not None:
            check.discard()  # the test failed already; its own error says more
        raise
    if check is not None:
        _fail_on(check.problems())
    return result


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests (real time is their point) run only when a -m expression names them, as
    .ci/run's separate `-m slow` run does; otherwise they are skipped, saying so under -ra."""
    if "slow" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="slow: waits in real time; run with -m slow (.ci/run does)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


_STOP_BACKGROUND = pytest.StashKey[Callable[[], None]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the type check of tests/test_typing.py as soon as the tests to run are known: it
    runs on a spare core while the rest of the suite runs, and its tests wait for its report.

    Not in a pytest-xdist worker: every worker collects every test but runs only its share,
    and the other workers already keep the cores busy; there the typing tests start it."""
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):
        return
    for item in session.items:
        module = getattr(item, "module", None)
        if item.get_closest_marker("typecheck") is not None and hasattr(module, "start_mypy"):
            module.start_mypy()
            session.config.stash[_STOP_BACKGROUND] = module.stop_mypy
            return


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop = session.config.stash.get(_STOP_BACKGROUND, None)
    if stop is not None:
        stop()
