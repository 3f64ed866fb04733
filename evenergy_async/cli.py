"""The ``evenergy`` command: stream, read, create and update users; serve the fake API.

    evenergy users export [-o FILE] [--page-size N] [--expand PATH] [--resolve PATH] [--email E]
    evenergy users get ID [--expand PATH]
    evenergy users create --email E [--address-1 ... --country-code CC] [--tariff URL]
    evenergy users update ID [--email E] [address options] [--clear-address]
    evenergy users sync FILE [--dry-run] [--concurrency N] [--shard K/N] [--redis URL]
    evenergy fake [--host H] [--port P] [--users N] [--tariffs N] [--rate-limit N] ...

Credentials come from the environment: ``EVENERGY_TOKEN``, or ``EVENERGY_CLIENT_ID`` and
``EVENERGY_CLIENT_SECRET`` (client credentials grant; ``EVENERGY_TOKEN_URL`` overrides the token
endpoint); ``EVENERGY_BASE_URL`` (default production) and ``EVENERGY_USER`` (acting user).
Every ``users`` command takes ``--fake`` to run against an in-process `FakeEvEnergy` instead.

Users are printed in the API's JSON shape (see `to_api`), one object a line (JSON Lines).
Exit status: 0 success, 1 an API or transport error (for ``sync``: some record failed), 2 a
usage or input error, 130 interrupted (SIGINT), 143 terminated (SIGTERM); an interrupted export
says which ``--page-after`` resumes it.  Errors are one line on stderr, ``evenergy: error: ...``;
never a traceback for either kind.  The library's warnings (retries, long waits for rate-limit
budget) are shown on stderr as ``evenergy: warning: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import IO, Any, NoReturn

import attrs
import msgspec

from . import _sync, _validate
from ._convert import to_api
from ._ratelimit import RateLimiterProtocol
from .client import DEFAULT_BASE_URL, Client
from .errors import EvEnergyError, InvalidRequest
from .models import UNSET, LatLong, Location, SyncOutcome, UnsetType, User, UserPath
from .refs import Ref

__all__ = ["main", "to_api"]

PROG = "evenergy"

# The defaults of `FakeEvEnergy`, for `evenergy fake` (and its --help).
_FAKE_DEFAULTS = {"users": 1000, "tariffs": 20, "rate_limit": 1000, "rate_window": 3600.0}
_ADDRESS_FIELDS = ("address_1", "address_2", "city", "state", "postal_code", "country_code")


def _dumps_line(data: Any) -> bytes:
    return msgspec.json.encode(data) + b"\n"


# --- errors and argument parsing -------------------------------------------------------------


class UsageError(Exception):
    """Bad command-line input: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and exit 2) rather than usage + message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number within bounds."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, got {text!r}")
        return value

    return parse


