"""Where the service listens: one address for everything, or inference and management apart.

As the original system configured TorchServe (``inference_address``, ``management_address``):
search and the page on one address, writes, ``/stats`` and ``/metrics`` on another, so that an
operator can publish search and keep management on loopback or a private network. With
neither set, one listener (``bind``) serves every route.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from twice.options import Options

LOG = logging.getLogger(__name__)

INFERENCE, MANAGEMENT = "inference", "management"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True)
class Listener:
    """One address the service listens on, and the routes it serves (``roles``)."""

    host: str
    port: int
    roles: frozenset[str]

    @property
    def bind(self) -> str:
        """As gunicorn's ``-b`` takes it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def wildcard(self) -> bool:
        return self.host in WILDCARDS


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``http://host:port``, ``host:port`` or ``[v6]:port`` as (host, port)."""
    raw = text.strip()
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or port is None or parts.hostname is None:
        raise ValueError(f"{what} must be host:port or http://host:port, got {text!r}")
    if parts.scheme == "https":
        raise ValueError(f"{what}: twice serves plain HTTP (put TLS in a proxy in front), got {text!r}")
    return parts.hostname, port


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def listeners(options: Options) -> list[Listener]:
    """The listeners ``options`` ask for: one (``bind``) or inference and management apart."""
    inference = options.inference_address or options.bind
    what = "inference_address (TWICE_INFERENCE_ADDRESS)" if options.inference_address else "bind (TWICE_BIND)"
    host, port = parse_address(inference, what)
    if not options.management_address:
        return [Listener(host, port, frozenset({INFERENCE, MANAGEMENT}))]
    mhost, mport = parse_address(options.management_address, "management_address (TWICE_MANAGEMENT_ADDRESS)")
    if (mhost, mport) == (host, port):
        return [Listener(host, port, frozenset({INFERENCE, MANAGEMENT}))]
    if mport == port:
        raise ValueError(
            f"inference_address {inference!r} and management_address {options.management_address!r}"
            " need different ports (the service tells them apart by port)"
        )
    return [Listener(host, port, frozenset({INFERENCE})), Listener(mhost, mport, frozenset({MANAGEMENT}))]


def machine_names() -> set[str]:
    """This machine's own host names (a Host header a wildcard listener may see)."""
    names = {socket.gethostname().lower()}
    with contextlib.suppress(OSError):  # no resolver: the short name is enough
        names.add(socket.getfqdn().lower())
    return names
