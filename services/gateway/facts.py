"""A fact about a dependency (the encoder's model, a collection's version), reused for a while.

Only successful answers are kept: a failure clears the fact, so the next call asks again.
"""

from __future__ import annotations

import math
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class Facts(Generic[T]):
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._value: T | None = None
        self._fetched_at = -math.inf

    def fresh(self) -> T | None:
        """The value if it was fetched less than `ttl_s` ago."""
        if self._value is not None and time.monotonic() - self._fetched_at < self.ttl_s:
            return self._value
        return None

    def set(self, value: T) -> T:
        self._value, self._fetched_at = value, time.monotonic()
        return value

    def clear(self) -> None:
        self._value, self._fetched_at = None, -math.inf
