"""A real web site on 127.0.0.1 for the crawler tests, plus tests of the site itself.

``Site`` serves whatever the test writes into it: fixed responses, or handlers that change
answer between hits (429 then 200). It records every request (time, path, headers) so tests
can assert what the crawler did and did not fetch.
"""

from __future__ import annotations

import contextlib
import gzip
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from pathlib import Path

import pytest
import requests

from imagegen import image_bytes, make_image
from twice.crawler import AddressPolicy, FetchConfig

LOCAL_ONLY = AddressPolicy(allow_networks=(ip_network("127.0.0.1/32"),))


@dataclass
class Reply:
    """One HTTP answer. ``delay`` sleeps before the headers; ``length=False`` omits
    Content-Length and closes the connection after the body; ``trickle`` sends the body one
    byte at a time, that many seconds apart (a slow-body attack)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    length: bool = True
    gzip: bool = False
    trickle: float = 0.0


@dataclass
class Hit:
    at: float
    path: str
    headers: dict


class Site:
    """Routes (path with query -> Reply or handler) served by a threaded HTTP server."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: (certificate, key) files to serve https instead of http."""
        self.routes: dict[str, Reply | Callable[[int], Reply]] = {}
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.scheme = "https" if tls else "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, tls))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes | str = b"", **reply: object) -> str:
        """Serve ``body`` at ``path``; returns the full URL."""
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = Reply(body=data, **reply)
        return self.url(path)

    def add_image(self, path: str, seed: int, size=(64, 48), fmt: str = "PNG", **reply) -> bytes:
        data = image_bytes(make_image(seed, size), fmt)
        self.add(path, data, content_type=f"image/{fmt.lower()}", **reply)
        return data

    def add_handler(self, path: str, handler: Callable[[int], Reply]) -> str:
        """``handler(n)`` answers the n-th request (1-based) for ``path``."""
        self.routes[path] = handler
        return self.url(path)

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for h in self.hits if h.path == path)

    def times(self, path: str) -> list[float]:
        with self._lock:
            return [h.at for h in self.hits if h.path == path]

    def headers(self, path: str) -> list[dict]:
        with self._lock:
            return [h.headers for h in self.hits if h.path == path]

    def paths(self) -> list[str]:
        with self._lock:
            return [h.path for h in self.hits]

    def _reply(self, path: str, headers: dict) -> Reply:
        with self._lock:
            self.hits.append(Hit(time.monotonic(), path, headers))
            n = sum(1 for h in self.hits if h.path == path)
        route = self.routes.get(path)
        if route is None:
            return Reply(404, b"not found", "text/plain")
        return route(n) if callable(route) else route

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler_for(site: Site):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            reply = site._reply(self.path, dict(self.headers))
            if reply.delay:
                time.sleep(reply.delay)
            body = gzip.compress(reply.body) if reply.gzip else reply.body
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            if reply.gzip:
                self.send_header("Content-Encoding", "gzip")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.length:
                self.send_header("Content-Length", str(len(body)))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            # the crawler may hang up on purpose (byte cap)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if not reply.trickle:
                    self.wfile.write(body)
                for i in range(len(body) if reply.trickle else 0):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(reply.trickle)

        def log_message(self, *args) -> None:
            pass

    return Handler


def fast_fetch(**overrides) -> FetchConfig:
    """Fetch settings for tests: no politeness delay, short timeouts and backoff, 127.0.0.1 only."""
    values = dict(delay=0.0, timeout=2.0, retries=1, backoff=0.05, max_retry_after=5.0, policy=LOCAL_ONLY)
    values.update(overrides)
    return FetchConfig(**values)


def make_certificate(folder: Path, names: str = "DNS:localhost,IP:127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``names`` (openssl CLI); skips the test without openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "1", "-subj", "/CN=twice-test", "-addext", f"subjectAltName={names}",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a test certificate with openssl: {exc}")
    return cert, key


@pytest.fixture
def site():
    with Site() as running:
        yield running


# the site itself ---------------------------------------------------------------------------


def test_site_serves_routes_and_records_hits(site):
    site.add("/a", "<p>hello</p>")
    site.add_handler("/b", lambda n: Reply(503 if n == 1 else 200, b"x", "text/plain"))
    assert requests.get(site.url("/a"), timeout=5).text == "<p>hello</p>"
    assert requests.get(site.url("/b"), timeout=5).status_code == 503
    assert requests.get(site.url("/b"), timeout=5).status_code == 200
    assert requests.get(site.url("/nope"), timeout=5).status_code == 404
    assert site.count("/b") == 2 and site.paths() == ["/a", "/b", "/b", "/nope"]


def test_site_serves_without_length(site):
    site.add("/big", b"z" * 100_000, content_type="image/png", length=False)
    response = requests.get(site.url("/big"), timeout=5)
    assert "Content-Length" not in response.headers and len(response.content) == 100_000
