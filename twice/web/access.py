"""Every request's checks before its view runs, and the headers every answer carries.

In order: the ``Host`` header is one this service answers to (defeats DNS rebinding), the
listener serves the route (inference or management), the client may use it (bearer token and
role), a write comes from this site or an allowed origin, a JSON body is small, and the
client is within its rate. Each refusal is a ``Refusal`` with its HTTP status, answered as the
API's JSON error.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Request, Response

from twice.options import Options
from twice.web.auth import Authenticator, Token, allows, bearer
from twice.web.limits import Limited, Rate, RateLimiter
from twice.web.listeners import (
    INFERENCE,
    LOOPBACK_NAMES,
    MANAGEMENT,
    Listener,
    is_loopback,
    listeners,
    machine_names,
)
from twice.web.service import ServiceError

LOG = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

BOTH = frozenset({INFERENCE, MANAGEMENT})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")
LOCAL_CLIENT = "local"  # the token name of a tokenless write from this machine

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
CORS_MAX_AGE = "600"


class Refusal(ServiceError):
    """A request refused before its view ran; ``headers`` go with the JSON error."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


@dataclass(frozen=True)
class Rule:
    """Who may call a view: the role it needs (None: anyone), the listeners that serve it, and
    the rate limit it counts against."""

    role: str | None = "read"
    served_on: frozenset[str] = BOTH
    limit: str | None = None


def rule(role: str | None = "read", served_on: frozenset[str] = BOTH, limit: str | None = None):
    """Attach a ``Rule`` to a view (views without one: ``Rule()``)."""

    def attach(view: F) -> F:
        view.access = Rule(role, served_on, limit)  # type: ignore[attr-defined]
        return view

    return attach


def split_list(text: str) -> list[str]:
    return [item.strip().lower() for item in text.split(",") if item.strip()]