def _real(minimum: float | None = None, *, strict: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number, above (`strict`) or at least `minimum`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        low = minimum is not None and (value <= minimum if strict else value < minimum)
        if not math.isfinite(value) or low:
            bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
            raise argparse.ArgumentTypeError(f"expected a finite number{bound}, got {text!r}")
        return value

    return parse


def _shard(text: str) -> tuple[int, int]:
    """An argparse type: ``K/N``, shard K (from 0) of N."""
    k, slash, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = (-1, 0)
    if not slash or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return shard


_positive_int = _whole(1)
_count = _whole(0)
_port = _whole(0, 65535)
_seconds = _real(0, strict=True)
_wait = _real(0)
_number = _real()


def _paths(values: Sequence[str] | None) -> tuple[UserPath, ...]:
    """Repeated ``--expand a --expand b`` and ``--expand a,b`` alike (the client refuses an
    unknown path with InvalidRequest)."""
    result: list[Any] = []
    for value in values or ():
        result.extend(part.strip() for part in value.split(",") if part.strip())
    return tuple(result)


def _build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Command-line client for the ev.energy v2 API.",
        epilog=(
            "Credentials: EVENERGY_TOKEN, or EVENERGY_CLIENT_ID + EVENERGY_CLIENT_SECRET; "
            f"EVENERGY_BASE_URL (default {DEFAULT_BASE_URL}); EVENERGY_USER (acting user). "
            "Exit status: 0 ok, 1 API/transport error, 2 usage/input error."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    users = commands.add_parser("users", help="list, read, create and update users")
    user_commands = users.add_subparsers(dest="action", metavar="ACTION", required=True)

    common = _Parser(add_help=False)
    group = common.add_argument_group("local fake (no credentials needed)")
    group.add_argument(
        "--fake", action="store_true", help="run against an in-process fake of the API"
    )
    group.add_argument(
        "--fake-users", type=_count, default=100, metavar="N", help="users in the fake (100)"
    )
    group.add_argument("--fake-seed", type=int, default=0, metavar="S", help="fake's seed (0)")
    group.add_argument(
        "--fake-rate-limit",
        type=_positive_int,
        default=_FAKE_DEFAULTS["rate_limit"],
        metavar="N",
        help="fake's requests per rolling hour (%(default)s)",
    )

    common.add_argument(
        "--max-rate-limit-wait",
        type=_wait,
        metavar="S",
        help="fail rather than wait longer than S seconds for rate-limit budget (default: wait)",
    )

    export = user_commands.add_parser(
        "export",
        parents=[common],
        help="stream every user as JSON Lines",
        description="Stream every user as JSON Lines (one API-shaped object a line).",
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    export.add_argument(
        "--page-size", type=int, default=100, metavar="N", help="users per request, 1-100 (100)"
    )
    _expand_option(export)
    export.add_argument(
        "--resolve",
        action="append",
        metavar="PATH",
        help="fetch a relation client-side, each distinct one once (repeatable): "
        + ", ".join(sorted(_validate.USER_EXPANSIONS)),
    )
    export.add_argument("--email", metavar="E", help="only the user with this email")
    export.add_argument(
        "--page-after",
        metavar="CURSOR",
        help="start after this user id, to resume an export (with -o, appends to FILE)",
    )

    get = user_commands.add_parser(
        "get", parents=[common], help="print one user ('me' for yourself)"
    )
    get.add_argument("id", metavar="ID", help="a user id, or 'me'")
    _expand_option(get)

    create = user_commands.add_parser("create", parents=[common], help="create a user")
    create.add_argument("--email", required=True, metavar="E")
    _address_options(create)

    update = user_commands.add_parser(
        "update",
        parents=[common],
        help="change a user; what is not given is left unchanged",
    )
    update.add_argument("id", metavar="ID", help="a user id, or 'me'")
    update.add_argument("--email", metavar="E")
    _address_options(update)
    update.add_argument(
        "--clear-address",
        action="store_true",
        help="set every address field and the coordinates to null",
    )
    update.add_argument("--clear-tariff", action="store_true", help="set the tariff to null")
    _expand_option(update)

    sync = user_commands.add_parser(
        "sync",
        parents=[common],
        help="make the server's users match a JSON Lines file",
        description="Make the server's users match FILE (JSON Lines in the shape `users export` "
        "writes; '-' reads stdin): users found by id (else by email) are updated where they "
        "differ, users not found are created. One JSON line per record on stdout; the plan, "
        "progress and a summary on stderr. Safe to run again after an interruption. "
        "Exit status 1 when some record failed.",
    )
    sync.add_argument("file", metavar="FILE", help="JSON Lines file of users, '-' for stdin")
    sync.add_argument(
        "--dry-run", action="store_true", help="write nothing; print what a run would do"
    )
    sync.add_argument(
        "--concurrency",
        type=_whole(1, 1000),
        default=8,
        metavar="N",
        help="records in flight at once (%(default)s)",
    )
    sync.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="only the records whose key hashes to shard K of N (run N processes, K = 0..N-1)",
    )
    sync.add_argument(
        "--redis",
        metavar="URL",
        help="share one rate-limit budget through Redis (e.g. between --shard processes)",
    )
    sync.add_argument(
        "--lookup",
        choices=("auto", "list", "each"),
        default="auto",
        help="find users by listing them all, one request per record, or whichever is cheaper "
        "(%(default)s)",
    )

    fake = commands.add_parser(
        "fake",
        help="serve a fake of the API until interrupted",
        description="Serve a stateful fake of the ev.energy API until SIGINT or SIGTERM. "
        "Prints EVENERGY_BASE_URL, EVENERGY_TOKEN, EVENERGY_CLIENT_ID and "
        "EVENERGY_CLIENT_SECRET as NAME=VALUE lines on stdout.",
    )
    fake.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    fake.add_argument(
        "--port", type=_port, default=8080, help="port to bind, 0 for any free one (%(default)s)"
    )
    fake.add_argument("--users", type=_count, default=_FAKE_DEFAULTS["users"], metavar="N")
    fake.add_argument("--tariffs", type=_count, default=_FAKE_DEFAULTS["tariffs"], metavar="N")
    fake.add_argument(
        "--rate-limit", type=_positive_int, default=_FAKE_DEFAULTS["rate_limit"], metavar="N"
    )
    fake.add_argument(
        "--rate-window", type=_seconds, default=_FAKE_DEFAULTS["rate_window"], metavar="S"
    )
    fake.add_argument("--seed", type=int, default=0, metavar="S")
    return parser


def _expand_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expand",
        action="append",
        metavar="PATH",
        help="have the server inline a relation (repeatable): "
        + ", ".join(sorted(_validate.USER_EXPANSIONS)),
    )


def _address_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("default location")
    for name in _ADDRESS_FIELDS:
        group.add_argument("--" + name.replace("_", "-"), dest=name, metavar="TEXT")
    group.add_argument("--latitude", type=_number, metavar="DEG")
    group.add_argument("--longitude", type=_number, metavar="DEG")
    group.add_argument("--tariff", metavar="URL", help="the tariff's URL")


def _location(args: argparse.Namespace) -> Location | UnsetType:
    """The Location the address options describe, UNSET fields for options not given."""
    fields: dict[str, Any] = {
        name: getattr(args, name) for name in _ADDRESS_FIELDS if getattr(args, name) is not None
    }
    if (args.latitude is None) != (args.longitude is None):
        raise UsageError("--latitude and --longitude go together")
    if args.latitude is not None:
        fields["coordinates"] = LatLong(args.latitude, args.longitude)
    if args.tariff is not None:
        fields["tariff"] = Ref(args.tariff)
    if getattr(args, "clear_address", False):
        if fields.keys() - {"tariff"}:
            raise UsageError("--clear-address cannot be combined with address options")
        fields.update(dict.fromkeys((*_ADDRESS_FIELDS, "coordinates")))
    if getattr(args, "clear_tariff", False):
        if "tariff" in fields:
            raise UsageError("--clear-tariff cannot be combined with --tariff")
        fields["tariff"] = None
    return Location(**fields) if fields else UNSET


# --- connecting ------------------------------------------------------------------------------


Options = Mapping[str, Any] | None  # Client(**options), or None for --fake


@attrs.frozen
class _Target:
    client: Client
    #: How many users the data set holds, when known (the fake): for an ETA.
    total: int | None = None


@contextlib.asynccontextmanager
async def _connect(
    args: argparse.Namespace, options: Options, limiter: RateLimiterProtocol | None = None
) -> AsyncIterator[_Target]:
    """A client on the API (`options` for `Client`), or with ``--fake`` on a fresh fake.

    The fake is seeded, so ``--fake-seed`` gives the same users run after run; the environment's
    credentials, base URL and acting user are not used with it.
    """
    if options is None:
        from .testing import FakeEvEnergy

        async with (
            FakeEvEnergy(
                users=args.fake_users, seed=args.fake_seed, rate_limit=args.fake_rate_limit
            ) as fake,
            Client(
                token=fake.token,
                base_url=fake.base_url,
                max_rate_limit_wait=args.max_rate_limit_wait,
                limiter=limiter,
            ) as client,
        ):
            yield _Target(client, args.fake_users)
        return
    async with Client(
        **options, max_rate_limit_wait=args.max_rate_limit_wait, limiter=limiter
    ) as client:
        yield _Target(client)


def _client_options(env: Mapping[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {"base_url": env.get("EVENERGY_BASE_URL") or DEFAULT_BASE_URL}
    token = env.get("EVENERGY_TOKEN")
    client_id = env.get("EVENERGY_CLIENT_ID")
    client_secret = env.get("EVENERGY_CLIENT_SECRET")
    if token:
        options["token"] = token
    elif client_id and client_secret:
        from ._auth import ClientCredentials

        options["credentials"] = ClientCredentials(
            client_id, client_secret, token_url=env.get("EVENERGY_TOKEN_URL") or None
        )
    else:
        raise UsageError(
            "no credentials: set EVENERGY_TOKEN, or EVENERGY_CLIENT_ID and "
            "EVENERGY_CLIENT_SECRET (or try --fake)"
        )
    if env.get("EVENERGY_USER"):
        options["acting_user"] = env["EVENERGY_USER"]
    return options


# --- output ----------------------------------------------------------------------------------


class _Output:
    """Bytes to a file or stdout (through its binary buffer when it has one)."""

    def __init__(self, stream: IO[Any], *, owned: bool) -> None:
        self._stream = stream
        self._binary = getattr(stream, "buffer", None) if not owned else stream
        self._owned = owned
        if self._binary is not None and self._binary is not stream:
            stream.flush()  # whatever was written as text goes first

    def write(self, data: bytes) -> None:
        if self._binary is not None:
            self._binary.write(data)
        else:
            self._stream.write(data.decode())

    def flush(self) -> None:
        (self._binary if self._binary is not None else self._stream).flush()

    def close(self) -> None:
        if self._owned:
            self._stream.close()
        else:
            self.flush()


class _Progress:
    """One status line on a terminal, rewritten in place (``\\r``) at most ten times a second.

    `done` is advanced by the export; `run` redraws on its own too, so the line stays live
    while the client waits for rate-limit budget.  The ETA is shown when the total is known
    (the fake's user count).
    """

    interval = 0.1

    def __init__(
        self,
        stream: IO[str],
        client: Client,
        page_size: int,
        total: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.done = 0
        self._stream = stream
        self._client = client
        self._page_size = page_size
        self._total = total
        self._clock = clock
        self._started = clock()
        self._shown = -math.inf
        self._width = 0

    @property
    def shown(self) -> bool:
        return self._width > 0

    def update(self, *, final: bool = False) -> None:
        now = self._clock()
        if not final and now - self._shown < self.interval:
            return
        self._shown = now
        line = self.line(now - self._started)
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self._stream.write("\r" + line + " " * pad + ("\n" if final else ""))
        self._stream.flush()

    async def run(self) -> None:
        """Redraw every half second until cancelled."""
        while True:
            await asyncio.sleep(0.5)
            self.update()

    def line(self, elapsed: float) -> str:
        done = self.done
        pages = math.ceil(done / self._page_size)
        parts = [_plural(done, "user"), _plural(pages, "page")]
        waiting = _budget_parts(self._client, parts)
        speed = done / elapsed if elapsed > 0 else 0.0
        parts.append(f"{speed:,.0f} users/s")
        # While waiting for budget, the rate so far says nothing of when the rest comes.
        if not waiting and self._total is not None and speed > 0 and done < self._total:
            parts.append(f"ETA {_duration((self._total - done) / speed)}")
        parts.append(f"{_duration(elapsed)} elapsed")
        return ", ".join(parts)


def _budget_parts(client: Client, parts: list[str]) -> bool:
    """Add the rate-limit budget to a progress line; True while the budget is spent."""
    rate = client.rate_limit
    if rate is None or rate.remaining is None:
        return False
    budget = f"{rate.remaining:,}"
    if rate.limit is not None:
        budget += f"/{rate.limit:,}"
    parts.append(f"rate-limit budget {budget}")
    if rate.remaining > 0:
        return False
    wait = _next_budget_in(client)
    parts.append("waiting for budget" + ("" if wait is None else f", next in {_duration(wait)}"))
    return True


def _next_budget_in(client: Client) -> float | None:
    """Seconds until the limiter may let the next request go, when it can tell."""
    state = getattr(getattr(client, "limiter", None), "state", None)
    next_change = getattr(state, "next_change", None)
    if callable(next_change):
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            now = None
        when = next_change(now) if now is not None else None
        if isinstance(when, int | float):
            return max(0.0, when - now)  # type: ignore[operator]
    rate = client.rate_limit
    return rate.retry_after if rate is not None else None


def _wait_report_after(env: Mapping[str, str]) -> float:
    """Tuning knob: ``EVENERGY_WAIT_REPORT_AFTER`` (seconds, default 5) is how long a wait for
    rate-limit budget lasts before it is told on stderr; the tests lower it so as not to sit
    through five real seconds.  Anything but a positive finite number means the default."""
    try:
        after = float(env.get("EVENERGY_WAIT_REPORT_AFTER", ""))
    except ValueError:
        return 5.0
    return after if math.isfinite(after) and after > 0 else 5.0


class _WaitReporter:
    """Without a terminal there is no progress line: a wait for rate-limit budget longer than
    `after` seconds is told on stderr instead, once per wait."""

    def __init__(self, stream: IO[str], client: Client, after: float | None = None) -> None:
        self._stream = stream
        self._client = client
        self._after = _wait_report_after(os.environ) if after is None else after

    async def run(self) -> None:
        tick = min(1.0, self._after)  # checked once a second, or oftener for a short threshold
        waited = 0.0
        told = False
        while True:
            await asyncio.sleep(tick)
            rate = self._client.rate_limit
            if rate is None or rate.remaining != 0:
                waited, told = 0.0, False
                continue
            waited += tick
            if waited >= self._after and not told:
                told = True
                wait = _next_budget_in(self._client)
                then = "" if wait is None else f"; the next request may go in {_duration(wait)}"
                self._stream.write(f"{PROG}: waiting for rate-limit budget{then}\n")
                self._stream.flush()


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


# --- the commands ----------------------------------------------------------------------------


async def _export(args: argparse.Namespace, options: Options, out: _Output) -> int:
    async with _connect(args, options) as target:
        client = target.client
        users = client.users.list(
            page_size=args.page_size,
            email=args.email,
            expand=_paths(args.expand),
            resolve=_paths(args.resolve),
            page_after=args.page_after,
        )
        progress: _Progress | None = None
        ticker: asyncio.Future[None] | None = None
        if _isatty(sys.stderr):
            total = target.total if args.email is None and args.page_after is None else None
            progress = _Progress(sys.stderr, client, args.page_size, total)
            ticker = asyncio.ensure_future(progress.run())
        else:
            ticker = asyncio.ensure_future(_WaitReporter(sys.stderr, client).run())
        done = 0
        last_id = args.page_after
        try:
            async for user in users:
                out.write(_dumps_line(to_api(user)))  # whole lines only, so a cut leaves none half
                last_id = user.id
                done += 1
                if done % args.page_size == 0:
                    out.flush()  # a page at a time, for a reader downstream
                if progress is not None:
                    progress.done = done
                    progress.update()
            out.flush()
        except asyncio.CancelledError:
            out.flush()
            hint = f"resume with --page-after {last_id}" if last_id else "nothing written yet"
            raise _Interrupted(hint) from None
        finally:
            await users.aclose()  # now, while the connection it holds can still be closed cleanly
            if ticker is not None:
                ticker.cancel()
            if progress is not None:
                progress.update(final=True)
    return 0


async def _get(args: argparse.Namespace, options: Options, out: _Output) -> int:
    async with _connect(args, options) as target:
        user = await target.client.users.get(args.id, expand=_paths(args.expand))
        _print_user(out, user)
    return 0


async def _create(args: argparse.Namespace, options: Options, out: _Output) -> int:
    location = _location(args)
    async with _connect(args, options) as target:
        user = await target.client.users.create(email=args.email, default_location=location)
        _print_user(out, user)
    return 0


async def _update(args: argparse.Namespace, options: Options, out: _Output) -> int:
    location = _location(args)
    email = UNSET if args.email is None else args.email
    if email is UNSET and location is UNSET:
        raise UsageError("nothing to change: give --email, address options or --clear-address")
    async with _connect(args, options) as target:
        user = await target.client.users.update(
            args.id, email=email, default_location=location, expand=_paths(args.expand)
        )
        _print_user(out, user)
    return 0


# --- users sync ----------------------------------------------------------------------------


class _RecordReader:
    """The records of a JSON Lines file, one a line (blank lines skipped), read as needed.

    A line that is not JSON is reported at once as a failed outcome and is not passed on; with
    shards, by the shard its position among the records falls in (as `Batch` places any record
    without a key), so exactly one of the processes reports it.  `line_of` maps a record's
    index back to its line number.
    """

    def __init__(
        self, stream: IO[bytes], out: _Output, counts: Counter[str], shard: tuple[int, int] | None
    ) -> None:
        self._stream = stream
        self._out = out
        self._counts = counts
        self._shard = shard
        self._lines: list[int] = []
        self.unreadable = 0  # lines of this shard that were not JSON

    def records(self) -> Iterator[Any]:
        for number, raw in enumerate(self._stream, 1):
            if not raw.strip():
                continue
            try:
                record = msgspec.json.decode(raw)
            except (msgspec.DecodeError, RecursionError) as exc:
                index = len(self._lines)
                if self._shard is None or index % self._shard[1] == self._shard[0]:
                    error = InvalidRequest("record", f"not JSON: {exc}")
                    self.unreadable += 1
                    self._counts["failed"] += 1
                    self._out.write(
                        _dumps_line(_outcome_line(_sync.failed(-1, None, error), number))
                    )
                continue
            self._lines.append(number)
            yield record

    def line_of(self, index: int) -> int | None:
        return self._lines[index] if 0 <= index < len(self._lines) else None


def _outcome_line(outcome: SyncOutcome, line: int | None) -> dict[str, Any]:
    return {
        "line": line,
        "email": outcome.email,
        "action": outcome.action,
        "id": outcome.id,
        "changed": list(outcome.changed),
        "error": None
        if outcome.error is None
        else str(outcome.error) or type(outcome.error).__name__,
    }


class _SyncProgress(_Progress):
    """The progress line of `users sync`: records done by action, and the budget."""

    def __init__(self, stream: IO[str], client: Client, counts: Counter[str]) -> None:
        super().__init__(stream, client, page_size=100, total=None)
        self._counts = counts

    def line(self, elapsed: float) -> str:
        counts = self._counts
        parts = [
            f"{_plural(sum(counts.values()), 'record')} done: "
            + ", ".join(f"{counts[a]:,} {a}" for a in _ACTIONS)
        ]
        _budget_parts(self._client, parts)
        parts.append(f"{_duration(elapsed)} elapsed")
        return ", ".join(parts)


_ACTIONS = ("created", "updated", "unchanged", "failed")


def _plan_text(plan: _sync.SyncPlan, client: Client, unreadable: int = 0) -> str:
    """The plan as told before the first write: what the look-up costs, and how long that
    takes at the rate limit the server reported.  `unreadable`: lines that were not JSON."""
    text = f"plan: {_plural(plan.to_match, 'record')} to match"
    refused = plan.refused + unreadable
    if refused:
        text += f" ({refused:,} refused)"
    if plan.lookup == "each":
        text += f"; look-up: one request per record, {plan.to_match:,} requests"
    elif plan.lookup == "list":
        text += "; look-up: one listing of every user, one request per 100 users"
    else:
        text += (
            "; look-up: listing every user, 100 a request, while that costs less than one "
            f"request per record, then one per record left: at most {plan.max_lookup_requests:,}"
            " requests"
        )
    rate = client.rate_limit
    bound = plan.max_lookup_requests
    if rate is not None and rate.limit is not None and rate.remaining is not None:
        window = client.limiter.window
        text += f"; rate limit {rate.remaining:,} of {rate.limit:,} left per {_duration(window)}"
        if bound is not None:
            wait = _sync.budget_wait(bound, rate.remaining, rate.limit, window)
            text += (
                ", so the look-up fits in the budget left"
                if wait == 0
                else f", so the look-up may wait up to {_duration(wait)} for budget"
            )
    text += "; then only what differs is written" if not plan.dry_run else "; dry run: no writes"
    return text


async def _sync_users(args: argparse.Namespace, options: Options, out: _Output) -> int:
    counts: Counter[str] = Counter()
    reader = _RecordReader(args.input, out, counts, args.shard)
    async with contextlib.AsyncExitStack() as stack:
        limiter: RateLimiterProtocol | None = None
        if args.redis:
            from ._redis import RedisRateLimiter

            redis_limiter = RedisRateLimiter(args.redis)
            stack.push_async_callback(redis_limiter.aclose)  # its connections, after the client
            limiter = redis_limiter
        target = await stack.enter_async_context(_connect(args, options, limiter))
        await _run_sync(args, target.client, reader, out, counts)
    return 1 if counts["failed"] else 0


async def _run_sync(
    args: argparse.Namespace,
    client: Client,
    reader: _RecordReader,
    out: _Output,
    counts: Counter[str],
) -> None:
    def on_plan(plan: _sync.SyncPlan) -> None:
        _tell(_plan_text(plan, client, reader.unreadable), progress)

    progress: _SyncProgress | None = None
    if _isatty(sys.stderr):
        progress = _SyncProgress(sys.stderr, client, counts)
        ticker = asyncio.ensure_future(progress.run())
    else:
        ticker = asyncio.ensure_future(_WaitReporter(sys.stderr, client).run())
    outcomes = client.users.sync(
        reader.records(),
        dry_run=args.dry_run,
        concurrency=args.concurrency,
        shard=args.shard,
        lookup=args.lookup,
        on_plan=on_plan,
    )
    interrupted = False
    try:
        async for outcome in outcomes:
            counts[outcome.action] += 1
            out.write(_dumps_line(_outcome_line(outcome, reader.line_of(outcome.index))))
            out.flush()  # a line per record done, as it is done
            if progress is not None:
                progress.update()
    except asyncio.CancelledError:
        interrupted = True
    finally:
        await outcomes.aclose()  # cancels the writes in flight, while the client is open
        ticker.cancel()
        if progress is not None:
            progress.update(final=True)
        _tell(_summary(counts, client, args.dry_run, interrupted), None)
    if interrupted:
        raise _Interrupted("running the same sync again finishes it")


def _summary(counts: Counter[str], client: Client, dry_run: bool, interrupted: bool) -> str:
    done = sum(counts.values())
    text = f"{_plural(done, 'record')}: " + ", ".join(f"{counts[a]:,} {a}" for a in _ACTIONS)
    stats = client.stats
    text += f"; {_plural(stats.requests, 'request')}"
    if stats.retries:
        text += f" ({stats.retries:,} {'retry' if stats.retries == 1 else 'retries'})"
    rate = client.rate_limit
    if rate is not None and rate.remaining is not None:
        left = f"{rate.remaining:,}" + (f"/{rate.limit:,}" if rate.limit is not None else "")
        text += f"; rate-limit budget left {left}"
    if dry_run:
        text += " (dry run: nothing written)"
    if interrupted:
        text += " (interrupted)"
    return text


def _tell(message: str, progress: _Progress | None) -> None:
    """A line on stderr, below the progress line if one is shown."""
    sys.stderr.write(
        ("\n" if progress is not None and progress.shown else "") + f"{PROG}: {message}\n"
    )
    sys.stderr.flush()


def _print_user(out: _Output, user: User) -> None:
    out.write(_dumps_line(to_api(user)))
    out.flush()


async def _serve_fake(args: argparse.Namespace) -> int:
    from .testing import FakeEvEnergy

    fake = FakeEvEnergy(
        users=args.users,
        tariffs=args.tariffs,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        seed=args.seed,
        host=args.host,
        port=args.port,
    )
    try:
        await fake.start()
    except OSError as exc:
        raise _Failure(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not on Windows / main thread
            pass
    try:
        sys.stdout.write(
            f"EVENERGY_BASE_URL={fake.base_url}\n"
            f"EVENERGY_TOKEN={fake.token}\n"
            f"EVENERGY_CLIENT_ID={fake.client_id}\n"
            f"EVENERGY_CLIENT_SECRET={fake.client_secret}\n"
        )
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: serving the fake API at {fake.base_url}; Ctrl-C stops it\n")
        sys.stderr.flush()
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await fake.close()
    return 0


class _Failure(Exception):
    """A failure outside the library (the fake's port in use): exit status 1."""


class _Interrupted(Exception):
    """SIGINT or SIGTERM stopped a command; the message says how to go on."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.signal = signal.SIGINT


async def _until_signalled(command: Any) -> int:
    """Await a command; SIGINT or SIGTERM cancels it, so it can stop cleanly and say where
    to resume, and `_Interrupted` names the signal.  Where handlers cannot be installed (not
    the main thread), Ctrl-C stays a KeyboardInterrupt."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        received.append(sig)
        if task is not None:
            task.cancel()

    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop, sig)
            handled.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        result: int = await command
        return result
    except _Interrupted as exc:
        if received:
            exc.signal = received[0]
        raise
    except asyncio.CancelledError:
        if not received:
            raise
        interrupted = _Interrupted("")
        interrupted.signal = received[0]
        raise interrupted from None
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


class _StderrHandler(logging.Handler):
    """The library's warnings (retries, long budget waits) as ``evenergy: warning: ...``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"{PROG}: {record.levelname.lower()}: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # a log line must never end the command
            self.handleError(record)


@contextlib.contextmanager
def _library_warnings() -> Iterator[None]:
    logger = logging.getLogger("evenergy_async")
    handler = _StderrHandler(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


_USER_ACTIONS = {
    "export": _export,
    "get": _get,
    "create": _create,
    "update": _update,
    "sync": _sync_users,
}


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.command == "fake":
        try:
            return asyncio.run(_serve_fake(args))
        except KeyboardInterrupt:  # where signal handlers cannot be installed
            return 0
    action = _USER_ACTIONS[args.action]
    options = None if args.fake else _client_options(env)
    if args.action == "export" and args.output:
        try:
            # Resuming (--page-after) adds to what the interrupted export wrote.
            mode = "ab" if args.page_after else "wb"
            stream: IO[Any] = open(args.output, mode)  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        out = _Output(stream, owned=True)
    else:
        out = _Output(sys.stdout, owned=False)
    if args.action == "sync":
        args.input = sys.stdin.buffer if args.file == "-" else _open_input(args.file, out)
    try:
        with _library_warnings():
            return asyncio.run(_until_signalled(action(args, options, out)))
    finally:
        out.close()
        if args.action == "sync" and args.input is not sys.stdin.buffer:
            args.input.close()


def _open_input(path: str, out: _Output) -> IO[bytes]:
    try:
        return open(path, "rb")  # closed by the caller
    except OSError as exc:
        out.close()
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    sys.stderr.flush()


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at devnull so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default ``sys.argv[1:]``); return the exit status."""
    try:
        args = _build_parser().parse_args(argv)
        return _run(args, os.environ)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except UsageError as exc:
        _error(str(exc))
        return 2
    except InvalidRequest as exc:
        _error(str(exc))
        return 2
    except EvEnergyError as exc:
        message = str(exc) or type(exc).__name__
        if exc.resume_cursor is not None:
            message += f" (resume with --page-after {exc.resume_cursor})"
        _error(message)
        return 1
    except _Failure as exc:
        _error(str(exc))
        return 1
    except _Interrupted as exc:
        what = "terminated" if exc.signal == signal.SIGTERM else "interrupted"
        sys.stderr.write(f"\n{PROG}: {what}" + (f"; {exc}" if str(exc) else "") + "\n")
        sys.stderr.flush()
        return 128 + int(exc.signal)
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return 130
