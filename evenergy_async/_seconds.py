"""The check of a number of seconds, shared by the client's options and the limiters.

Kept apart from `_validate` (which builds on the codec) so the limiters depend on nothing but
the exception tree.
"""

from __future__ import annotations

import math

from .errors import InvalidRequest

__all__ = ["check_seconds"]


def check_seconds(value: object, field: str, *, zero_ok: bool = False) -> float:
    """A finite number of seconds, above zero (or at least zero with `zero_ok`)."""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if zero_ok else value > 0)
    ):
        return float(value)
    bound = ">= 0" if zero_ok else "> 0"
    raise InvalidRequest(field, f"expected a number of seconds {bound}, got {value!r}")
