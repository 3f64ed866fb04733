"""What to do after each attempt of a call: a pure function, no I/O, no clock of its own.

`decide` takes what the attempt produced (a response, a failure to get one, or a failure to
get a token), the call's state so far and the time, and returns one of

- `Return`: hand the response back;
- `Retry`: send again after `delay` seconds (0 after a 429: the limiter holds the call);
- `Refresh`: forget the token (a 401 under client credentials) and send again at once;
- `Reconcile`: a write that may have landed: after `delay`, ask whether it did before
  sending it again (or, when `final`, before raising `error`);
- `Raise`: end the call with `error`.

The rules (README "Rate limits and retries"):

- 429 does not count against `max_retries`; the limiter holds every task until the server's
  Retry-After.  More than `MAX_THROTTLED_ATTEMPTS` in one call, a Retry-After longer than
  `max_rate_limit_wait`, or one running past the call's deadline raise `RateLimited`;
- connection failures, timeouts, 502/503/504 and the same at the token endpoint: backoff
  with full jitter (or the server's Retry-After, when at most `MAX_SERVER_RETRY_AFTER`), up
  to `max_retries` times;
- a write that is not safe to repeat (POST) is sent again only when it certainly never
  reached the server (the connection was never made, or 429); otherwise the caller's look-up
  decides (`Reconcile`), and without one the call raises `OutcomeUnknown`;
- a delay is never slept past the call's deadline: the error that asked for it is raised.
"""

from __future__ import annotations

import attrs
from multidict import CIMultiDictProxy
from yarl import URL

from . import _sansio
from .errors import EvEnergyError, OutcomeUnknown, ServerError, TransportError

__all__ = [
    "Call",
    "CallState",
    "Decision",
    "Policy",
    "Raise",
    "Reconcile",
    "Refresh",
    "Request",
    "Response",
    "Retry",
    "Return",
    "SendError",
    "TokenError",
    "backoff",
    "decide",
]

RETRY_STATUSES = frozenset({502, 503, 504})
# A server that keeps answering 429 is not waited out forever.
MAX_THROTTLED_ATTEMPTS = 50
# A 5xx whose Retry-After asks for longer than this is raised, not slept through in a call.
MAX_SERVER_RETRY_AFTER = 300.0


# The values below are made for every call and never changed once made: `attrs.define`, as a
# frozen slotted class assigns each field through a setattr call: its __init__ costs two to three
# times as much.


@attrs.define
class Request:
    """One HTTP request, ready to send: the body is encoded, the headers complete."""

    method: str
    url: URL
    headers: dict[str, str]
    body: bytes | None = None
    #: Seconds this attempt may take in all (connect, send, read).
    timeout: float = 30.0
    #: A response body longer than this (after decompression) is refused.
    max_bytes: int = 64 * 2**20

    def __repr__(self) -> str:
        # The headers carry the token: a repr (in a log, an assertion) must not.
        shown = {k: ("***" if k.lower() == "authorization" else v) for k, v in self.headers.items()}
        return f"Request({self.method} {self.url}, headers={shown!r})"


@attrs.define
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL


class SendError(Exception):
    """A transport's failure to get a response.  The session turns it into a library error,
    so it never leaves the library.

    `sent` is False only when the request certainly did not reach the server (the connection
    was never made); the message must hold no request header.
    """

    def __init__(self, message: str, *, sent: bool, timed_out: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.timed_out = timed_out


@attrs.define
class TokenError:
    """The token endpoint failed (5xx or no response): the API request was never sent."""

    error: ServerError | TransportError


Outcome = Response | SendError | TokenError


@attrs.define
class Call:
    """What the policy needs to know of the call: for messages, and whether it may repeat."""

    method: str
    path: str
    repeatable: bool = True
    #: The caller can look up whether a write landed (so an unknown outcome is not final).
    reconcilable: bool = False


@attrs.frozen
class Policy:
    max_retries: int = 5
    max_rate_limit_wait: float | None = None
    backoff_base: float = 0.25
    backoff_cap: float = 20.0
    #: Whether a 401 can be answered by fetching a new token (client credentials).
    refreshable: bool = False


@attrs.define
class CallState:
    retries: int = 0  # counted against max_retries
    throttled: int = 0  # 429s
    refreshed: bool = False
    #: When the call must have ended, on the session's monotonic clock; None: never.
    deadline: float | None = None


@attrs.define
class Return:
    response: Response


@attrs.define
class Retry:
    delay: float
    state: CallState
    reason: str


@attrs.define
class Refresh:
    state: CallState


@attrs.define
class Reconcile:
    delay: float
    state: CallState
    #: Raised when the look-up finds nothing and `final`; also the reason for the look-up.
    error: EvEnergyError
    final: bool


@attrs.define
class Raise:
    error: EvEnergyError


Decision = Return | Retry | Refresh | Reconcile | Raise


def backoff(retry: int, policy: Policy, jitter: float) -> float:
    """Full jitter: a delay in [0, min(cap, base * 2**retry)); `jitter` is uniform in [0, 1)."""
    return jitter * min(policy.backoff_cap, policy.backoff_base * 2.0**retry)


def decide(
    call: Call,
    outcome: Outcome,
    state: CallState,
    policy: Policy,
    *,
    now: float,
    wall: float,
    jitter: float,
) -> Decision:
    """The next step of `call` after `outcome`.

    `now` is the session's monotonic clock (the deadline's), `wall` seconds since the epoch
    (for Retry-After dates), `jitter` uniform in [0, 1).
    """
    if isinstance(outcome, Response) and outcome.status < 400:
        return Return(outcome)
    what = f"{call.method} {call.path}"
    if isinstance(outcome, TokenError):
        error: EvEnergyError = outcome.error
        server_wait = None
        if isinstance(error, ServerError):
            if error.status not in RETRY_STATUSES:
                return Raise(error)
            server_wait = _sansio.retry_after(error.headers, wall)
        return _retry(state, policy, now, jitter, server_wait, error, f"token request: {error}")
    if isinstance(outcome, SendError):
        error = TransportError(f"{what} failed: {outcome}")
        if outcome.sent and not call.repeatable:
            return _unknown(call, state, policy, now, jitter, None, error)
        return _retry(state, policy, now, jitter, None, error, str(outcome))

    status = outcome.status
    api_error = _sansio.error_from_response(status, outcome.headers, outcome.body, wall)
    if status == 429:
        throttled = state.throttled + 1
        pause = _sansio.retry_after(outcome.headers, wall) or 0.0
        limit = policy.max_rate_limit_wait
        if (
            throttled >= MAX_THROTTLED_ATTEMPTS
            or (limit is not None and pause > limit)
            or (state.deadline is not None and now + pause >= state.deadline)
        ):
            return Raise(api_error)
        # The limiter holds every task of the client until the server's Retry-After.
        return Retry(0.0, attrs.evolve(state, throttled=throttled), f"{what}: 429")
    if status == 401 and policy.refreshable and not state.refreshed:
        return Refresh(attrs.evolve(state, refreshed=True))
    if status in RETRY_STATUSES:
        wait = _sansio.retry_after(outcome.headers, wall)
        if wait is not None and wait > MAX_SERVER_RETRY_AFTER:
            return Raise(api_error)
        if not call.repeatable:
            return _unknown(call, state, policy, now, jitter, wait, api_error)
        return _retry(state, policy, now, jitter, wait, api_error, f"{what}: {status}")
    return Raise(api_error)


def _delay(state: CallState, policy: Policy, jitter: float, server_wait: float | None) -> float:
    return server_wait if server_wait is not None else backoff(state.retries + 1, policy, jitter)


def _past_deadline(state: CallState, now: float, delay: float) -> bool:
    return state.deadline is not None and now + delay >= state.deadline


def _retry(
    state: CallState,
    policy: Policy,
    now: float,
    jitter: float,
    server_wait: float | None,
    error: EvEnergyError,
    reason: str,
) -> Decision:
    if state.retries >= policy.max_retries:
        return Raise(error)
    delay = _delay(state, policy, jitter, server_wait)
    if _past_deadline(state, now, delay):
        return Raise(error)
    return Retry(delay, attrs.evolve(state, retries=state.retries + 1), reason)


def _unknown(
    call: Call,
    state: CallState,
    policy: Policy,
    now: float,
    jitter: float,
    server_wait: float | None,
    error: EvEnergyError,
) -> Decision:
    """A write that may have landed: the caller looks it up; without a look-up, unknown."""
    if not call.reconcilable:
        return Raise(OutcomeUnknown(f"{call.method} {call.path} may have been applied: {error}"))
    final = state.retries >= policy.max_retries
    delay = 0.0 if final else _delay(state, policy, jitter, server_wait)
    if _past_deadline(state, now, delay):
        delay, final = 0.0, True
    retries = state.retries if final else state.retries + 1
    return Reconcile(delay, attrs.evolve(state, retries=retries), error, final)
