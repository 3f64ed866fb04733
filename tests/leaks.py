"""Where a secret could hide on an exception: its message, repr, attributes, traceback, and
every exception chained to it as cause or context."""

from __future__ import annotations

import traceback


def chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception reachable through ``__cause__`` and ``__context__``."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    texts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    for e in chain(exc):
        texts += [repr(e), str(e), repr(getattr(e, "__dict__", ""))]
    for secret in secrets:
        assert not [t for t in texts if secret in t], f"{secret!r} leaked"