def host_name(host: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:80`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AccessPolicy:
    """The checks of ``Options`` for one app: hosts, listeners, tokens, origins, body size, rates."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.listeners: list[Listener] = listeners(options)
        self.split = len(self.listeners) > 1
        self.auth = Authenticator(options)
        self.hosts, self.any_ip = self._allowed_hosts()
        self.origins = {origin.rstrip("/") for origin in split_list(options.allowed_origins)}
        self.expose_paths = self._show_paths()
        self.limiters = {
            name: RateLimiter(rate, name)
            for name, text in (("search", options.search_rate), ("images", options.images_rate))
            if (rate := Rate.parse(text, f"{name}_rate")) is not None
        }

    # hosts -------------------------------------------------------------------------------------

    def _allowed_hosts(self) -> tuple[set[str], bool]:
        """Host names answered, and whether any IP address is (a wildcard listener with no list)."""
        configured = split_list(self.options.allowed_hosts)
        if configured:
            return set(configured), False
        hosts = set(LOOPBACK_NAMES) | {"127.0.0.1", "::1"}
        hosts |= {ear.host.lower() for ear in self.listeners if not ear.wildcard}
        wildcard = any(ear.wildcard for ear in self.listeners)
        if wildcard:
            hosts |= machine_names()
        # An IP literal cannot be rebound: DNS rebinding always carries the attacker's name.
        return hosts, wildcard

    def host_allowed(self, host: str) -> bool:
        name = host_name(host)
        if "*" in self.hosts or name in self.hosts:
            return True
        if any(entry.startswith(".") and (name.endswith(entry) or name == entry[1:]) for entry in self.hosts):
            return True
        return (self.any_ip or is_loopback(name)) and is_ip(name)

    # the checks ----------------------------------------------------------------------------------

    def check(self, request: Request, rule: Rule) -> Token | None:
        """Run every check for ``request``; the token it used (None when it needed none)."""
        if not self.host_allowed(request.host):
            raise Refusal(
                400,
                "host_not_allowed",
                f"this service does not answer to Host {request.host!r} (allowed: TWICE_ALLOWED_HOSTS)",
            )
        self.check_listener(request, rule)
        token = self.check_token(request, rule)
        if rule.role in ("write", "admin"):
            self.check_origin(request)
        if not (request.mimetype == "multipart/form-data" or request.mimetype.startswith("image/")):
            request.max_content_length = self.options.max_json_bytes  # also caps a streamed body
        if rule.limit in self.limiters:
            try:
                self.limiters[rule.limit].take(client_address(request))
            except Limited as exc:
                raise Refusal(
                    429, "rate_limited", exc.message, {"Retry-After": str(exc.retry_after)}
                ) from None
        return token

    def check_listener(self, request: Request, rule: Rule) -> None:
        if not self.split:
            return
        port = request.environ.get("SERVER_PORT", "")
        here = next((ear for ear in self.listeners if str(ear.port) == port), None)
        if here is not None and not here.roles & rule.served_on:
            where = next(ear for ear in self.listeners if ear.roles & rule.served_on)
            raise Refusal(
                404,
                "not_found",
                f"{request.method} {request.path} is served on the {sorted(where.roles)[0]} address"
                f" ({where.bind}), not here",
            )

    def check_token(self, request: Request, rule: Rule) -> Token | None:
        needed = rule.role
        if needed is None or (needed == "read" and not self.options.private_reads):
            return None
        what = f"{request.method} {request.path}"
        if needed != "read" and self.options.read_only:
            raise Refusal(403, "read_only", f"{what}: this service is read-only (TWICE_READ_ONLY)")
        presented = bearer(request.headers.get("Authorization"))
        if presented is None:
            if not self.auth.any_token() and self.local_client(request):
                return Token(LOCAL_CLIENT, "admin", "")
            raise Refusal(
                401,
                "unauthorized",
                f"{what} needs a token with role {needed}: send Authorization: Bearer <token>"
                f" (create one with `twice token create NAME --role {needed}`)",
                {"WWW-Authenticate": 'Bearer realm="twice"'},
            )
        token = self.auth.identify(presented) if presented else None
        if token is None:
            raise Refusal(
                401,
                "invalid_token",
                f"{what}: the bearer token is not one this service knows (revoked, mistyped,"
                " or another scheme than Bearer)",
                {"WWW-Authenticate": 'Bearer realm="twice", error="invalid_token"'},
            )
        if not allows(token.role, needed):
            raise Refusal(
                403, "forbidden", f"{what} needs role {needed}; token {token.name!r} has role {token.role}"
            )
        return token

    def local_client(self, request: Request) -> bool:
        """A client on this machine, not one a local reverse proxy forwards."""
        address = request.remote_addr or ""
        forwarded = any(name in request.headers for name in FORWARDING_HEADERS)
        return is_loopback(address) and not forwarded

    def check_origin(self, request: Request) -> None:
        """Writes from a browser page of another site are refused, unless its origin is allowed."""
        origin = request.headers.get("Origin")
        if (
            origin is not None
            and origin != "null"
            and urlsplit(origin).netloc.lower() == request.host.lower()
        ):
            return
        if origin is not None and origin.rstrip("/").lower() in self.origins:
            return
        site = request.headers.get("Sec-Fetch-Site")
        if origin is None and site in (None, "same-origin", "none"):
            return  # not a browser, or the user's own action
        raise Refusal(
            403,
            "cross_origin",
            f"{request.method} {request.path} from origin {origin or site!r} is refused:"
            " allow it with TWICE_ALLOWED_ORIGINS",
        )

    # answers ---------------------------------------------------------------------------------

    def decorate(self, request: Request, response: Response) -> Response:
        """Security headers on every answer, CORS headers for an allowed origin."""
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        origin = request.headers.get("Origin")
        if origin and origin.rstrip("/").lower() in self.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers.add("Vary", "Origin")
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
                response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
                response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
        return response

    def _show_paths(self) -> bool:
        """Whether answers may show server file paths (``expose_paths``)."""
        setting = self.options.expose_paths.strip().lower()
        if setting == "auto":
            return all(ear.loopback for ear in self.listeners)
        if setting in ("1", "true", "yes", "on"):
            return True
        if setting in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expose_paths must be auto, yes or no, got {self.options.expose_paths!r}")


def client_address(request: Request) -> str:
    return request.remote_addr or "unknown"
