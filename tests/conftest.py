"""Shared test set-up."""

from __future__ import annotations

import pytest


@pytest.fixture
def spec_check():
    """An `on_exchange` hook for FakeEvEnergy: every request the client sends and every response
    the fake answers is validated against the published OpenAPI spec; violations fail the test."""
    from spec_conformance import SpecValidator

    validator = SpecValidator()
    problems: list[str] = []

    def check(exchange):
        problems.extend(validator.validate_exchange(exchange))

    yield check
    assert not problems, "\n".join(problems)
