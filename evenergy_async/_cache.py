"""A bounded LRU cache with a time to live, for resolved related resources.  Pure: `now` in."""

from __future__ import annotations

import collections
from typing import Any

__all__ = ["MISSING", "TTLCache"]

MISSING: Any = object()


class TTLCache:
    def __init__(self, maxsize: int, ttl: float) -> None:
        if maxsize < 0 or ttl < 0:
            raise ValueError("cache size and ttl must not be negative")
        self.maxsize = maxsize
        self.ttl = ttl
        self._entries: collections.OrderedDict[str, tuple[float, Any]] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, now: float) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return MISSING
        expires, value = entry
        if now >= expires:
            del self._entries[key]
            self.misses += 1
            return MISSING
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: Any, now: float) -> None:
        if self.maxsize == 0 or self.ttl == 0:
            return
        self._entries[key] = (now + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
