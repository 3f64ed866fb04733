"""Run `FakeEvEnergy` in a separate process, so the client and the server do not share a core.

    with fake_server(users=100_000) as server:
        server.base_url, server.token

The child prints one JSON line (base_url, token) once it listens, then serves until its stdin
closes (the parent exiting closes it too, so no server outlives its benchmark).

Run directly, it serves until Ctrl-C or EOF on stdin:

    python benchmarks/_server.py --users 100000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ServerInfo", "fake_server"]

UNLIMITED = 10**9


@dataclass(frozen=True)
class ServerInfo:
    base_url: str
    token: str
    pid: int


@contextlib.contextmanager
def fake_server(
    users: int,
    *,
    rate_limit: int = UNLIMITED,
    rate_window: float = 3600.0,
    tariffs: int = 20,
    seed: int = 0,
    page_cache: int | None = None,
) -> Iterator[ServerInfo]:
    """Start the fake in a child process; yield where it listens; stop it on exit.

    `page_cache` raises the fake's cache of serialized list pages (512 pages by default),
    so a benchmark that streams more pages than that does not measure the fake rendering them.
    """
    command = [
        sys.executable,
        __file__,
        "--users",
        str(users),
        "--rate-limit",
        str(rate_limit),
        "--rate-window",
        str(rate_window),
        "--tariffs",
        str(tariffs),
        "--seed",
        str(seed),
    ]
    if page_cache is not None:
        command += ["--page-cache", str(page_cache)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake server exited with status {proc.wait()} before listening")
        info = json.loads(line)
        yield ServerInfo(info["base_url"], info["token"], proc.pid)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _serve(args: argparse.Namespace) -> None:
    from evenergy_async.testing import FakeEvEnergy

    options = {} if args.page_cache is None else {"page_cache": args.page_cache}
    async with FakeEvEnergy(
        users=args.users,
        tariffs=args.tariffs,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        seed=args.seed,
        host=args.host,
        port=args.port,
        **options,
    ) as fake:
        print(json.dumps({"base_url": fake.base_url, "token": fake.token}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.read(4096):  # serve until the parent closes our stdin
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--tariffs", type=int, default=20)
    parser.add_argument("--rate-limit", type=int, default=UNLIMITED)
    parser.add_argument("--rate-window", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--page-cache", type=int, default=None)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
