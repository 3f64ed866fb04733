"""Import time of ``import evenergy_async`` in a fresh interpreter, and of its first use.

The package loads its public names on first attribute access, so a bare
``import evenergy_async`` costs little; what an application pays is measured by
``import evenergy_async as ev; ev.Client; ev.User``.

Each measurement runs ``python -c "<import>"`` and ``python -c pass`` back to back, `--pairs`
times, and keeps the median difference: the import's own cost without interpreter start-up.
For reference the same is measured for the library's heaviest dependency (aiohttp, with
msgspec) and for the pydantic peer (httpx + pydantic).  Then ``python -X importtime`` splits
the library's import into self time per top-level package.  Modules are byte-compiled
(to a private PYTHONPYCACHEPREFIX) in the warm-up round, as an installed package would be.

    python benchmarks/bench_import.py --rounds 10 --pairs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

from _harness import print_table, run_rounds

FIRST_USE = "import evenergy_async as ev; ev.Client; ev.User"
STATEMENTS = {
    "import aiohttp, msgspec (dependency floor)": "import aiohttp, msgspec",
    "import evenergy_async (names load lazily)": "import evenergy_async",
    "import evenergy_async + first use of ev.Client, ev.User": FIRST_USE,
    "import httpx, pydantic (peer)": "import httpx, pydantic",
}
FLOOR = "import aiohttp, msgspec (dependency floor)"


# Byte-compiled modules as an installed package would have them: PYTHONDONTWRITEBYTECODE
# (set in some environments) would make every run compile the library from source.  The
# bytecode goes to a private prefix, not into the source tree.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "evenergy-bench-pycache")


def _run(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, env=ENV)
    return time.perf_counter() - start


def import_ms(statement: str, pairs: int) -> float:
    """Median over `pairs` of (time of the import) - (time of ``pass``), in ms."""
    return statistics.median(_run(statement) - _run("pass") for _ in range(pairs)) * 1000


def _importtime(statement: str) -> list[tuple[str, float]]:
    """(module, self µs) of every import ``python -X importtime -c statement`` reports."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        check=True,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    ).stderr
    found = []
    for line in err.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            self_us, _, name = line[len("import time:") :].split("|")
            found.append((name.strip(), float(self_us)))
    return found


def importtime_by_package(statement: str, runs: int) -> tuple[float, dict[str, float]]:
    """Self µs of everything `statement` imports beyond interpreter start-up, in total and
    per top-level package (medians of `runs`)."""
    startup = {module for module, _ in _importtime("pass")}
    totals: list[float] = []
    by_package: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        selves: dict[str, float] = defaultdict(float)
        for module, us in _importtime(statement):
            if module not in startup:
                selves[module.split(".")[0]] += us
        totals.append(sum(selves.values()))
        for package, us in selves.items():
            by_package[package].append(us)
    return statistics.median(totals), {
        p: statistics.median(v + [0.0] * (runs - len(v))) for p, v in by_package.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--importtime-runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    results = run_rounds(
        [
            (name, lambda s=statement: import_ms(s, args.pairs))
            for name, statement in STATEMENTS.items()
        ],
        args.rounds,
        args.warmup,
        fmt="{:.1f}",
    )
    print_table(
        "Import time in a fresh interpreter, minus `python -c pass` (ms, lower is better)",
        results,
        unit="ms",
        floor=FLOOR,
        ratio_label="cost vs aiohttp+msgspec",
        fmt="{:.1f}",
        delta=True,
    )
    total, packages = importtime_by_package(FIRST_USE, args.importtime_runs)
    print(
        f"\n`python -X importtime -c '{FIRST_USE}'`: {total / 1000:.1f} ms of imports beyond"
        f" start-up (median of {args.importtime_runs}); self time by top-level package:\n"
    )
    print("| package | self ms | share |")
    print("|---|---:|---:|")
    for package, us in sorted(packages.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {package} | {us / 1000:.1f} | {us / total:.0%} |")


if __name__ == "__main__":
    main()
