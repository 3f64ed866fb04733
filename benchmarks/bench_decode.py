"""Decode cost per user, no network: each decoder turns the same pre-loaded list bodies
(pages of ``GET /users`` fetched once from the fake) into its objects.

- orjson.loads:                 bytes to dicts only (the floor)
- evenergy_async decode_list:   ``Codec.decode_list(bytes, User)``, one codec for all pages as
                                a stream has: msgspec, in C, into the frozen attrs models, Refs
                                built by a hook
- ... vehicles and evses as str: the same into a `User` whose `vehicles` and `evses` are URL
                                strings rather than Refs (`_peers.UrlListUser`): a
                                contract change measured, not made
- msgspec Structs:              ``msgspec.json.Decoder(list[User]).decode(bytes)`` into
                                Structs of the same shape, relations as strings (the ceiling)
- pydantic validate_json:       ``TypeAdapter(list[User]).validate_json(bytes)``
- pydantic validate_python:     orjson.loads + ``TypeAdapter(list[User]).validate_python``
- cattrs Converter():           orjson.loads + a default cattrs converter structuring the same
                                attrs classes (hooks added only for what it cannot know: Ref,
                                datetime, and unions with UNSET)

    python benchmarks/bench_decode.py --pages 20 --repeat 5 --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import time
import types
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any, Union, get_args, get_origin

import aiohttp
import cattrs
import orjson
from _harness import print_table, run_rounds
from _peers import UrlListUser, headers, ms_users, next_link, pyd_users
from _server import fake_server

from evenergy_async import UnsetType, User
from evenergy_async._convert import Codec
from evenergy_async.refs import Ref


async def fetch_bodies(base_url: str, token: str, pages: int, page_size: int) -> list[bytes]:
    bodies = []
    url: str | None = f"{base_url}/users?page_size={page_size}"
    async with aiohttp.ClientSession(headers=headers(token)) as session:
        while url is not None and len(bodies) < pages:
            async with session.get(url) as resp:
                resp.raise_for_status()
                bodies.append(await resp.read())
                url = next_link(resp.headers.get("Link"))
    return bodies


def default_cattrs(detailed_validation: bool = True) -> cattrs.Converter:
    """A stock converter, taught only what no converter can guess about these classes."""
    converter = cattrs.Converter(detailed_validation=detailed_validation)
    converter.register_structure_hook(datetime, lambda value, _: datetime.fromisoformat(value))
    # A relation field's type is a Ref class (`refs.ref_to`), or Ref[X] in a user's own model.
    converter.register_structure_hook_func(
        lambda t: (isinstance(t, type) and issubclass(t, Ref)) or get_origin(t) is Ref,
        lambda value, t: (t if isinstance(t, type) else Ref)(value),
    )

    def has_unset(t: Any) -> bool:
        return get_origin(t) in (Union, types.UnionType) and UnsetType in get_args(t)

    def without_unset(t: Any) -> Callable[[Any, Any], Any]:
        inner = typing.Union[tuple(a for a in get_args(t) if a is not UnsetType)]  # noqa: UP007
        hook = converter.get_structure_hook(inner)
        return lambda value, _: hook(value, inner)

    converter.register_structure_hook_factory(has_unset, without_unset)
    return converter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="passes over all pages per measure")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    with fake_server(args.pages * args.page_size) as server:
        bodies = asyncio.run(
            fetch_bodies(server.base_url, server.token, args.pages, args.page_size)
        )
    users = sum(len(orjson.loads(b)) for b in bodies)
    loads = orjson.loads
    validate_json = pyd_users.validate_json
    validate_python = pyd_users.validate_python
    cattrs_default = default_cattrs()
    cattrs_fast = default_cattrs(detailed_validation=False)
    list_of_users = list[User]
    codec = Codec(None)  # one per stream, as `users.list()` has
    url_lists = Codec(None)

    decoders: dict[str, Callable[[bytes], Any]] = {
        "orjson.loads (floor)": loads,
        "evenergy_async decode_list": lambda b: codec.decode_list(b, User)[0],
        "evenergy_async, vehicles and evses as str": lambda b: url_lists.decode_list(
            b, UrlListUser
        )[0],
        "msgspec Structs (ceiling)": ms_users.decode,
        "pydantic validate_json": validate_json,
        "pydantic orjson + validate_python": lambda b: validate_python(loads(b)),
        "cattrs Converter() defaults": lambda b: cattrs_default.structure(loads(b), list_of_users),
        "cattrs Converter(detailed_validation=False)": lambda b: cattrs_fast.structure(
            loads(b), list_of_users
        ),
    }

    # Same data out of every decoder.
    first = {name: decode(bodies[0]) for name, decode in decoders.items()}
    ours = first["evenergy_async decode_list"][0]
    for name, decoded in first.items():
        user = decoded[0]
        if isinstance(user, dict):
            email, tariff = user["email"], user["default_location"]["tariff"]
        else:
            email, tariff = user.email, user.default_location.tariff
        tariff_url = tariff.url if isinstance(tariff, Ref) else tariff
        assert email == ours.email, name
        assert tariff_url == ours.default_location.tariff.url, name

    def measure(decode: Callable[[bytes], Any]) -> float:
        # CPU time: on a shared machine, waiting for a core does not count against a decoder.
        start = time.process_time()
        for _ in range(args.repeat):
            for body in bodies:
                decode(body)
        return (time.process_time() - start) / (args.repeat * users) * 1e6

    results = run_rounds(
        [(name, lambda d=decode: measure(d)) for name, decode in decoders.items()],
        args.rounds,
        args.warmup,
        fmt="{:.2f}",
    )
    print_table(
        f"Decode {users:,} users ({len(bodies)} pages of {args.page_size}) × {args.repeat} "
        f"(CPU µs per user, lower is better)",
        results,
        unit="µs/user",
        floor="orjson.loads (floor)",
        ratio_label="cost vs orjson.loads",
        fmt="{:.2f}",
        delta=True,
    )


if __name__ == "__main__":
    main()
