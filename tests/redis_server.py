"""Start a throwaway `redis-server` for tests, examples and benchmarks (not a test module).

    with redis_server() as url:      # "redis://127.0.0.1:<port>/0"
        ...

It listens on a free loopback port, runs in a temporary directory with persistence off
(``--save "" --appendonly no``) and is stopped (and its directory removed) on exit.
`REDIS_SERVER` names the binary if it is not ``redis-server`` on PATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

__all__ = ["free_port", "redis_server", "redis_server_binary"]


def redis_server_binary() -> str | None:
    """The redis-server executable, or None if it is not installed."""
    return shutil.which(os.environ.get("REDIS_SERVER", "redis-server"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(startup_timeout: float = 10.0) -> Iterator[str]:
    """Run a redis-server until the block ends; yield its URL."""
    binary = redis_server_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="evenergy-redis-") as tmp:
        for _attempt in range(5):  # a port can be taken between choosing and binding it
            port = free_port()
            proc = subprocess.Popen(
                [
                    binary,
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--dir", tmp,
                    "--save", "",
                    "--appendonly", "no",
                    "--protected-mode", "yes",
                    "--loglevel", "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            deadline = time.monotonic() + startup_timeout
            while proc.poll() is None and time.monotonic() < deadline and not _ping(port):
                time.sleep(0.02)
            if proc.poll() is None and _ping(port):
                break
            proc.kill()
            proc.wait()
        else:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"redis-server did not start: {err.strip()}")
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
