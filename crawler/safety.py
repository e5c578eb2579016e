"""What the crawler may touch: http(s) URLs on public addresses, checked at every hop.

Two checks, both cheap:
- ``check_url`` reads the URL alone (scheme, host, credentials), before any request;
- ``AddressPolicy.refusal`` judges each resolved IP address. The fetcher applies it inside
  the connection itself (see ``crawler.fetcher``), on the address it is about to connect to,
  so a hostname that resolves to a private address, or re-resolves to one later (DNS
  rebinding), is refused as surely as an IP literal.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

LOG = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = ("http", "https")

# Cloud instance-metadata endpoints (AWS/GCP/Azure, AWS ECS, Alibaba, Oracle): refused even
# with --allow-private, because they hand out credentials to whoever asks.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.170.23",
        "100.100.100.200",
        "192.0.0.192",
        "fd00:ec2::254",
        "fd00:ec2::23",
    )
)

# Refusal reasons for addresses; the ones in NEVER_ALLOWED ignore --allow-private.
ADDRESS_REASONS = (
    "metadata_address",
    "loopback_address",
    "link_local_address",
    "private_address",
    "reserved_address",
)
NEVER_ALLOWED = frozenset({"metadata_address", "reserved_address"})
SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "token", "access_token", "secret", "signature"})
_SECRET_IN_TEXT = re.compile(r"([?&;](?:" + "|".join(sorted(SECRET_PARAMS)) + r")=)[^&\s'\"]+", re.IGNORECASE)


class Refused(Exception):
    """A URL the crawler did not fetch or keep.

    ``reason`` is a short key counted in crawl summaries (``robots``, ``private_address``,
    ``too_large``, ``http_404``...). ``transient`` marks failures worth retrying on the next
    run (timeouts, 5xx, rate limits); the others are final.
    """

    def __init__(self, reason: str, url: str, detail: str = "", transient: bool = False) -> None:
        self.reason = reason
        self.url = url
        self.detail = redact_text(detail)
        self.transient = transient
        text = f"{redact_url(url)}: refused ({reason})"
        super().__init__(f"{text}: {self.detail}" if detail else text)


def redact_url(url: str) -> str:
    """``url`` with the values of secret-looking query parameters (API keys) replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k.lower() in SECRET_PARAMS for k, _ in query):
        return url
    query = [(k, "REDACTED" if k.lower() in SECRET_PARAMS else v) for k, v in query]
    return urlunsplit(parts._replace(query=urlencode(query)))


def redact_text(text: str) -> str:
    """``text`` (an error message) with secret query parameter values replaced."""
    return _SECRET_IN_TEXT.sub(r"\1REDACTED", text)


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host and no credentials, else ``Refused``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise Refused("bad_url", url, str(exc)) from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise Refused("scheme", url, f"scheme {parts.scheme or '(none)'!r} is not http or https")
    if not parts.hostname:
        raise Refused("bad_url", url, "no host")
    if parts.username is not None or parts.password is not None:
        # requests would turn them into an Authorization header for whoever serves the URL
        raise Refused("bad_url", url, "credentials in the URL")
    return url


def classify_address(ip: IPAddress) -> str | None:
    """The refusal reason for an address, or ``None`` for a public (global) one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "metadata_address"
    if ip.is_loopback:
        return "loopback_address"
    if ip.is_link_local:
        return "link_local_address"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "reserved_address"
    if ip.is_private or not ip.is_global:
        return "private_address"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses may be connected to.

    Public addresses always; private, loopback and link-local ones only with
    ``allow_private`` or when inside one of ``allow_networks``; metadata, multicast,
    unspecified and reserved addresses never.
    """

    allow_private: bool = False
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(cls, allow_private: bool = False, networks: list[str] | None = None) -> AddressPolicy:
        """A policy from CLI-style CIDR strings; a bad one raises ``ValueError`` naming it."""
        parsed = []
        for text in networks or []:
            try:
                parsed.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"--allow-net: {text!r} is not an IP network (e.g. 10.0.0.0/8)") from None
        return cls(allow_private=allow_private, allow_networks=tuple(parsed))

    def refusal(self, ip: IPAddress | str) -> str | None:
        """Why ``ip`` may not be connected to, or ``None`` when it may."""
        if isinstance(ip, str):
            ip = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
        reason = classify_address(ip)
        if reason is None:
            return None
        if reason in NEVER_ALLOWED:
            return reason
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        if self.allow_private or any(plain in net for net in self.allow_networks):
            return None
        return reason
