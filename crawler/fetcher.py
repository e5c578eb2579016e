"""One polite, guarded HTTP client for the whole crawl.

- one ``requests.Session`` with a clear User-Agent, no proxies or .netrc from the
  environment (``trust_env=False``: crawled hosts must never receive local credentials);
- every connection goes through ``GuardedHTTPConnection``: the host is resolved there and
  every address is judged by the ``AddressPolicy`` before the socket is opened;
- redirects are followed by hand, up to a limit, and every hop is checked again (scheme,
  caller's filter, robots.txt, address);
- 429 and 5xx answers and network errors are retried with exponential backoff, honouring
  ``Retry-After`` (a server asking for longer than ``max_retry_after`` is left alone);
- bodies are streamed with a byte cap, after a content-type check;
- each ``get`` has one wall-clock deadline (``max_seconds``) over every hop, retry, header and
  body byte: when it passes, a timer cuts the connection (``crawler.deadline``), so a server
  trickling a byte a second cannot hold a fetch past it.
"""

from __future__ import annotations

import email.utils
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.util.connection as urllib3_connection
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from twice.version import __version__

from .deadline import Deadline
from .robots import RobotsCache
from .safety import AddressPolicy, Refused, check_url, redact_url
from .throttle import HostThrottle

LOG = logging.getLogger(__name__)

