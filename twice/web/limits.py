"""How much one client may ask: per-client token buckets, and a bound on searches at once.

Both live in one worker's memory (as Flask-Limiter's in-memory storage would): with N
workers a client may get up to N times the rate, and each worker runs at most
``max_searches`` searches at once. A search holds cores for a while; past the bound a client
gets 503 with ``Retry-After`` at once instead of a slow answer for everyone.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
RATE_PATTERN = re.compile(r"\s*(\d+)\s*(?:/|per)\s*(second|minute|hour|day)s?\s*", re.IGNORECASE)
MAX_CLIENTS = 100_000  # buckets kept per limiter before full ones are forgotten


@dataclass(frozen=True)
class Rate:
    """``count`` requests per ``period`` seconds, all of them at once if a client saved them up."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str, what: str = "rate") -> Rate | None:
        """``"120/minute"``, ``"10 per second"``, ...; None for ``""`` or ``"0"`` (no limit)."""
        if text.strip() in ("", "0", "off", "none"):
            return None
        match = RATE_PATTERN.fullmatch(text)
        if not match or int(match[1]) < 1:
            raise ValueError(f"{what} must look like 120/minute (per second|minute|hour|day), got {text!r}")
        return cls(int(match[1]), PERIODS[match[2].lower()])


class Limited(Exception):
    """A request over a limit; ``retry_after`` whole seconds until one would be served."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = max(1, math.ceil(retry_after))


class RateLimiter:
    """A token bucket per client: ``rate.count`` at most, refilled evenly over ``rate.period``."""

    def __init__(self, rate: Rate, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.name, self.clock = rate, name, clock
        self.per_second = rate.count / rate.period
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, client: str) -> None:
        """Spend one request of ``client``'s; raise ``Limited`` when none is left."""
        with self._lock:
            now = self.clock()
            tokens, when = self._buckets.get(client, (float(self.rate.count), now))
            tokens = min(float(self.rate.count), tokens + (now - when) * self.per_second)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                wait = (1.0 - tokens) / self.per_second
                raise Limited(
                    f"too many {self.name} requests from {client}: the limit is {self.rate.count}"
                    f" per {self.rate.period:g} s; retry in {math.ceil(wait)} s",
                    wait,
                )
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_CLIENTS:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: they hold nothing a new bucket would not."""
        full = [c for c, (_, when) in self._buckets.items() if now - when >= self.rate.period]
        for client in full:
            del self._buckets[client]


class SearchSlots:
    """At most ``size`` searches at once in this worker; the next one is refused, not queued."""

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"max_searches must be a whole number of at least 1, got {size!r}")
        self.size = size
        self._free = threading.BoundedSemaphore(size)

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise Limited(f"the server is running {self.size} searches already; retry in a moment", 1)
        try:
            yield
        finally:
            self._free.release()
