"""Run every benchmark, one after another, and print all their tables and how long each took.

    python benchmarks/run_all.py            # the full suite (about 5 minutes on 2 cores)
    python benchmarks/run_all.py --quick    # a smoke run with small sizes and 2 rounds
    python benchmarks/run_all.py --only stream --only get

Progress goes to stderr; the tables (Markdown) to stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, full-suite arguments, --quick arguments)
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    "import": (
        "bench_import.py",
        ["--rounds", "10", "--pairs", "3"],
        ["--rounds", "2", "--pairs", "1", "--importtime-runs", "1"],
    ),
    "decode": (
        "bench_decode.py",
        ["--pages", "20", "--repeat", "5", "--rounds", "9"],
        ["--pages", "5", "--repeat", "1", "--rounds", "2"],
    ),
    "stream": (
        "bench_stream.py",
        ["--users", "100000", "--page-size", "100", "--rounds", "9"],
        ["--users", "10000", "--page-size", "100", "--rounds", "2"],
    ),
    "get": (
        "bench_get.py",
        ["--requests", "5000", "--concurrency", "64", "--rounds", "9"],
        ["--requests", "500", "--concurrency", "64", "--rounds", "2"],
    ),
    "memory": (
        "bench_memory.py",
        ["--small", "10000", "--large", "1000000", "--rounds", "2"],
        ["--small", "1000", "--large", "20000", "--rounds", "1"],
    ),
    "profile-stream": (
        "profile_stream.py",
        ["--users", "100000", "--rounds", "5", "--decode-breakdown"],
        ["--users", "10000", "--rounds", "2", "--decode-breakdown"],
    ),
    "profile-get": (
        "profile_get.py",
        ["--requests", "3000", "--rounds", "5", "--steps"],
        ["--requests", "500", "--rounds", "2", "--steps"],
    ),
    # The rate budget and request economy: fixed scenarios, the same in --quick.
    "ratelimit": ("bench_ratelimit.py", [], []),
    "refs": ("bench_refs.py", [], []),
    "sync": (
        "bench_sync.py",
        ["--users", "20000", "--records", "5000", "--rounds", "3"],
        ["--users", "2000", "--records", "500", "--rounds", "1"],
    ),
}


def versions() -> str:
    names = [
        "evenergy-async",
        "aiohttp",
        "msgspec",
        "orjson",
        "attrs",
        "cattrs",
        "httpx",
        "pydantic",
    ]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (missing)")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", choices=sorted(SUITE), default=None)
    args = parser.parse_args()

    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; {versions()}"
    )
    durations: list[tuple[str, float, int]] = []
    total_start = time.perf_counter()
    for name, (script, full, quick) in SUITE.items():
        if args.only and name not in args.only:
            continue
        command = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        shown = " ".join(["python", f"benchmarks/{script}", *command[2:]])
        print(f"\n## {name}: `{shown}`", flush=True)
        print(f"running {shown}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        print(done.stdout, end="", flush=True)
        if done.returncode:
            print(f"\n**{script} failed with status {done.returncode}**", flush=True)
        durations.append((shown, seconds, done.returncode))

    print("\n## Durations\n")
    print("| command | seconds | status |")
    print("|---|---:|---|")
    for shown, seconds, status in durations:
        print(f"| `{shown}` | {seconds:.1f} | {'ok' if status == 0 else f'failed ({status})'} |")
    print(f"| total | {time.perf_counter() - total_start:.1f} | |")
    sys.exit(1 if any(status for _, _, status in durations) else 0)


if __name__ == "__main__":
    main()