ROBOTS_AGENT = "twice-crawler"
USER_AGENT = f"{ROBOTS_AGENT}/{__version__} (duplicate-aware image search; python-requests)"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
PAGE_TYPES = ("text/html", "application/xhtml+xml")
IMAGE_TYPES = ("image/",)
# Servers that do not know better label images as generic bytes; the decoder decides.
GENERIC_TYPES = ("application/octet-stream", "binary/octet-stream", "")
NOT_RASTER = ("image/svg+xml",)
CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchConfig:
    """How politely and how defensively to fetch."""

    delay: float = 1.0  # seconds between requests to one host
    timeout: float = 20.0  # connect and per-read timeout
    max_seconds: float = 120.0  # one get(), wall clock: hops, retries, headers, body
    retries: int = 3  # extra attempts after a 429/5xx/network error
    backoff: float = 1.0  # first retry wait; doubles each time
    max_retry_after: float = 120.0  # longer Retry-After: give up on that URL
    max_redirects: int = 5
    max_page_bytes: int = 10 * 1024 * 1024
    max_image_bytes: int = 64 * 1024 * 1024
    max_crawl_delay: float = 30.0  # cap on a robots.txt Crawl-delay
    user_agent: str = USER_AGENT
    robots_agent: str = ROBOTS_AGENT
    policy: AddressPolicy = field(default_factory=AddressPolicy)

    def __post_init__(self) -> None:
        for name in ("delay", "backoff", "max_retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("timeout", "max_seconds", "max_page_bytes", "max_image_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.retries < 0 or self.max_redirects < 0:
            raise ValueError(
                f"retries and max_redirects must be >= 0, got {self.retries}, {self.max_redirects}"
            )


@dataclass
class Fetched:
    """A fully read 2xx response."""

    url: str  # after redirects
    status: int
    content_type: str
    content: bytes
    redirects: list[str] = field(default_factory=list)  # the URLs that redirected, in order

    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


# guarded connections ----------------------------------------------------------------------


def open_checked_socket(conn: HTTPConnection, policy: AddressPolicy) -> socket.socket:
    """Resolve ``conn``'s host, refuse it if any address is refused, then connect to one."""
    host, port = conn._dns_host, conn.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            # Any refused address refuses the host: a resolver may hand out the other one next.
            raise Refused(reason, f"{conn.host}:{port}", f"{conn.host} resolves to {address}")
    error: OSError | None = None
    for address in dict.fromkeys(addresses):
        try:
            return urllib3_connection.create_connection(
                (address, port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"connection to {conn.host} timed out") from exc
        except OSError as exc:
            error = exc
    raise NewConnectionError(conn, f"failed to connect to {conn.host}: {error}")


def _ignore(_target: object) -> None:
    pass


class Watched:
    """A connection that hands itself and its new sockets to ``watch`` (a fetch's deadline)."""

    watch = staticmethod(_ignore)

    def request(self, *args, **kwargs) -> None:
        self.watch(self)  # a reused keep-alive connection opens no new socket
        super().request(*args, **kwargs)


class GuardedHTTPConnection(Watched, HTTPConnection):
    policy = AddressPolicy()

    def _new_conn(self) -> socket.socket:
        sock = open_checked_socket(self, self.policy)
        self.watch(sock)  # before TLS or the first header: both can be trickled
        return sock


class GuardedHTTPSConnection(Watched, HTTPSConnection):
    policy = AddressPolicy()

    def _new_conn(self) -> socket.socket:
        # TLS still verifies the certificate against the hostname: only the socket changes.
        sock = open_checked_socket(self, self.policy)
        self.watch(sock)
        return sock


class GuardedAdapter(HTTPAdapter):
    """An adapter whose connection pools open only connections the policy allows, each
    handed to ``watch`` when it is used."""

    def __init__(self, policy: AddressPolicy, watch: Callable[[object], None] = _ignore, **kwargs) -> None:
        extra = {"policy": policy, "watch": staticmethod(watch)}
        http = type("PolicyHTTPConnection", (GuardedHTTPConnection,), extra)
        https = type("PolicyHTTPSConnection", (GuardedHTTPSConnection,), extra)
        self._pool_classes = {
            "http": type("PolicyHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("PolicyHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }
        super().__init__(max_retries=0, **kwargs)  # retries are ours, with backoff and Retry-After

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        raise Refused("proxy", proxy, "the crawler does not use proxies")


def make_session(config: FetchConfig, watch: Callable[[object], None] = _ignore) -> requests.Session:
    """A session with the guarded adapter on http and https and nothing else mounted;
    ``watch`` sees every connection and socket it uses."""
    session = requests.Session()
    session.trust_env = False
    session.adapters.clear()
    adapter = GuardedAdapter(config.policy, watch)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": config.user_agent, "Accept-Encoding": "gzip, deflate"})
    return session


# the fetcher ------------------------------------------------------------------------------


def host_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


class Fetcher:
    """GET with politeness, retries, checked redirects, robots.txt, and capped bodies."""

    def __init__(
        self,
        config: FetchConfig | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or FetchConfig()
        self._local = threading.local()  # the deadline of the get() running in this thread
        self.session = make_session(self.config, self._watch)
        self.throttle = HostThrottle(self.config.delay, sleep, clock)
        self.robots = RobotsCache(self._fetch_robots, self.config.robots_agent)
        self.requests = 0
        self._sleep = sleep

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(
        self,
        url: str,
        kind: str = "page",
        check: Callable[[str], None] | None = None,
        robots: bool = True,
    ) -> Fetched:
        """Fetch ``url`` (kind ``page``, ``image``, ``json`` or ``text``), or raise ``Refused``.

        ``check(url)`` is the caller's own rule (same host, ...); it and every other check
        run again on each redirect hop. The whole call, robots.txt included, ends by
        ``max_seconds`` (``Refused`` reason ``timeout``).
        """
        if kind not in ("page", "image", "json", "text"):
            raise ValueError(f"kind must be page, image, json or text, got {kind!r}")
        outer = getattr(self._local, "deadline", None)  # robots.txt inside a get: one limit
        self._local.deadline = outer or Deadline(self.config.max_seconds)
        try:
            return self._get(url, kind, check, robots)
        finally:
            if outer is None:
                self._local.deadline.cancel()
                self._local.deadline = None

    def _watch(self, target: object) -> None:
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None:
            deadline.watch(target)

    def _check_deadline(self, url: str) -> None:
        if self._local.deadline.expired:
            raise self._timed_out(url)

    def _timed_out(self, url: str) -> Refused:
        detail = f"no complete answer within {self.config.max_seconds:g}s"
        return Refused("timeout", url, detail, transient=True)

    def _get(self, url: str, kind: str, check: Callable[[str], None] | None, robots: bool) -> Fetched:
        hops: list[str] = []
        current = url
        while True:
            try:
                self._check_hop(current, check, robots)
                response = self._request(current)
            except Refused as exc:
                if not hops:
                    raise
                detail = f"redirected to {redact_url(current)}: {exc.detail}"
                raise Refused(exc.reason, url, detail, exc.transient) from None
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                break
            response.close()
            hops.append(current)
            if len(hops) > self.config.max_redirects:
                raise Refused("too_many_redirects", url, f"more than {self.config.max_redirects} redirects")
            current = urljoin(current, location.strip())
            LOG.debug("redirect %s -> %s", redact_url(hops[-1]), redact_url(current))
        return self._read(response, current, kind, hops)

    def _check_hop(self, url: str, check: Callable[[str], None] | None, robots: bool) -> None:
        check_url(url)
        if check is not None:
            check(url)
        if robots:
            self.robots.check(url)
            delay = self.robots.crawl_delay(url)
            if delay:
                self.throttle.set_host_delay(host_key(url), min(delay, self.config.max_crawl_delay))

    def _request(self, url: str) -> requests.Response:
        """One GET (headers only) with retries; returns any non-retryable response."""
        host = host_key(url)
        config = self.config
        deadline = self._local.deadline
        for attempt in range(config.retries + 1):
            self.throttle.wait(host)
            self._check_deadline(url)
            wait_hint: float | None = None
            try:
                self.requests += 1
                timeout = min(config.timeout, max(deadline.remaining(), 0.01))
                response = self.session.get(url, stream=True, timeout=timeout, allow_redirects=False)
            except Refused as exc:  # from the guarded connection: name the URL, not the socket
                raise Refused(exc.reason, url, exc.detail) from None
            except requests.RequestException as exc:
                if deadline.expired:
                    raise self._timed_out(url) from None
                reason, detail = self._request_failure(url, exc)
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                reason, detail = f"http_{response.status_code}", response.reason or ""
                wait_hint = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
            finally:
                self.throttle.mark(host)
            if wait_hint is not None and wait_hint > config.max_retry_after:
                raise Refused("rate_limited", url, f"Retry-After {wait_hint:.0f}s", transient=True)
            if attempt == config.retries:
                raise Refused(reason, url, f"after {attempt + 1} attempts: {detail}", transient=True)
            wait = max(config.backoff * 2**attempt, wait_hint or 0.0)
            if wait >= deadline.remaining():  # sleeping would only end in the timeout
                raise self._timed_out(url)
            LOG.info("%s: %s, retrying in %.1fs", redact_url(url), reason, wait)
            self._sleep(wait)
        raise AssertionError("unreachable")

    @staticmethod
    def _request_failure(url: str, exc: requests.RequestException) -> tuple[str, str]:
        """(reason, detail) of a failed request worth retrying; raises ``Refused`` for the rest."""
        if isinstance(exc, requests.exceptions.SSLError):  # a bad certificate will not get better
            raise Refused("tls", url, str(exc)) from None
        if isinstance(exc, requests.Timeout):
            return "timeout", str(exc)
        if isinstance(exc, requests.ConnectionError):
            return "connection", str(exc)
        raise Refused("bad_url", url, str(exc)) from None

    def _read(self, response: requests.Response, url: str, kind: str, hops: list[str]) -> Fetched:
        try:
            if response.status_code >= 400 or response.status_code < 200:
                raise Refused(f"http_{response.status_code}", url, response.reason or "")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            check_content_type(content_type, kind, url)
            limit = self.config.max_image_bytes if kind == "image" else self.config.max_page_bytes
            content = self._read_capped(response, url, limit)
        finally:
            response.close()
            self.throttle.mark(host_key(url))
        return Fetched(url, response.status_code, content_type, content, hops)

    def _read_capped(self, response: requests.Response, url: str, limit: int) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise Refused("too_large", url, f"Content-Length {declared} > {limit} bytes")
        chunks, total = [], 0
        try:
            # iter_content decompresses gzip/deflate, so the cap counts the real bytes
            for chunk in response.iter_content(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise Refused("too_large", url, f"more than {limit} bytes")
                chunks.append(chunk)
        except requests.RequestException as exc:
            self._check_deadline(url)
            raise Refused("connection", url, f"body: {exc}", transient=True) from None
        self._check_deadline(url)  # a cut connection without Content-Length ends "normally"
        return b"".join(chunks)

    # robots.txt ---------------------------------------------------------------------------

    def _fetch_robots(self, origin: str) -> tuple[int, str]:
        """(status, text) of ``origin``/robots.txt; ``Refused`` when it cannot be had."""
        url = origin + "/robots.txt"
        try:
            fetched = self.get(url, kind="text", robots=False)
        except Refused as exc:
            if exc.reason.startswith("http_4"):
                return int(exc.reason[5:]), ""
            raise
        return fetched.status, fetched.text()


def check_content_type(content_type: str, kind: str, url: str) -> None:
    """Refuse a body whose declared type does not fit ``kind``."""
    if kind == "page":
        ok = content_type in PAGE_TYPES or content_type == ""
    elif kind == "image":
        ok = (content_type.startswith(IMAGE_TYPES) and content_type not in NOT_RASTER) or (
            content_type in GENERIC_TYPES
        )
    elif kind == "json":
        ok = content_type in ("application/json", "text/json", "text/javascript", "")
    else:
        ok = True
    if not ok:
        raise Refused("content_type", url, f"{content_type or '(none)'} where {kind} was expected")
