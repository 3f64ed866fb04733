"""Fault injection and request statistics of the fake.

Faults (all off by default, settable at any time):

- ``error_rate``: the share of ``/v2`` requests answered ``503`` problem+json with
  ``Retry-After: error_retry_after`` before anything else happens (nothing is read, nothing is
  written, nothing is counted against the rate limit); drawn from a PRNG seeded with ``seed``;
- ``latency``: seconds added before every response (token endpoint included);
- ``cut_after_commit_rate``: the share of successful ``POST``/``PATCH`` on users that are committed
  and then answered by dropping the connection (the client sees a disconnect, not a status);
- one-shots: :meth:`Faults.fail_next`, :meth:`Faults.cut_next_write`, :meth:`Faults.garbage_next`.
  A failure from ``fail_next`` replaces the next ``/v2`` responses like ``error_rate`` does; a cut
  is used up only by a write that commits; garbage replaces the body of the next ``/v2`` responses
  after the request was fully handled (and counted).

Every injected fault is counted in :attr:`FakeStats.faults` by kind:
``"error_rate"``, ``"fail_next"``, ``"cut"``, ``"garbage"``, ``"latency"``.
"""

from __future__ import annotations

import random
from collections import Counter, deque

import attrs

DEFAULT_GARBAGE = b'{"id": "user01HN2NJ9NMRZBXT1H6FT9N7735", "url": '


@attrs.frozen
class InjectedFailure:
    """A response to send instead of handling the request."""

    status: int
    retry_after: float | None
    problem: bool
    kind: str


@attrs.frozen
class Garbage:
    body: bytes
    content_type: str


@attrs.define
class Faults:
    """Faults the fake injects; see the module docstring."""

    error_rate: float = 0.0
    error_retry_after: float = 0
    latency: float = 0.0
    cut_after_commit_rate: float = 0.0
    seed: int = 0
    _rng: random.Random = attrs.field(init=False, repr=False)
    _failures: deque[InjectedFailure] = attrs.field(init=False, factory=deque, repr=False)
    _cuts: int = attrs.field(init=False, default=0, repr=False)
    _garbage: deque[Garbage] = attrs.field(init=False, factory=deque, repr=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        retry_after: float | None = None,
        problem: bool = True,
    ) -> None:
        """Answer the next ``n`` ``/v2`` requests with ``status`` (problem+json unless ``problem``
        is False, then a plain-text body as a proxy would send); ``Retry-After`` when given."""
        failure = InjectedFailure(status, retry_after, problem, "fail_next")
        self._failures.extend([failure] * n)

    def cut_next_write(self, n: int = 1) -> None:
        """Drop the connection after committing each of the next ``n`` successful user writes."""
        self._cuts += n

    def garbage_next(
        self, n: int = 1, body: bytes = DEFAULT_GARBAGE, content_type: str = "application/json"
    ) -> None:
        """Send ``body`` (malformed by default) as the body of the next ``n`` ``/v2`` responses."""
        self._garbage.extend([Garbage(body, content_type)] * n)

    def clear(self) -> None:
        """Turn every fault off and forget pending one-shots."""
        self.error_rate = self.latency = self.cut_after_commit_rate = 0.0
        self._failures.clear()
        self._garbage.clear()
        self._cuts = 0

    # used by the fake
    def take_failure(self) -> InjectedFailure | None:
        if self._failures:
            return self._failures.popleft()
        if self.error_rate > 0 and self._rng.random() < self.error_rate:
            return InjectedFailure(503, self.error_retry_after, True, "error_rate")
        return None

    def take_cut(self) -> bool:
        if self._cuts > 0:
            self._cuts -= 1
            return True
        return self.cut_after_commit_rate > 0 and self._rng.random() < self.cut_after_commit_rate

    def take_garbage(self) -> Garbage | None:
        return self._garbage.popleft() if self._garbage else None


@attrs.define
class FakeStats:
    """What the fake has seen since it started (or since :meth:`reset`).

    ``requests`` counts by ``(method, route template)``, e.g. ``("GET", "/v2/users/{user_id}")``
    (``"<unmatched>"`` for paths no route serves); ``statuses`` counts responses by status
    (a dropped connection counts as status 0); ``rate_limited`` counts 429s from the rate limit
    (not injected ones); ``token_fetches`` counts tokens issued; ``faults`` counts injected faults.
    """

    requests: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    statuses: Counter[int] = attrs.field(factory=Counter)
    rate_limited: int = 0
    token_fetches: int = 0
    faults: Counter[str] = attrs.field(factory=Counter)

    @property
    def total(self) -> int:
        """All requests seen, token endpoint included."""
        return sum(self.requests.values())

    def count(self, method: str, route: str) -> int:
        """Requests seen for one route, e.g. ``stats.count("GET", "/v2/users")``."""
        return self.requests[(method, route)]

    def reset(self) -> None:
        self.requests.clear()
        self.statuses.clear()
        self.faults.clear()
        self.rate_limited = 0
        self.token_fetches = 0
