"""A wall-clock limit on one fetch that a slow server cannot stretch.

Socket timeouts bound each read, not the whole answer: a server that sends a byte every
second never trips a 10 s read timeout, and a body read in 64 KiB chunks is looked at only
between chunks. ``Deadline`` runs a timer that shuts down the sockets of the connections the
fetch uses when the time is up, so a blocked read returns at once and the fetch fails with a
timeout instead of waiting for the server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Deadline:
    """``seconds`` from now; ``watch`` the connections and sockets to cut when they pass."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._watched: list[object] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())

    def watch(self, target: object) -> None:
        """Cut ``target`` (a socket, or a connection whose ``sock`` it reads then) at expiry."""
        with self._lock:
            self._watched.append(target)
            expired = self.expired
        if expired:
            _shut_down(target)

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            watched = list(self._watched)
        for target in watched:
            _shut_down(target)


def _shut_down(target: object) -> None:
    # A connection's socket is read now: a TLS connection replaces its plain socket.
    sock = target if isinstance(target, socket.socket) else getattr(target, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # closed already, or detached into a TLS socket
            sock.shutdown(socket.SHUT_RDWR)
