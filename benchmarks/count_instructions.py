"""Machine instructions per user (decoding, streaming) and per get, counted by valgrind.

A timing on a shared 2-core machine moves by ±0.2 from round to round; an instruction
count does not.  Each workload runs in a child process under ``valgrind --tool=callgrind``
twice, at a small and a large size, and the difference is divided by the difference in
size, so imports, start-up and connection set-up cancel out.  Instructions are not time
(cache misses and allocation weigh more in time), but they move the same way and show a
change of one percent reliably.

- decode: ``orjson.loads`` (floor), msgspec Structs of the same shape with relations as
  strings (the ceiling), then ``profile_stream.decode_steps``'s decoders into attrs models,
  each adding one part of what ours does, ending with ``Codec.decode_list`` itself; the same
  page bodies, fetched once.
- stream: ``bench_stream``'s floor (raw aiohttp + orjson) and ``client.users.list()``,
  each against a fake holding the small and the large number of users.
- get: ``bench_get``'s raw aiohttp + orjson and ``client.users.get``, 64 concurrent.

Needs valgrind (``apt install valgrind``); runs in about 7 minutes.

    python benchmarks/count_instructions.py
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _server import ServerInfo, fake_server

HERE = Path(__file__).resolve()
# workload -> contender -> unit counted
CONTENDERS = {
    # profile_stream.decode_steps, from dicts to ours
    "decode": [
        "orjson.loads",
        "msgspec Structs, relations as str",
        "attrs models, relations as str (no hook)",
        "attrs models, one constant Ref",
        "Codec.decode_list, vehicles and evses as str",
        "Codec.decode_list (one Ref per URL)",
    ],
    "stream": ["floor: aiohttp + orjson", "evenergy_async users.list"],
    "get": ["raw aiohttp + orjson", "evenergy_async users.get"],
}
UNIT = {"decode": "user", "stream": "user", "get": "get"}


def run_child(workload: str, contender: str, size: int, setup: Path) -> None:
    """The workload itself, in the process valgrind counts."""
    if workload == "decode":
        from profile_stream import decode_steps

        bodies: list[bytes] = pickle.loads(setup.read_bytes())
        decode = dict(decode_steps())[contender]
        for _ in range(size):  # size: passes over the bodies
            for body in bodies:
                decode(body)
        return
    servers = json.loads(setup.read_text())
    if workload == "stream":
        import bench_stream

        server = ServerInfo(**servers[str(size)])
        stream = bench_stream.floor if contender.startswith("floor") else bench_stream.ours
        assert asyncio.run(stream(server, size, 100)) == size
        return
    import bench_get

    server = ServerInfo(**servers["server"])
    ids: list[str] = servers["ids"][:size]
    get = bench_get.raw if contender.startswith("raw") else bench_get.ours
    assert asyncio.run(get(server, ids, 64)) == size


def count(workload: str, contender: str, size: int, setup: Path, out: Path) -> int:
    """Instructions the child ran for `workload` at `size`."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(HERE),
        "--child",
        workload,
        contender,
        str(size),
        str(setup),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for line in out.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {out}")


def measure(workload: str, sizes: tuple[int, int], setup: Path, tmp: Path) -> dict[str, float]:
    per_unit: dict[str, float] = {}
    for contender in CONTENDERS[workload]:
        small, large = (count(workload, contender, n, setup, tmp / "callgrind.out") for n in sizes)
        per_unit[contender] = (large - small) / (sizes[1] - sizes[0])
        print(f"  {workload}: {contender} done", file=sys.stderr, flush=True)
    return per_unit


def print_counts(title: str, unit: str, per_unit: dict[str, float]) -> None:
    floor = next(iter(per_unit.values()))
    print(f"\n### {title} (instructions per {unit}, lower is better)\n")
    print(f"| contender | instructions per {unit} | vs the first |")
    print("|---|---:|---:|")
    for contender, value in per_unit.items():
        print(f"| {contender} | {value:,.0f} | {value / floor:.3f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(CONTENDERS), action="append")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        workload, contender, size, setup = args.child
        run_child(workload, contender, int(size), Path(setup))
        return
    if shutil.which("valgrind") is None:
        sys.exit("count_instructions.py needs valgrind on the PATH")
    workloads = args.only or list(CONTENDERS)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        results: dict[str, dict[str, float]] = {}
        if "decode" in workloads:
            from bench_decode import fetch_bodies

            with fake_server(2000) as server:
                bodies = asyncio.run(fetch_bodies(server.base_url, server.token, 20, 100))
            (tmp / "bodies.pkl").write_bytes(pickle.dumps(bodies))
            # 2,000 users a pass: 1 and 6 passes
            decode = measure("decode", (1, 6), tmp / "bodies.pkl", tmp)
            results["decode"] = {k: v / 2000 for k, v in decode.items()}
        if "stream" in workloads:
            with fake_server(2000) as small, fake_server(12000) as large:
                servers = {"2000": dataclasses.asdict(small), "12000": dataclasses.asdict(large)}
                (tmp / "servers.json").write_text(json.dumps(servers))
                results["stream"] = measure("stream", (2000, 12000), tmp / "servers.json", tmp)
        if "get" in workloads:
            import bench_get

            with fake_server(3000) as server:
                ids = asyncio.run(bench_get.fetch_ids(server, 2500))
                setup = {"server": dataclasses.asdict(server), "ids": ids}
                (tmp / "get.json").write_text(json.dumps(setup))
                results["get"] = measure("get", (500, 2500), tmp / "get.json", tmp)
    titles = {
        "decode": "Decoding 2,000 users (20 pages of 100)",
        "stream": "Streaming users at page_size=100, the consumer reading email and tariff",
        "get": "users.get, 64 concurrent",
    }
    for workload, per_unit in results.items():
        print_counts(titles[workload], UNIT[workload], per_unit)


if __name__ == "__main__":
    main()
