"""A throwaway PostgreSQL server for the tests: Debian's binaries, ``initdb`` + ``pg_ctl`` in a
temporary folder, listening on 127.0.0.1 (a free port) and on a socket in that folder.

As root (initdb refuses to run as root) the server runs as the ``postgres`` user through
``runuser``. Each test gets a database of its own (``new_database``).
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

# Test settings: durability off (a crash loses a test database, nothing else), room for the
# connection pools of many catalogs open at once, and a time zone far from UTC (+12:45), so
# that nothing leans on the server's.
SERVER_SETTINGS = {
    "timezone": "Pacific/Chatham",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
}


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb, or initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parts[-3]
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def server_user() -> str | None:
    """Who runs the server: this user, or ``postgres`` as root (None when there is none)."""
    if os.geteuid() != 0:
        return getpass.getuser()
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clone_database(url: str) -> str:
    """A new database on ``url``'s server holding a copy of ``url``'s (which nobody may be
    connected to: PostgreSQL copies it as a template); returns the copy's URL."""
    source = make_url(url)
    name = f"twice_{uuid.uuid4().hex[:12]}"
    engine = create_engine(source.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{source.database}"')
    engine.dispose()
    return source.set(database=name).render_as_string(hide_password=False)


OWNER_FILE = "owner.pid"  # the test process a server belongs to


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_orphans(bin_dir: Path, user: str) -> list[Path]:
    """Stop the servers of test runs that were killed before they could stop theirs (pg_ctl
    detaches the server, so nothing else ends it); returns their folders, now removed."""
    stopped = []
    for owner in Path(tempfile.gettempdir()).glob(f"twice-pg-*/{OWNER_FILE}"):
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if process_alive(pid):
            continue
        server = PostgresServer.__new__(PostgresServer)
        server.bin_dir, server.user, server.root = bin_dir, user, owner.parent
        server.data = server.root / "data"
        with contextlib.suppress(RuntimeError):
            server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
        stopped.append(server.root)
    return stopped


class PostgresServer:
    """One running server (``settings`` override ``SERVER_SETTINGS``); ``stop`` shuts it down
    and removes its folder."""

    def __init__(self, bin_dir: Path, user: str, **settings: str) -> None:
        self.bin_dir, self.user = bin_dir, user
        self.root = Path(tempfile.mkdtemp(prefix="twice-pg-"))
        (self.root / OWNER_FILE).write_text(str(os.getpid()))
        self.data = self.root / "data"
        self.port = free_port()
        self._names = itertools.count(1)
        if os.geteuid() == 0:
            shutil.chown(self.root, self.user)
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8")
        settings = {**SERVER_SETTINGS, **settings}
        options = [f"-c {name}={value}" for name, value in settings.items()]
        options += ["-c listen_addresses=127.0.0.1", f"-p {self.port}", f"-k {self.root}"]
        log = self.root / "server.log"
        try:
            self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-o", " ".join(options), "-w", "start")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{log.read_text() if log.exists() else ''}") from None

    def _run(self, program: str, *args: str) -> str:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; returns its URL."""
        name = f"twice_{next(self._names)}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
