"""Who may use the service: bearer tokens with a name and a role, kept hashed in a token file.

Roles are ordered: ``read`` < ``write`` < ``admin``; a token may do what its role and the
roles below it may. ``TWICE_API_TOKEN`` is one ``admin`` token for the simple case; the token
file (``<data_dir>/tokens.json`` unless ``TWICE_TOKEN_FILE``, managed by ``twice token``) holds
named tokens. Only a token's SHA-256 is stored: a token is 256 random bits, so a slow password
hash would add nothing but a cost on every request. Presented tokens are compared with every
stored hash by ``hmac.compare_digest``.

Without any token that may write, only a client on this machine may write, and ``twice
serve`` refuses to listen for writes anywhere but loopback (``refuse_open_writes``).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from twice.files import atomic_write
from twice.options import Options
from twice.web.listeners import MANAGEMENT, listeners

LOG = logging.getLogger(__name__)

ROLES = ("read", "write", "admin")
TOKEN_PREFIX = "twice_"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
ENV_TOKEN_NAME = "TWICE_API_TOKEN"


class TokenError(ValueError):
    """A token file or a token command that cannot be used as asked."""


def check_role(role: str) -> str:
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Token:
    """A stored token: its name (what logs and the audit trail show), role and hash."""

    name: str
    role: str
    hash: str
    created_at: str = ""


class TokenFile:
    """The hashed tokens of one file (JSON, mode 0600), read again whenever it changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: tuple[Token, ...] = ()

    def tokens(self) -> tuple[Token, ...]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._tokens = None, ()
            return ()
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._tokens, self._stamp = self._read(), stamp
        return self._tokens

    def _read(self) -> tuple[Token, ...]:
        try:
            rows = json.loads(self.path.read_text(encoding="utf-8"))["tokens"]
            return tuple(Token(**row) for row in rows)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"token file {self.path} cannot be read: {exc}") from None

    def find(self, presented: str) -> Token | None:
        """The stored token ``presented`` is, comparing with every hash in constant time."""
        digest = token_hash(presented)
        found = None
        for token in self.tokens():
            if hmac.compare_digest(digest, token.hash):
                found = token  # no early return: the time does not say which one matched
        return found

    @contextmanager
    def _locked(self) -> Iterator[list[Token]]:
        """The tokens, for a change written back when the block ends (one writer at a time)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._stamp = None
            tokens = list(self.tokens())
            yield tokens
            body = {"tokens": [asdict(token) for token in tokens]}
            atomic_write(self.path, (json.dumps(body, indent=1) + "\n").encode())  # 0600: mkstemp's mode

    def create(self, name: str, role: str) -> str:
        """A new token named ``name``; returns the token itself (shown once, never stored)."""
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise TokenError(f"token name must be 1-64 letters, digits or ._@- , got {name!r}")
        check_role(role)
        token = new_token()
        with self._locked() as tokens:
            if any(t.name == name for t in tokens):
                raise TokenError(f"a token named {name!r} exists in {self.path}; revoke it first")
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            tokens.append(Token(name, role, token_hash(token), created))
        return token

    def revoke(self, name: str) -> Token:
        with self._locked() as tokens:
            gone = [t for t in tokens if t.name == name]
            if not gone:
                known = ", ".join(t.name for t in tokens) or "none"
                raise TokenError(f"no token named {name!r} in {self.path} (tokens: {known})")
            tokens.remove(gone[0])
        return gone[0]


class Authenticator:
    """Tells who a request's bearer token belongs to (``TWICE_API_TOKEN`` or the token file)."""

    def __init__(self, options: Options) -> None:
        self.env_token = options.api_token
        self.file = TokenFile(options.tokens_path)

    def identify(self, presented: str) -> Token | None:
        """The token ``presented`` is, or None for an unknown one."""
        found = self.file.find(presented)
        if self.env_token and hmac.compare_digest(token_hash(presented), token_hash(self.env_token)):
            found = Token(ENV_TOKEN_NAME, "admin", "")
        return found

    def can_write(self) -> bool:
        """Whether any token may write: without one, only this machine may."""
        return bool(self.env_token) or any(allows(t.role, "write") for t in self.file.tokens())

    def any_token(self) -> bool:
        return bool(self.env_token) or bool(self.file.tokens())


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; '' for another scheme."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


# starting up ---------------------------------------------------------------------------------


class ExposedWrites(RuntimeError):
    """The service would take writes from the network without a token."""


def refuse_open_writes(options: Options) -> None:
    """Raise ``ExposedWrites`` when writes are on, no token may write, and they would be served
    on an address other machines can reach; the message says the ways out."""
    if options.read_only or Authenticator(options).can_write():
        return
    exposed = [ear for ear in listeners(options) if MANAGEMENT in ear.roles and not ear.loopback]
    if not exposed:
        return
    where = exposed[0].bind
    raise ExposedWrites(
        f"refusing to serve writes (POST /images, DELETE /images/<id>) on {where} without a token:"
        f" anyone who can reach {where} could change the index. Either create a token"
        f" (`twice token create NAME --role write`, or set TWICE_API_TOKEN), or serve read-only"
        f" (TWICE_READ_ONLY=1), or keep writes on loopback"
        f" (TWICE_MANAGEMENT_ADDRESS=http://127.0.0.1:8081), or bind to 127.0.0.1."
    )


__all__ = [
    "ROLES",
    "Authenticator",
    "ExposedWrites",
    "Token",
    "TokenError",
    "TokenFile",
    "allows",
    "bearer",
    "refuse_open_writes",
]
