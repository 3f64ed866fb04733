"""The retry policy as a pure function: no event loop, no sockets, a clock the test moves."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

import evenergy_async as ev
from evenergy_async._policy import (
    MAX_SERVER_RETRY_AFTER,
    MAX_THROTTLED_ATTEMPTS,
    Call,
    CallState,
    Policy,
    Raise,
    Reconcile,
    Refresh,
    Response,
    Retry,
    Return,
    SendError,
    TokenError,
    backoff,
    decide,
)

GET = Call("GET", "/v2/users/x")
POST = Call("POST", "/v2/users", repeatable=False)
POST_LOOKUP = Call("POST", "/v2/users", repeatable=False, reconcilable=True)
POLICY = Policy(max_retries=2, backoff_base=1.0, backoff_cap=10.0)
WALL = 1_700_000_000.0


def response(status: int, **headers: str) -> Response:
    return Response(
        status, CIMultiDictProxy(CIMultiDict(headers)), b"", URL("https://x.test/v2/users/x")
    )


def run(call, outcome, state=None, policy=POLICY, now=0.0, jitter=0.5):
    return decide(call, outcome, state or CallState(), policy, now=now, wall=WALL, jitter=jitter)


def test_success_is_returned():
    ok = response(200)
    assert run(GET, ok) == Return(ok)
    assert run(POST, response(201)) == Return(response(201))


@pytest.mark.parametrize("status", [502, 503, 504])
def test_retryable_status_backs_off_with_full_jitter(status):
    decision = run(GET, response(status), jitter=0.5)
    assert isinstance(decision, Retry)
    assert decision.delay == 0.5 * min(10.0, 1.0 * 2**1)
    assert decision.state.retries == 1


def test_retry_after_is_honoured_for_5xx():
    decision = run(GET, response(503, **{"Retry-After": "3"}))
    assert isinstance(decision, Retry) and decision.delay == 3.0


def test_retry_after_as_past_date_is_no_wait():
    decision = run(GET, response(503, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert isinstance(decision, Retry) and decision.delay == 0.0


def test_retry_after_too_long_for_a_call_is_raised():
    long = str(MAX_SERVER_RETRY_AFTER + 1)
    decision = run(GET, response(503, **{"Retry-After": long}))
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.ServerError)


def test_retries_run_out():
    decision = run(GET, response(503), CallState(retries=2))
    assert isinstance(decision, Raise)
    assert isinstance(decision.error, ev.ServerError) and decision.error.status == 503


@pytest.mark.parametrize(("status", "cls"), [(500, ev.ServerError), (404, ev.NotFound)])
def test_other_errors_are_raised_at_once(status, cls):
    decision = run(GET, response(status))
    assert isinstance(decision, Raise) and type(decision.error) is cls


def test_connection_never_made_is_retried_even_for_a_post():
    decision = run(POST, SendError("refused", sent=False))
    assert isinstance(decision, Retry) and decision.state.retries == 1


def test_write_that_may_have_landed_without_look_up_is_outcome_unknown():
    decision = run(POST, SendError("reset", sent=True))
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.OutcomeUnknown)
    decision = run(POST, response(503))
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.OutcomeUnknown)


def test_write_that_may_have_landed_is_looked_up_after_a_backoff():
    decision = run(POST_LOOKUP, SendError("reset", sent=True), jitter=0.5)
    assert decision == Reconcile(1.0, CallState(retries=1), decision.error, final=False)
    assert isinstance(decision.error, ev.TransportError)


def test_write_answered_503_is_looked_up_after_retry_after():
    decision = run(POST_LOOKUP, response(503, **{"Retry-After": "3"}))
    assert isinstance(decision, Reconcile)
    assert decision.delay == 3.0 and not decision.final
    assert isinstance(decision.error, ev.ServerError)


def test_write_with_retries_spent_gets_a_last_look_up():
    decision = run(POST_LOOKUP, response(503), CallState(retries=2))
    assert isinstance(decision, Reconcile) and decision.final and decision.delay == 0.0


def test_429_waits_in_the_limiter_and_does_not_count_as_a_retry():
    decision = run(GET, response(429, **{"Retry-After": "5"}))
    assert decision == Retry(0.0, CallState(throttled=1), decision.reason)
    decision = run(POST, response(429))  # refused, so certainly not applied: resent
    assert isinstance(decision, Retry)


def test_429_longer_than_max_rate_limit_wait_is_raised():
    policy = attrs.evolve(POLICY, max_rate_limit_wait=2.0)
    decision = run(GET, response(429, **{"Retry-After": "5"}), policy=policy)
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.RateLimited)
    assert decision.error.retry_after == 5.0


def test_429_without_end_is_raised():
    state = CallState(throttled=MAX_THROTTLED_ATTEMPTS - 1)
    decision = run(GET, response(429), state)
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.RateLimited)


def test_401_refreshes_once_under_client_credentials():
    policy = attrs.evolve(POLICY, refreshable=True)
    decision = run(GET, response(401), policy=policy)
    assert decision == Refresh(CallState(refreshed=True))
    decision = run(GET, response(401), CallState(refreshed=True), policy=policy)
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.Unauthorized)


def test_401_with_a_static_token_is_raised():
    decision = run(GET, response(401))
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.Unauthorized)


def test_token_endpoint_failures_are_retried_like_requests():
    unavailable = ev.ServerError(503, headers={"Retry-After": "2"})
    decision = run(POST, TokenError(unavailable))  # the API request was never sent
    assert isinstance(decision, Retry) and decision.delay == 2.0
    decision = run(GET, TokenError(ev.TransportError("token request failed")))
    assert isinstance(decision, Retry)
    decision = run(GET, TokenError(ev.ServerError(500)))
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.ServerError)


# --- the deadline, on a clock the test moves ------------------------------------------------


def test_no_backoff_is_slept_past_the_deadline():
    state = CallState(deadline=10.0)
    assert isinstance(run(GET, response(503, **{"Retry-After": "3"}), state, now=6.0), Retry)
    decision = run(GET, response(503, **{"Retry-After": "3"}), state, now=7.5)
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.ServerError)
    decision = run(GET, SendError("timed out", sent=True, timed_out=True), state, now=10.0)
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.TransportError)


def test_429_past_the_deadline_is_rate_limited():
    decision = run(GET, response(429, **{"Retry-After": "5"}), CallState(deadline=4.0))
    assert isinstance(decision, Raise) and isinstance(decision.error, ev.RateLimited)


def test_write_past_the_deadline_gets_its_last_look_up_at_once():
    decision = run(POST_LOOKUP, response(503, **{"Retry-After": "30"}), CallState(deadline=5.0))
    assert isinstance(decision, Reconcile) and decision.final and decision.delay == 0.0


@given(
    timeout=st.floats(0.1, 30.0),
    deadline=st.floats(0.1, 100.0),
    retry_after=st.one_of(st.none(), st.floats(0.0, 60.0)),
    jitter=st.floats(0.0, 0.999),
    max_retries=st.integers(0, 10),
)
def test_a_failing_call_ends_by_its_deadline(timeout, deadline, retry_after, jitter, max_retries):
    """Drive a call whose every attempt times out or answers 503, moving a fake clock as the
    session would (each attempt takes its timeout, capped by what is left of the deadline;
    each retry sleeps its delay): it ends by the deadline, in at most 1 + max_retries tries."""
    policy = attrs.evolve(POLICY, max_retries=max_retries)
    headers = {} if retry_after is None else {"Retry-After": repr(retry_after)}
    now, attempts = 0.0, 0
    state = CallState(deadline=deadline)
    while True:
        assert state.deadline is not None and now < state.deadline  # the session's check
        attempts += 1
        now += min(timeout, state.deadline - now)
        failed = attempts % 2 == 0
        outcome = SendError("timed out", sent=True, timed_out=True) if failed else None
        decision = run(
            GET, outcome or response(503, **headers), state, policy, now=now, jitter=jitter
        )
        if isinstance(decision, Raise):
            break
        assert isinstance(decision, Retry)
        now += decision.delay
        state = decision.state
    assert now <= deadline
    assert attempts <= 1 + max_retries


@given(retry=st.integers(0, 64), jitter=st.floats(0.0, 0.999))
def test_backoff_is_bounded_by_its_cap(retry, jitter):
    assert 0.0 <= backoff(retry, POLICY, jitter) <= POLICY.backoff_cap


def test_a_request_repr_hides_its_token():
    from evenergy_async._policy import Request

    request = Request("GET", URL("https://x.test/v2/users"), {"Authorization": "Bearer SECRET"})
    assert "SECRET" not in repr(request)
    assert "Authorization" in repr(request)
