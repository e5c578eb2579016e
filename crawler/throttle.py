"""Per-host politeness: at least ``delay`` seconds between the end of one request to a host
and the start of the next one."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

LOG = logging.getLogger(__name__)


class HostThrottle:
    """Spaces requests to each host (``host:port``) by a delay; hosts may ask for more."""

    def __init__(
        self,
        delay: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        self.delay = delay
        self._sleep, self._clock = sleep, clock
        self._last: dict[str, float] = {}
        self._extra: dict[str, float] = {}
        self._lock = threading.Lock()

    def set_host_delay(self, host: str, delay: float) -> None:
        """A host's own minimum delay (robots.txt Crawl-delay); the larger of the two applies."""
        self._extra[host] = max(0.0, delay)

    def delay_for(self, host: str) -> float:
        return max(self.delay, self._extra.get(host, 0.0))

    def wait(self, host: str) -> float:
        """Sleep until ``host`` may be asked again; returns the seconds slept."""
        with self._lock:
            last = self._last.get(host)
        if last is None:
            return 0.0
        remaining = last + self.delay_for(host) - self._clock()
        if remaining > 0:
            self._sleep(remaining)
            return remaining
        return 0.0

    def mark(self, host: str) -> None:
        """Note that a request to ``host`` has just finished."""
        with self._lock:
            self._last[host] = self._clock()
