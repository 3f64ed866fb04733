"""The fake's rate limit: one sliding log of request arrival times for the whole OAuth app.

A request counts from its arrival for ``window`` seconds (a rolling window: not a fixed window
reset on the hour, not a refilling bucket). A request refused because the budget is spent does
not count. Every method takes ``now`` (monotonic seconds) so the rule can be tested without a clock.
"""

from __future__ import annotations

import math
from collections import deque


class SlidingWindowLog:
    """At most ``limit`` counted requests in any ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        if limit < 0 or window <= 0:
            raise ValueError("rate limit needs limit >= 0 and window > 0")
        self.limit = limit
        self.window = window
        self._arrivals: deque[float] = deque()

    def _expire(self, now: float) -> None:
        arrivals = self._arrivals
        horizon = now - self.window
        while arrivals and arrivals[0] <= horizon:
            arrivals.popleft()

    def try_acquire(self, now: float) -> bool:
        """Count a request arriving at ``now``; False (nothing counted) if the budget is spent."""
        self._expire(now)
        if len(self._arrivals) >= self.limit:
            return False
        self._arrivals.append(now)
        return True

    def consume(self, n: int, now: float) -> int:
        """Count up to ``n`` requests at ``now`` as another client would; return how many."""
        self._expire(now)
        counted = max(0, min(n, self.limit - len(self._arrivals)))
        self._arrivals.extend([now] * counted)
        return counted

    def remaining(self, now: float) -> int:
        self._expire(now)
        return max(0, self.limit - len(self._arrivals))

    def retry_after(self, now: float) -> int:
        """Whole seconds (rounded up, >= 1) until a request arriving then would be counted."""
        self._expire(now)
        excess = len(self._arrivals) - self.limit
        if excess < 0:
            return 0
        if self.limit == 0:
            return max(1, math.ceil(self.window))
        frees_at = self._arrivals[excess] + self.window
        return max(1, math.ceil(frees_at - now))

    def reset(self) -> None:
        self._arrivals.clear()
