"""`Ref`: a lazy link to a related resource, named by its absolute URL.

A Ref is resolved through the client that decoded it (its resolver), so the request carries
that client's credentials and acting user, goes through its rate limiter and lands in its
cache.  An expanded relation (``expand=``) arrives already resolved.
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from typing import Any, Generic, Protocol, TypeVar

from .errors import EvEnergyError

T = TypeVar("T")

__all__ = ["Ref", "Resolver", "ref_to"]


class Resolver(Protocol):
    async def resolve(self, ref: Ref[Any] | str) -> Any: ...


_MISSING: Any = object()


class Ref(Generic[T]):
    """A related resource: `url` always, `value` once `resolved`; ``await ref`` resolves it.

    Two Refs are equal when they name the same URL, resolved or not.
    """

    __slots__ = ("_resolver", "_value", "url")

    url: str

    def __init__(self, url: str, value: Any = _MISSING, resolver: Resolver | None = None) -> None:
        self.url = url
        self._value = value
        self._resolver = resolver

    @property
    def id(self) -> str:
        """The resource id: the URL's last non-empty path segment."""
        path = self.url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
        return path.rsplit("/", 1)[-1]

    @property
    def resolved(self) -> bool:
        return self._value is not _MISSING

    @property
    def value(self) -> T:
        """The resolved resource; raises EvEnergyError if it has not been resolved yet."""
        if self._value is _MISSING:
            raise EvEnergyError(f"{self.url} is not resolved yet: await ref.resolve() first")
        return self._value  # type: ignore[no-any-return]

    async def resolve(self) -> T:
        """Fetch the resource (once; later calls return the same value)."""
        if self._value is _MISSING:
            if self._resolver is None:
                raise EvEnergyError(
                    f"{self.url} was not decoded by a client: use await client.resolve(ref)"
                )
            self._value = await self._resolver.resolve(self)
        return self._value  # type: ignore[no-any-return]

    def __await__(self) -> Generator[Any, None, T]:
        """``await ref`` is ``await ref.resolve()``."""
        return self.resolve().__await__()

    def _set_value(self, value: Any) -> None:
        self._value = value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ref):
            return self.url == other.url
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.url)

    def __repr__(self) -> str:
        state = "resolved" if self.resolved else "unresolved"
        return f"Ref({self.url!r}, {state})"

    def __reduce__(self) -> tuple[type[Ref[Any]], tuple[Any, ...]]:
        """Pickled as a plain Ref, resolved or not, without the client it resolves through."""
        return Ref, (self.url,) if self._value is _MISSING else (self.url, self._value)

    def __copy__(self) -> Ref[T]:
        return self

    def __deepcopy__(self, memo: Any) -> Ref[T]:
        return self  # a copy resolves through the same client into the same cache


@functools.cache
def ref_to(target: Any) -> type[Ref[Any]]:
    """The class of the Refs the decoder makes for a relation to `target` (a model, or Any):
    a `Ref` whose class says what it leads to.

    A plain class rather than ``Ref[target]`` (a typing alias) because msgspec checks what
    its hook returned against the field's type on every relation it decodes, and that check
    costs least against a class.  To a type checker the field is ``Ref[target]``."""
    name = f"Ref[{getattr(target, '__name__', repr(target))}]"
    return type(name, (Ref,), {"__slots__": (), "target": target, "__module__": __name__})
