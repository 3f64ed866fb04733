"""Shared test set-up."""

from __future__ import annotations

import _aioresponses_compat

_aioresponses_compat.install()

import collections
import re

import pytest

SAMPLES_PER_KIND = 3
_ID = re.compile(r"[a-z]{4}[0-9A-Z]{26}|/me(?=$|/)")


@pytest.fixture
def spec_check():
    """An `on_exchange` hook for FakeEvEnergy: every request the client sends and every response
    the fake answers is validated against the published OpenAPI spec; violations fail the test."""
    try:
        from spec_conformance import SpecValidator
    except ImportError:  # pragma: no cover - the validator module is part of this suite
        yield None
        return
    validator = SpecValidator()
    problems: list[str] = []
    seen: collections.Counter[tuple[str, str, int | None]] = collections.Counter()

    def check(exchange):  # noqa: ANN001, ANN202
        # Validating a page of users takes openapi-core a long while: a few exchanges of each
        # kind (method, route, status) show their shape; the rest add time, not coverage.
        kind = (exchange.method, _ID.sub("{id}", exchange.url.split("?")[0]), exchange.status)
        seen[kind] += 1
        if seen[kind] <= SAMPLES_PER_KIND:
            problems.extend(validator.validate_exchange(exchange))

    yield check
    assert not problems, "\n".join(problems)
